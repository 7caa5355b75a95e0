"""The activation criterion (Minitron): formula, and the statistic it reads on an MLP and a ViT."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdnb
from kdnb.engine.prune.score import criteria
from kdnb.engine.prune.score.importance import importance
from kdnb.engine.prune.select.channels import removed_channels


def test_formula_means_over_tokens_then_l2_over_samples_then_sums_consumers():
    first = torch.tensor([[[3.0, 1.0], [1.0, 1.0]],      # sample 0: tokens (3, 1) and (1, 1) of units 0 and 1
                          [[0.0, 2.0], [4.0, 0.0]]])     # sample 1
    second = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])  # another consumer: one token
    # unit 0: means 2, 2 -> sqrt(8); unit 1: means 1, 1 -> sqrt(2); the second consumer adds sqrt(1), 0
    expected = torch.tensor([8 ** 0.5 + 1.0, 2 ** 0.5])
    assert torch.allclose(criteria.activation([first, second]), expected)
    assert criteria.REGISTRY["activation"].structured and not criteria.REGISTRY["activation"].unstructured


def test_mlp_neurons_score_by_the_activation_the_next_layer_reads():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(10, 3)
    data = DataLoader(TensorDataset(x, torch.randint(0, 2, (10,))), batch_size=4)
    scores = importance(net, "activation", data, structured=True)
    with torch.no_grad():
        hidden = torch.relu(net[0](x))
    assert torch.allclose(scores.channels["0"], hidden.double().pow(2).sum(0).sqrt())


def test_vit_heads_score_by_their_attention_output_and_pruning_keeps_the_best():
    torch.manual_seed(0)
    net = kdnb.models.vit_tiny(10, dim=16, depth=1, heads=4).eval()
    x = torch.randn(12, 1, 8, 8)
    data = DataLoader(TensorDataset(x, torch.randint(0, 10, (12,))), batch_size=6)
    seen = []
    hook = net.blocks[0].attn.proj.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        net(x)
    hook.remove()
    heads = seen[0].double().view(12, 17, 4, 4).norm(dim=-1)       # (samples, tokens, heads): ||head output||
    expected = heads.mean(1).pow(2).sum(0).sqrt()
    scores = importance(net, "activation", data, structured=True)
    assert torch.allclose(scores.channels["blocks.0.attn.qkv"], expected)
    neurons = scores.channels["blocks.0.mlp.0"]
    assert neurons.shape == (32,) and bool((neurons > 0).all())
    gone = removed_channels(scores, 0.3, scope="local")["blocks.0.attn.qkv"]
    assert 0 < int(gone.sum()) < 4
    assert float(expected[gone].max()) < float(expected[~gone].min())  # the weakest heads go
    small = kdnb.prune(net, 0.3, criterion="activation", structured=True, scope="local", data=data,
                       progress=False, plot=False).model
    assert small.blocks[0].attn.num_heads == 4 - int(gone.sum()) and small(x).shape == (12, 10)

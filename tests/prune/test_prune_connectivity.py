"""Masks whose kept weights all lie on an input-output path (`on_path`, `connected`), and the OBS one-shot prune
that uses them."""
import torch
from torch.utils.data import DataLoader, TensorDataset

import kdnb
from kdnb.engine.prune import prune
from kdnb.engine.prune.graph.groups import channel_groups, dependency_graph
from kdnb.engine.prune.cut.masks import connected, on_path

LAYERS = ("1.weight", "3.weight", "5.weight")  # kdnb.models.mlp: Flatten, Linear, ReLU, Linear, ReLU, Linear


def _chain(sizes=(6, 5, 4, 3)):
    torch.manual_seed(0)
    net = kdnb.models.mlp(sizes[0], list(sizes[1:-1]), sizes[-1])
    return net, channel_groups(net, dependency_graph(net, torch.randn(2, sizes[0])))


def _on_a_path(masks: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per layer of a chain: the kept weights reachable from an input and reaching an output (by brute force)."""
    chain = [masks[n] for n in LAYERS]
    reached = [torch.ones(chain[0].shape[1], dtype=torch.bool)]
    for mask in chain[:-1]:
        reached.append((mask & reached[-1][None]).any(1))
    needed, result = torch.ones(chain[-1].shape[0], dtype=torch.bool), []
    for mask, inputs in zip(reversed(chain), reversed(reached)):
        result.insert(0, mask & inputs[None] & needed[:, None])
        needed = result[0].any(0)
    return result


def test_on_path_keeps_exactly_the_weights_on_an_input_output_path():
    net, groups = _chain()
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        masks = {n: torch.rand(net.get_parameter(n).shape, generator=generator) < 0.3 for n in LAYERS}
        masks[LAYERS[-1]][0, 0] = masks[LAYERS[1]][0, 0] = masks[LAYERS[0]][0, 0] = True  # one path always
        kept = on_path(masks, groups)
        for mine, expected in zip((kept[n] for n in LAYERS), _on_a_path(masks)):
            assert torch.equal(mine, expected)


def test_on_path_never_empties_a_layer():
    net, groups = _chain()
    masks = {n: torch.zeros(net.get_parameter(n).shape, dtype=torch.bool) for n in LAYERS}
    masks[LAYERS[0]][0, 0] = True  # hidden unit 0 has an input ...
    masks[LAYERS[1]][1, 1] = True  # ... but the second layer reads only hidden unit 1, which has none
    masks[LAYERS[2]][0, 1] = True
    kept = on_path(masks, groups)
    assert all(bool(kept[n].any()) for n in LAYERS)


def test_connected_refills_the_released_budget_with_the_best_weights_between_live_units():
    net, groups = _chain()
    masks = {n: torch.zeros(net.get_parameter(n).shape, dtype=torch.bool) for n in LAYERS}
    masks[LAYERS[0]][:, 0] = True  # every hidden unit 1 reads input 0
    masks[LAYERS[1]][0, 0] = True  # only hidden unit 1.0 is read, by unit 3.0, which the output reads
    masks[LAYERS[2]][:, 0] = True
    values = {n: torch.rand(net.get_parameter(n).shape, generator=torch.Generator().manual_seed(2)) for n in LAYERS}
    values[LAYERS[0]][1, 3] = float("-inf")  # stays pruned
    kept = connected(masks, values, groups)
    assert sum(int(m.sum()) for m in kept.values()) == sum(int(m.sum()) for m in masks.values())  # same budget
    for mine, expected in zip((kept[n] for n in LAYERS), _on_a_path(kept)):
        assert torch.equal(mine, expected)  # every kept weight on a path
    assert not bool(kept[LAYERS[0]][1, 3])
    released = on_path(masks, groups)
    rows = [released[n].any(1) for n in LAYERS[:-1]] + [torch.ones(3, dtype=torch.bool)]  # live units
    cols = [torch.ones(6, dtype=torch.bool)] + [released[n].any(1) for n in LAYERS[:-1]]
    candidates = torch.cat([values[n].masked_fill(~(r[:, None] & c[None]) | released[n], float("-inf")).flatten()
                            for n, r, c in zip(LAYERS, rows, cols)])
    deficit = sum(int(m.sum()) for m in masks.values()) - sum(int(m.sum()) for m in released.values())
    expected = torch.zeros_like(candidates, dtype=torch.bool)
    expected[torch.topk(candidates, deficit).indices] = True
    added = torch.cat([(kept[n] & ~released[n]).flatten() for n in LAYERS])
    assert deficit > 0 and torch.equal(added, expected)


def test_obs_one_shot_keeps_only_effective_weights_and_its_budget():
    torch.manual_seed(0)
    net = kdnb.models.mlp(16, [32, 16], 4)
    data = DataLoader(TensorDataset(torch.randn(256, 16), torch.randint(0, 4, (256,))), batch_size=64)
    result = prune(net, 0.98, criterion="obs", data=data)
    masks = result.masks
    total = sum(m.numel() for m in masks.values())
    assert abs(result.sparsity - 0.98) < 2.0 / total
    for name, expected in zip(LAYERS, _on_a_path(masks)):
        assert torch.equal(masks[name], expected)
        assert bool(masks[name].any())
    assert len(result.trajectory) == 16  # the default rounds of a one-shot OBS prune with reconstruction at >= 98 %
    assert len(prune(net, 0.9, criterion="obs", data=data).trajectory) == 1  # below: one cut, SparseGPT's sweep

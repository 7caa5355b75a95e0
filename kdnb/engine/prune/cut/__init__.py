"""Cutting: applying a selection to the model, as masks (`masks`, torch.nn.utils.prune) or by deleting channels
(`channels`, Torch-Pruning)."""

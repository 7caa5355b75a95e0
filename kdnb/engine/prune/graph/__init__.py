"""The channel graph: which parameter slices each channel couples (Torch-Pruning's DependencyGraph as plain data),
attention heads, and what a channel costs."""

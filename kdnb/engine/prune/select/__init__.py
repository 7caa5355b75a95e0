"""Selecting: which weights or channels go at a given sparsity, from the scores (global, local or cost-ranked
scopes, per-layer caps, N:M patterns, a timed choice between rankings)."""

"""The one factorisation the layer-wise methods share: the inverse Hessian's upper Cholesky factor, damped."""
from __future__ import annotations

import torch

DAMP_TRIES = 8  # tenfold damping increases before giving up on a factor


def inverse_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper ``U`` with ``U^T U = (h + lambda I)^-1``, fp32, ``lambda`` = ``damp`` x mean diag(``h``), tenfold
    until the Cholesky factor exists (fp32 on CUDA too). With ``P`` the reversal of the columns and ``P h P = L
    L^T``, ``U = P L^-1 P``: one Cholesky factor and one triangular inverse, ``2 d^3 / 3`` multiply-adds, where
    SparseGPT's reference code takes three factorisations."""
    flipped = h.flip(0, 1).float()
    scale = float(flipped.diagonal().mean()) or 1.0
    eye = torch.eye(len(h), dtype=flipped.dtype, device=flipped.device)
    lam = max(damp, 1e-6) * scale
    for _ in range(DAMP_TRIES):
        factor, info = torch.linalg.cholesky_ex(flipped + lam * eye)
        if not bool(info.any()):
            break
        lam *= 10
    return torch.linalg.solve_triangular(factor, eye, upper=False).flip(0, 1)

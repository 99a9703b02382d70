"""The ADMM maths of scaled-form pruning, as pure functions on lists of tensors.

Problem: minimize f(W) + (p_lambda/2)·Σ‖W_l‖²  subject to  Σ_l nnz(W_l) ≤ K.
Split W = Z with Z in the sparse set S. Scaled-form ADMM (Boyd et al. §3.1.1):

    W-step: minimize f(W) + (rho/2)·Σ‖W_l − Z_l + U_l‖²      (by SGD/Adam)
    Z-step: Z = Π_S(W + U)
    U-step: U = U + W − Z

The functions below never hold state; ``ADMMPruner`` owns it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "admm_penalty",
    "weight_decay_penalty",
    "project",
    "update_dual",
    "rescale_dual",
    "next_rho",
    "balanced_rho",
    "Residuals",
    "residuals",
]


def admm_penalty(
    weights: Sequence[torch.Tensor],
    z: Sequence[torch.Tensor],
    u: Sequence[torch.Tensor],
    rho: float,
) -> torch.Tensor:
    """(rho/2)·Σ_l ‖W_l − Z_l + U_l‖²_F, the squared Frobenius norm (gradient rho·(W−Z+U))."""
    total = weights[0].new_zeros(())
    for w, z_l, u_l in zip(weights, z, u, strict=True):
        total = total + (w - z_l + u_l).pow(2).sum()
    return 0.5 * rho * total


def weight_decay_penalty(weights: Sequence[torch.Tensor], p_lambda: float) -> torch.Tensor:
    """(p_lambda/2)·Σ_l ‖W_l‖²_F."""
    total = weights[0].new_zeros(())
    for w in weights:
        total = total + w.pow(2).sum()
    return 0.5 * p_lambda * total


def project(values: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Z = values restricted to the masks (the projection once its support is known)."""
    return [v.detach() * m for v, m in zip(values, masks, strict=True)]


def update_dual(
    u: Sequence[torch.Tensor], weights: Sequence[torch.Tensor], z: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """U ← U + W − Z."""
    return [u_l + w.detach() - z_l for u_l, w, z_l in zip(u, weights, z, strict=True)]


def rescale_dual(u: Sequence[torch.Tensor], rho_old: float, rho_new: float) -> list[torch.Tensor]:
    """U ← U·rho_old/rho_new, so the unscaled dual rho·U is unchanged (Boyd §3.4.1)."""
    if rho_new == rho_old:
        return list(u)
    factor = rho_old / rho_new
    return [u_l * factor for u_l in u]


def next_rho(rho: float, rho_growth: float, rho_max: float) -> float:
    """Progressive schedule: rho_{k+1} = min(rho_max, rho_k·rho_growth)."""
    return min(rho_max, rho * rho_growth)


def balanced_rho(
    rho: float, primal: float, dual: float, mu: float = 10.0, tau: float = 2.0,
    rho_max: float = math.inf,
) -> float:
    """Residual balancing (Boyd §3.4.1): raise rho when the primal residual dominates,
    lower it when the dual residual does, keep it otherwise."""
    if primal > mu * dual:
        return min(rho_max, rho * tau)
    if dual > mu * primal:
        return rho / tau
    return rho


@dataclass(frozen=True)
class Residuals:
    primal: float  # ‖W − Z‖: how far the weights are from the sparse set
    dual: float  # rho·‖Z − Z_prev‖: how much the sparse target still moves


def residuals(
    weights: Sequence[torch.Tensor],
    z: Sequence[torch.Tensor],
    z_prev: Sequence[torch.Tensor],
    rho: float,
) -> Residuals:
    primal = math.sqrt(sum(float((w.detach() - z_l).pow(2).sum()) for w, z_l in
                           zip(weights, z, strict=True)))
    change = math.sqrt(sum(float((z_l - zp).pow(2).sum()) for z_l, zp in
                           zip(z, z_prev, strict=True)))
    return Residuals(primal=primal, dual=rho * change)

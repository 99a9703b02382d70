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
    "fused_penalty",
    "add_penalty_gradient",
    "squared_norm",
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


# Elements per slice of the fused CPU passes: three float32 slices of 1 MiB stay in cache, so
# a slice is read from memory once however many operations touch it.
_CHUNK = 1 << 18


def _slices(*tensors: torch.Tensor):
    """Matching flat slices of same-shaped tensors, chunked on CPU when all are contiguous."""
    first = tensors[0]
    if first.device.type != "cpu" or not all(t.is_contiguous() for t in tensors):
        yield tensors
        return
    flats = [t.reshape(-1) for t in tensors]
    for start in range(0, first.numel(), _CHUNK):
        yield tuple(f[start:start + _CHUNK] for f in flats)


def _sum_of_squares(x: torch.Tensor) -> float:
    flat = x.reshape(-1)
    if flat.dtype in (torch.float32, torch.float64):
        return float(torch.dot(flat, flat))
    return float(torch.linalg.vector_norm(flat, dtype=torch.float64)) ** 2


def squared_norm(tensors: Sequence[torch.Tensor], minus: Sequence[torch.Tensor] | None = None
                 ) -> float:
    """Σ_l ‖a_l − b_l‖² (or Σ_l ‖a_l‖²), summed in Python floats; on CPU a − b is formed one
    cache-sized slice at a time, never as a whole tensor."""
    total = 0.0
    for i, a in enumerate(tensors):
        if minus is None:
            total += sum(_sum_of_squares(x) for (x,) in _slices(a.detach()))
            continue
        scratch = None
        for x, y in _slices(a.detach(), minus[i].detach()):
            if scratch is None or scratch.shape != x.shape:
                scratch = torch.empty(x.shape, dtype=torch.result_type(x, y), device=x.device)
            torch.sub(x, y, out=scratch)
            total += _sum_of_squares(scratch)
    return total


class _FusedPenalty(torch.autograd.Function):
    """(rho/2)·Σ‖W − A‖² + (p_lambda/2)·Σ‖W‖² over all tensors as one autograd node.

    The forward makes one pass over W and A per tensor, cache-sized slice by slice,
    that gives both the value and the gradient rho·(W − A) + p_lambda·W; the backward
    only scales the gradients by grad_out (when it is not 1) and hands them to autograd.
    """

    @staticmethod
    def forward(ctx, rho: float, p_lambda: float, count: int, *tensors: torch.Tensor):
        weights, anchors = tensors[:count], tensors[count:]
        ctx.count = count
        # no copies: saving records the versions, so a backward after the weights or the
        # anchors changed in place (an optimizer step, admm_step) raises instead of lying
        ctx.save_for_backward(*tensors)
        ctx.rho, ctx.p_lambda = rho, p_lambda
        wanted = [ctx.needs_input_grad[3 + i] for i in range(count)]
        value = 0.0
        grads: list[torch.Tensor | None] = []
        for i, (w, a) in enumerate(zip(weights, anchors, strict=True)):
            if not wanted[i]:
                grads.append(None)
                value += 0.5 * rho * squared_norm([w], [a]) if rho else 0.0
                value += 0.5 * p_lambda * squared_norm([w]) if p_lambda else 0.0
                continue
            g = torch.empty_like(w)
            value += _fill_gradient(w, a, g, rho, p_lambda)
            grads.append(g)
        # held until the backward, which lets go of them so that autograd can adopt them
        # (add the model's gradient into them in place, use them as .grad) without a copy
        ctx.grads = grads
        return weights[0].new_tensor(value)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        saved = ctx.saved_tensors
        weights, anchors = saved[:ctx.count], saved[ctx.count:]
        grads, ctx.grads = ctx.grads, None
        if grads is None:  # a second backward (retain_graph): build them again, fresh
            grads = [None if not ctx.needs_input_grad[3 + i] else
                     torch.empty_like(w)
                     for i, w in enumerate(weights)]
            for w, a, g in zip(weights, anchors, grads, strict=True):
                if g is not None:
                    _fill_gradient(w, a, g, ctx.rho, ctx.p_lambda)
        scale = float(grad_out)
        if scale != 1.0:
            for g in grads:
                if g is not None:
                    g.mul_(scale)
        return (None, None, None, *grads, *([None] * ctx.count))


def _fill_gradient(w: torch.Tensor, a: torch.Tensor, g: torch.Tensor, rho: float,
                   lam: float) -> float:
    """g ← rho·(w − a) + lam·w in one pass; returns (rho/2)‖w − a‖² + (lam/2)‖w‖²."""
    w, a = w.detach(), a.detach()
    distance = norm = 0.0
    for wc, ac, gc in _slices(w, a, g):
        if rho:
            torch.sub(wc, ac, out=gc)
            distance += _sum_of_squares(gc)
            gc.mul_(rho)
            if lam:
                gc.add_(wc, alpha=lam)
        else:
            torch.mul(wc, lam, out=gc)
        if lam:
            norm += _sum_of_squares(wc)
    return 0.5 * rho * distance + 0.5 * lam * norm


def fused_penalty(
    weights: Sequence[torch.Tensor],
    anchors: Sequence[torch.Tensor] | None,
    rho: float,
    p_lambda: float = 0.0,
) -> torch.Tensor:
    """(rho/2)·Σ‖W_l − A_l‖² + (p_lambda/2)·Σ‖W_l‖², with A = Z − U, as one autograd node.

    Same value and gradient rho·(W − Z + U) + p_lambda·W as ``admm_penalty`` +
    ``weight_decay_penalty`` (up to float rounding; the value is summed in float64), but
    one pass over the weights in the forward that also builds the gradients, and no work
    of the weights' size in the backward unless the loss is scaled (grad_out != 1).
    ``anchors=None`` (or ``rho=0``) gives the p_lambda term alone. Not twice
    differentiable.
    """
    weights = tuple(weights)
    if anchors is None:
        rho, anchors = 0.0, tuple(w.detach() for w in weights)
    anchors = tuple(a.detach() for a in anchors)
    if len(anchors) != len(weights):
        raise ValueError(f"got {len(anchors)} anchors for {len(weights)} weights")
    if not torch.is_grad_enabled():
        value = 0.5 * rho * squared_norm(weights, anchors) if rho else 0.0
        value += 0.5 * p_lambda * squared_norm(weights) if p_lambda else 0.0
        return weights[0].new_tensor(value)
    return _FusedPenalty.apply(float(rho), float(p_lambda), len(weights), *weights, *anchors)


@torch.no_grad()
def add_penalty_gradient(
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    anchors: Sequence[torch.Tensor] | None,
    rho: float,
    p_lambda: float = 0.0,
) -> None:
    """grad_l += rho·(W_l − A_l) + p_lambda·W_l in place: the gradient of ``fused_penalty``,
    added directly instead of through autograd (``anchors=None`` or ``rho=0``: the
    p_lambda term alone). On CPU it runs one cache-sized slice at a time, with no temporary
    of the weights' size.

    Raises:
        ValueError: the lists differ in length or a gradient's shape is not its weight's.
    """
    if anchors is None:
        rho = 0.0
        anchors = weights
    if not len(weights) == len(grads) == len(anchors):
        raise ValueError(f"got {len(weights)} weights, {len(grads)} gradients and "
                         f"{len(anchors)} anchors")
    if not rho and not p_lambda:
        return
    for w, g, a in zip(weights, grads, anchors, strict=True):
        if g.shape != w.shape:
            raise ValueError(f"gradient of shape {tuple(g.shape)} for a weight of shape "
                             f"{tuple(w.shape)}")
        w, a = w.detach(), a.detach()
        for wc, ac, gc in _slices(w, a, g):
            # gc += rho·(wc − ac) + p_lambda·wc = (rho + p_lambda)·wc − rho·ac
            if rho:
                gc.add_(wc, alpha=rho + p_lambda).sub_(ac, alpha=rho)
            else:
                gc.add_(wc, alpha=p_lambda)


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

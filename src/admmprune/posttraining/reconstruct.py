"""Layer-wise reconstruction by ADMM (Boža 2024, "Fast and Effective Weight Update for Pruned
Large Language Models"): prune one layer and update its kept weights so that its outputs on
the calibration inputs change as little as possible.

For a layer ``y = W x`` with calibration inputs ``X`` (tokens x inputs) and ``H = XᵀX``, the
pruned weight solves

    minimize ½ tr((Ŵ − W) H (Ŵ − W)ᵀ) = ½‖XŴᵀ − XWᵀ‖²   subject to  Ŵ in the sparsity set.

Scaled-form ADMM splits it into a least-squares step with one factorisation of ``H + ρI``
(reused over the iterations), a projection onto the sparsity set and a dual update:

    Ŵ-step: Ŵ = (W H + ρ (Z − U)) (H + ρ I)⁻¹
    Z-step: Z = Π(Ŵ + U)       (top-K within the layer, per row, or N:M)
    U-step: U = U + Ŵ − Z

Choices made here, and why:

* **Damping and scale.** ``H ← H + damp · mean(diag H) · I`` (SparseGPT's dampening, 1% by
  default), then the whole problem is solved in a rescaled space ``W̃ = W D``, ``H̃ = D⁻¹ H D⁻¹``
  where ``D`` is diagonal. With ``score="wanda"`` (the default) ``D = diag(H)^½`` so ``H̃``
  has a unit diagonal: the Z-step's magnitude ``|W̃_ij|`` is then exactly Wanda's score
  ``|W_ij| · ‖X_j‖`` (on the damped ``H``), and that projection is the exact Euclidean
  projection in the metric the ADMM penalty uses, so the Z-step stays a true projection
  (Wanda's comparison inside ADMM, which is how Boža ranks weights). With
  ``score="magnitude"``, ``D = mean(diag H)^½ · I`` and the
  Z-step ranks plain ``|Ŵ + U|``. Either way ρ is relative to a unit (mean) diagonal, and the
  result does not change when ``H`` or ``W`` is multiplied by a constant.
  On correlated random layers (``benchmarks/layer_solvers.py``) the Wanda score gave about 4x
  lower error than plain magnitude.
* **ρ.** Fixed by default: one Cholesky factorisation of ``H̃ + ρI`` per layer, kept as its
  inverse so that a Ŵ-step is one product. ρ = 0.6 came within 2.5% of the best fixed ρ
  (0.1-3) on two families of correlated random layers (a decaying spectrum with outlier
  features, best near 0.4-0.5; a Gaussian mixing, best near 1 at 90%) at 50-90%, and at
  least matched schedules growing from 0.1 or 0.5 by 1.1-1.3x per iteration. ``rho`` may
  also be one value per iteration: ``H̃ + ρI`` is refactored only where it changes (about
  the cost of one Ŵ-step each time), and U is rescaled by ``ρ_old / ρ_new``, as the scaled
  form requires.
* **Gradual mask.** The projection's budget shrinks from every weight (or from
  ``warm_mask``'s count) to the target over the first ``ramp`` iterations along Boža's cubic
  schedule (Zhu and Gupta's ``s_t = s + (s₀ − s)(1 − t/T)³``), then stays at the target; the
  mask itself may still change at every Z-step until the last.
* **Final weight update.** The returned mask is the support of the last projection; its kept
  weights are then the exact minimiser of the (damped) reconstruction error on that fixed mask
  (:func:`masked_least_squares`): conjugate gradients on every row's normal equations
  restricted to its kept inputs, batched over rows (one ``[out, in] x [in, in]`` product per
  iteration), warm-started from the ADMM iterate and stopped on a relative residual (1e-5 by
  default: 20-45 steps on the benchmark layers, the error within 3e-5 of the exact optimum's).
  CG rather than more fixed-mask ADMM steps: ADMM converges only linearly, at a rate set by
  ρ, and never lands on the optimum, while CG is exact after at most "kept inputs per row"
  steps (the unit diagonal of ``H̃`` is already its Jacobi preconditioner); a direct per-row
  solve would cost ``out · k³`` (one factorisation per row, as the kept sets differ). At
  ρ = 0.6 the last Z was 0.6-4% above this optimum on those layers (25-130% at ρ = 0.3).

Pure functions on tensors: no model, no IO. Layouts as in :mod:`admmprune.posttraining.wanda`:
``nn.Linear`` ``[out, in]`` (``input_dim=1``), HF ``Conv1D`` ``[in, out]`` (``input_dim=0``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..projection import global_topk_masks, nm_survivors, validate_nm
from .activations import CalibrationError, check_weight_and_gram
from .wanda import nm_row_masks

__all__ = ["LayerSolverError", "PROJECTIONS", "admm_reconstruct", "masked_least_squares",
           "reconstruction_error", "keep_schedule", "row_topk_mask", "layer_topk_mask"]

# a projection: (scores [out, in], how many entries to keep) -> boolean mask of that shape
Projection = Callable[[torch.Tensor, int], torch.Tensor]


class LayerSolverError(CalibrationError):
    """The layer solver cannot work on these tensors or options (sizes, budget, ratio)."""


def layer_topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep the ``keep`` largest scores of the whole layer (equal scores: the first in
    row-major order, the rule of :func:`admmprune.projection.global_topk_masks`)."""
    return global_topk_masks([scores], keep)[0]


def row_topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep the largest scores of every row: each of the ``r`` rows keeps ``keep // r``, and
    the first ``keep % r`` rows one more, so exactly ``keep`` survive (equal scores within a
    row: the first input)."""
    rows, width = scores.shape
    if not 0 <= keep <= scores.numel():
        raise LayerSolverError(f"cannot keep {keep} of {scores.numel()} entries")
    per_row = torch.full((rows,), keep // rows, dtype=torch.long, device=scores.device)
    per_row[: keep % rows] += 1
    order = torch.argsort(-scores, dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(width, device=scores.device).expand(rows, width))
    return rank < per_row.unsqueeze(1)


PROJECTIONS: dict[str, Projection] = {"layer": layer_topk_mask, "row": row_topk_mask}


def _nm_projection(n: int, m: int) -> Projection:
    """N:M, relaxed while the budget ramps down: the N:M mask of the scores plus the best
    other entries up to ``keep``, so the set shrinks smoothly onto the N:M mask."""
    def project(scores: torch.Tensor, keep: int) -> torch.Tensor:
        structured = nm_row_masks(scores, n, m)
        extra = keep - int(structured.sum())
        if extra <= 0:
            return structured
        # the N:M survivors are already in; the best of the others fill up to `keep`
        others = scores.masked_fill(structured, -1.0)
        return structured | layer_topk_mask(others, extra)
    return project


def _checked(projection: Projection) -> Projection:
    """A user's projection, refused when it returns something that is not a mask."""
    def project(scores: torch.Tensor, keep: int) -> torch.Tensor:
        mask = projection(scores, keep)
        if not (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
                and mask.shape == scores.shape):
            raise LayerSolverError(f"the projection must return a boolean mask of shape "
                                   f"{tuple(scores.shape)}, got {mask!r:.80}")
        return mask
    return project


def keep_schedule(total: int, start: int, keep: int, ramp: int, schedule: str = "cubic"
                  ) -> list[int]:
    """The projection's budget at ramp steps ``t = 1..ramp``: ``keep + round((start − keep)
    · (1 − t/ramp)^p)`` with ``p = 3`` (cubic, Boža / Zhu and Gupta) or ``p = 1`` (linear);
    ``"none"`` is the target from the first step. The last entry is always ``keep``.

    Raises:
        LayerSolverError: counts outside ``[0, total]``, ``ramp < 1`` or an unknown schedule.
    """
    if not (0 <= keep <= total and 0 <= start <= total):
        raise LayerSolverError(f"budgets must lie in [0, {total}], got start {start}, "
                               f"keep {keep}")
    if not (isinstance(ramp, int) and ramp >= 1):
        raise LayerSolverError(f"ramp must be an integer >= 1, got {ramp!r}")
    powers = {"cubic": 3, "linear": 1, "none": 0}
    if schedule not in powers:
        raise LayerSolverError(f"schedule must be one of {sorted(powers)}, got {schedule!r}")
    if powers[schedule] == 0:
        return [keep] * ramp
    p = powers[schedule]
    return [keep + round((start - keep) * (1.0 - t / ramp) ** p) for t in range(1, ramp + 1)]


def _as_rows(weight: torch.Tensor, input_dim: int) -> torch.Tensor:
    return weight if input_dim == 1 else weight.t()


def _check_layer(weight: torch.Tensor, gram: torch.Tensor, input_dim: int) -> None:
    check_weight_and_gram(weight, gram, input_dim, "the layer solver", LayerSolverError)


def _damped(gram: torch.Tensor, damp: float) -> torch.Tensor:
    if not damp > 0:
        raise LayerSolverError(f"damp must be > 0 (the dampening keeps H + λI invertible), "
                               f"got {damp!r}")
    h = gram.detach().double().clone()
    mean = float(torch.diagonal(h).mean())
    if not mean > 0:
        raise LayerSolverError("the Gram matrix has no positive diagonal: the layer saw no "
                               "calibration input (run calibration batches through it)")
    h.diagonal().add_(damp * mean)
    return h


def _scaling(h: torch.Tensor, score: str) -> torch.Tensor:
    """The diagonal ``D`` of the working space ``W̃ = W D``, ``H̃ = D⁻¹ H D⁻¹``."""
    diagonal = torch.diagonal(h)
    if score == "wanda":
        return diagonal.sqrt()
    if score == "magnitude":
        return diagonal.mean().sqrt().expand_as(diagonal).clone()
    raise LayerSolverError(f"score must be 'wanda' or 'magnitude', got {score!r}")


def reconstruction_error(weight: torch.Tensor, new_weight: torch.Tensor, gram: torch.Tensor,
                         input_dim: int = 1) -> float:
    """``‖X(Ŵ − W)ᵀ‖² = tr((Ŵ − W) H (Ŵ − W)ᵀ)`` with ``H = XᵀX`` as given (undamped).

    Raises:
        LayerSolverError: mismatched shapes or layout.
    """
    _check_layer(weight, gram, input_dim)
    if new_weight.shape != weight.shape:
        raise LayerSolverError(f"new weight of shape {tuple(new_weight.shape)} for a weight "
                               f"of shape {tuple(weight.shape)}")
    delta = _as_rows(new_weight.detach().double() - weight.detach().double(), input_dim)
    return float(((delta @ gram.double()) * delta).sum())


def _masked_cg(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               start: torch.Tensor, tol: float, max_iterations: int) -> torch.Tensor:
    """Solve, for every row i, ``(H x_i)_S = target_{i,S}`` with ``x_i`` zero outside its
    kept set ``S`` (the row's ``mask``), by Jacobi-preconditioned CG batched over rows."""
    m = mask.to(h.dtype)
    inverse_diagonal = 1.0 / torch.diagonal(h)
    x = start * m
    b = target * m
    r = b - (x @ h) * m
    z = r * inverse_diagonal
    p = z.clone()
    rz = (r * z).sum(dim=1)
    goal = tol * b.norm(dim=1)
    for _ in range(max_iterations):
        active = r.norm(dim=1) > goal
        if not bool(active.any()):
            break
        hp = (p @ h) * m
        php = (p * hp).sum(dim=1)
        alpha = torch.where(active & (php > 0), rz / php.clamp_min(torch.finfo(h.dtype).tiny),
                            torch.zeros_like(rz))
        x += alpha.unsqueeze(1) * p
        r -= alpha.unsqueeze(1) * hp
        z = r * inverse_diagonal
        rz_next = (r * z).sum(dim=1)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(torch.finfo(h.dtype).tiny),
                           torch.zeros_like(rz))
        p = z + beta.unsqueeze(1) * p
        rz = rz_next
    return x * m


def masked_least_squares(weight: torch.Tensor, gram: torch.Tensor, mask: torch.Tensor, *,
                         damp: float = 0.01, input_dim: int = 1, tol: float = 1e-10,
                         max_iterations: int | None = None,
                         start: torch.Tensor | None = None) -> torch.Tensor:
    """The kept weights that minimise the damped reconstruction error on a fixed mask:
    for every row ``i`` with kept inputs ``S``, ``Ŵ_{i,S}`` solves ``H_SS Ŵ_{i,S} = (H W_iᵀ)_S``
    with ``H = XᵀX + damp · mean(diag) · I``; ``Ŵ`` is zero outside the mask.

    Args:
        weight: the dense 2-D weight.
        gram: ``XᵀX`` of its inputs (features x features).
        mask: the kept entries, in ``weight``'s layout.
        damp: dampening relative to the mean diagonal (> 0).
        input_dim: the weight's input axis (1: ``nn.Linear``; 0: HF ``Conv1D``).
        tol: stop when every row's residual norm is below ``tol`` times its right-hand side's.
        max_iterations: conjugate-gradient steps at most (default: the most kept inputs of
            any row, where exact arithmetic would be exact, plus 10).
        start: a first guess in ``weight``'s layout (default: ``weight`` on the mask).

    Returns:
        The updated weight in ``weight``'s layout and dtype.

    Raises:
        LayerSolverError: bad shapes, layout or options.
    """
    _check_layer(weight, gram, input_dim)
    if mask.shape != weight.shape:
        raise LayerSolverError(f"a mask of shape {tuple(mask.shape)} for a weight of shape "
                               f"{tuple(weight.shape)}")
    h = _damped(gram.to(weight.device), damp)
    d = _scaling(h, "wanda")
    h_scaled = h / d.unsqueeze(0) / d.unsqueeze(1)
    w = _as_rows(weight.detach(), input_dim).double() * d
    rows_mask = _as_rows(mask.to(torch.bool), input_dim)
    guess = w if start is None else _as_rows(start.detach(), input_dim).double() * d
    if max_iterations is None:
        max_iterations = int(rows_mask.sum(dim=1).max()) + 10
    solved = _masked_cg(h_scaled, w @ h_scaled, rows_mask, guess, tol, max_iterations) / d
    return _as_rows(solved, input_dim).to(weight.dtype).contiguous()


def admm_reconstruct(weight: torch.Tensor, gram: torch.Tensor, *, keep: int | None = None,
                     nm: tuple[int, int] | None = None,
                     projection: str | Projection = "layer", score: str = "wanda",
                     iterations: int = 20, ramp: int | None = None, schedule: str = "cubic",
                     rho: float | Sequence[float] = 0.6, damp: float = 0.01,
                     warm_mask: torch.Tensor | None = None, input_dim: int = 1,
                     final_update: bool = True, cg_tol: float = 1e-5,
                     precision: torch.dtype = torch.float32
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one layer by ADMM reconstruction and update its kept weights.

    Args:
        weight: the dense 2-D weight.
        gram: ``XᵀX`` of its calibration inputs (features x features; float64 best).
        keep: how many weights of the layer survive (unstructured), or
        nm: ``(N, M)``: keep N of every M consecutive inputs of a row; exactly one of the two.
        projection: the unstructured Z-step: ``"layer"`` (top-``keep`` of the whole layer),
            ``"row"`` (every row keeps the same share, as Wanda compares), or a function
            ``(scores [out, in], count) -> bool mask`` of the scores' shape (scores are
            ``|Ŵ + U|`` in the working space; see the module's notes). Ignored with ``nm``.
        score: ``"wanda"`` (rank ``|w| · sqrt(diag H)``, the default) or ``"magnitude"``.
        iterations: ADMM iterations (each: one Z-step, U-step and Ŵ-step).
        ramp: iterations over which the budget shrinks to its target (default: half of
            ``iterations``, at least 1).
        schedule: ``"cubic"``, ``"linear"`` or ``"none"`` (the target from the start).
        rho: the penalty, relative to the unit (mean) diagonal of the rescaled ``H``; one
            value (one factorisation per layer) or one per iteration (refactored where it
            changes). See the module's notes for the default.
        damp: dampening of ``H``, relative to its mean diagonal (> 0).
        warm_mask: a first mask (e.g. Wanda's): the iterations start from ``W`` on it, and
            the budget ramps from its count instead of from every weight.
        input_dim: the weight's input axis (1: ``nn.Linear``; 0: HF ``Conv1D``).
        final_update: finish with the exact least-squares weights on the final mask
            (:func:`masked_least_squares`); False returns the last Z.
        cg_tol: relative residual at which the final update stops.
        precision: dtype of the iterations' products (float32: about 1.8x faster on a CPU
            than float64, same masks and errors to 5 digits on the benchmark layers); the
            factorisation and the final update always run in float64.

    Returns:
        ``(new_weight, mask)`` in ``weight``'s layout; ``new_weight`` has ``weight``'s dtype
        and is zero where ``mask`` is False. Unstructured: exactly ``keep`` entries are kept
        (``projection`` "layer" or "row"); N:M: a valid N:M mask.

    Raises:
        LayerSolverError: bad shapes, layout, budget or options.
        ProjectionError: an invalid N:M pair.
    """
    _check_layer(weight, gram, input_dim)
    w_rows = _as_rows(weight.detach(), input_dim)
    total = w_rows.numel()
    if (keep is None) == (nm is None):
        raise LayerSolverError("give exactly one of keep (unstructured count) and nm=(N, M)")
    project: Projection
    if nm is not None:
        validate_nm(*nm)
        keep = nm_survivors(tuple(w_rows.shape), *nm)
        project = _nm_projection(*nm)
    elif callable(projection):
        project = _checked(projection)
    elif projection in PROJECTIONS:
        project = PROJECTIONS[projection]
    else:
        raise LayerSolverError(f"projection must be one of {sorted(PROJECTIONS)} or a "
                               f"function, got {projection!r}")
    assert keep is not None
    if not (isinstance(keep, int) and 0 < keep <= total):
        raise LayerSolverError(f"keep must be an integer in [1, {total}], got {keep!r}")
    if not (isinstance(iterations, int) and iterations >= 1):
        raise LayerSolverError(f"iterations must be an integer >= 1, got {iterations!r}")
    if ramp is None:
        ramp = max(1, iterations // 2)
    if not (isinstance(ramp, int) and 1 <= ramp <= iterations):
        raise LayerSolverError(f"ramp must be an integer in [1, iterations={iterations}], "
                               f"got {ramp!r}")
    rhos = [float(rho)] * iterations if isinstance(rho, (int, float)) else \
        [float(r) for r in rho]
    if len(rhos) != iterations or not all(r > 0 for r in rhos):
        raise LayerSolverError(f"rho must be one positive value or one per iteration "
                               f"({iterations}), got {rho!r}")

    h = _damped(gram.to(weight.device), damp)
    d = _scaling(h, score)
    h_scaled = h / d.unsqueeze(0) / d.unsqueeze(1)
    w = w_rows.double() * d  # the working space, [out, in]
    del h
    target = w @ h_scaled

    def factor(r: float) -> tuple[torch.Tensor, torch.Tensor]:
        # factorised in float64 whatever the working precision: H + ρI can be ill-conditioned
        shifted = h_scaled.clone()
        shifted.diagonal().add_(r)
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(shifted))
        del shifted
        return inverse.to(precision), (target @ inverse).to(precision)

    start = total
    v = w.to(precision)
    if warm_mask is not None:
        if warm_mask.shape != weight.shape:
            raise LayerSolverError(f"a warm mask of shape {tuple(warm_mask.shape)} for a "
                                   f"weight of shape {tuple(weight.shape)}")
        warm = _as_rows(warm_mask.to(torch.bool), input_dim)
        start = int(warm.sum())
        v = v * warm
    budgets = keep_schedule(total, start, keep, ramp, schedule)
    budgets += [keep] * (iterations - ramp)

    current = rhos[0]
    inverse, base = factor(current)
    u = torch.zeros_like(v)
    for budget, r in zip(budgets, rhos, strict=True):
        z = v + u
        z = z * project(z.abs(), budget)
        u += v - z
        if r != current:
            u *= current / r  # the scaled dual is y / ρ
            current = r
            inverse, base = factor(current)
        v = base + current * ((z - u) @ inverse)
    mask = project((v + u).abs(), keep)
    if final_update:
        # float64 whatever the working precision: float32 stalls above a 1e-5 residual
        v = _masked_cg(h_scaled, target, mask, (v + u).double(), cg_tol,
                       int(mask.sum(dim=1).max()) + 10)
    else:
        v = (v + u) * mask
    new = _as_rows(v.double() / d, input_dim).to(weight.dtype).contiguous()
    return new, _as_rows(mask, input_dim).contiguous()

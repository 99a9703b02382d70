"""``ADMMPruner``: the object any training loop talks to.

    pruner = ADMMPruner(model, all_percent=99.0, rho=1e-3)
    loss = criterion(model(x), y) + pruner.penalty()     # W-step, every batch
    pruner.admm_step()                                    # once per ADMM iteration
    pruner.hard_prune(); ...; pruner.enforce()            # masked retraining

It never wraps the optimizer or the loop; it only reads and writes the weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import replace

import torch
from torch import nn

from . import admm
from .checks import NM_PERCENT_TOLERANCE, is_number, rho_schedule_problem
from .masks import (
    CollapseWarning,
    LayerSparsity,
    MaskEnforcer,
    collapsed_layers,
    global_sparsity,
    open_rows_floor,
    sparsity_report,
    zero_optimizer_state,
)
from .projection import (
    FOLDED_SCORE,
    GROUP_SCORES,
    OBD_SCORE,
    SCORES,
    SHARE_SCORE,
    STRUCTURES,
    ProjectionError,
    StructureOptions,
    check_percent,
    nm_removed_percent,
    nm_survivors,
    survivor_count,
)
from .regrow import drop_and_grow
from .selection import PRUNABLE_TYPES, is_transposed_linear, prunable_parameters
from .unit_contribution import OUTPUT_UNIT_SCORE, output_unit_scores, read_unit_inputs

__all__ = ["ADMMPruner", "PrunerError"]

PROJECTIONS = ("global", "layerwise")
# all_percent may differ from the ratio N:M implies by this many percentage points (rounding)
SUPPORTS = ("weights", "z")
Z_INITS = ("projection", "weights")


class PrunerError(ValueError):
    """Invalid pruner settings or a call in the wrong order."""


class ADMMPruner:
    """Global (or layer-wise) ADMM pruning of a model's Conv/Linear weights.

    Args:
        model: any ``nn.Module``.
        all_percent: share of the prunable weights to remove, in [0, 100).
        rho: initial ADMM penalty weight (> 0).
        rho_growth, rho_max: progressive schedule rho ← min(rho_max, rho·rho_growth)
            after every ``admm_step``.
        adaptive_rho: use residual balancing (Boyd §3.4.1) instead of the fixed growth.
        p_lambda: L2 regularisation (p_lambda/2)·Σ‖W‖² of the prunable weights.
        projection: ``"global"`` (one budget over all layers) or ``"layerwise"``
            (every layer removes ``layer_percents``, default all_percent each).
        score: ranking criterion of the Z-step and the hard prune: ``magnitude``, ``rms``,
            ``lamp``, ``folded`` or ``share`` (unstructured only). ``folded`` ranks each
            weight by its magnitude times the scale of the BatchNorm its layer feeds (γ/σ per
            output row) and of the normalization that feeds its layer (γ per input column);
            it needs ``example_inputs`` to find those norms (``admmprune.channels.norms``). Measured
            on a BatchNorm ResNet it lost to magnitude and LAMP (docs/results.md section 15).
            ``share`` ranks each weight by its share of its own output, |w_ij|·rms(x_j) /
            rms(y_i), from the activations of a forward pass over ``example_inputs`` at every
            projection (``admmprune.channels.shares``): unchanged by any scaling of a
            layer's rows, columns or inputs. ``obd`` (Optimal Brain Damage) ranks each weight
            by w² times the diagonal of the output Gauss-Newton matrix, from the output
            gradients on ``example_inputs`` at every projection
            (``admmprune.channels.curvature``): how far removing it alone moves the outputs.
        structure: what the Z-step keeps (``admmprune.projection.STRUCTURES``):
            ``unstructured`` (single weights), ``filter`` (whole output filters; their
            biases are zeroed and kept zero with them after the hard prune), ``channel``
            (whole input channels) or ``nm`` (N of every M weights along the input
            dimension, dim 0 of a weight stored [in, out] such as transformers' Conv1D;
            all_percent must then match the ratio N:M implies, within 0.5) or ``units``
            (a transformer's whole MLP neurons and attention groups, each across all the
            tensors it spans: Llama-style and GPT-2 blocks, found by
            ``admmprune.posttraining.blocks.find_blocks``; every pruned tensor must belong
            to a block's units; ``admmprune.posttraining.units.shrink_units`` then cuts the
            model smaller). ``filter`` and ``channel`` refuse Conv1D weights.
        group_score: filter/channel/units ranking, comparable across layers: ``l2``
            (‖filter‖₂/√size), ``l1`` (mean |w|) or ``lamp`` (LAMP over a layer's groups);
            structure ``units`` also takes ``output``: each unit's mean squared contribution
            to the residual stream per weight, E‖O_u x_u‖² / size, with O_u its columns of
            the down/output projection in the values projected and x_u its inputs there,
            read from the model on ``example_inputs`` at every projection
            (``admmprune.unit_contribution``).
        nm_n, nm_m: N and M of ``structure="nm"``.
        example_inputs: a batch the model accepts. With global ``filter`` structure it
            lets the pruner trace which columns read which filters, so the budget counts
            live weights: a removed filter's readers lose those columns too (and they are
            zeroed). Without it every kept filter counts whole, dead columns included.
        live_weights: global ``unstructured`` only, needs ``example_inputs``: the budget
            counts live weights only. A kept weight whose unit no kept weight reads cannot
            change the output; it is dropped and the next-ranked live weight takes its
            place (``projection.live_topk_masks``).
        include, exclude: ``fnmatch`` patterns on module names or full parameter names
            (default: every Conv/Linear weight; frozen and parametrized weights are
            skipped unless named exactly, a shared Parameter counts once; see
            ``admmprune.selection`` and ``describe_selection``).
        z_init: ``"projection"`` (Z = Π(W), the standard start) or ``"weights"`` (Z = W:
            the first W-step is only pulled towards the current weights).
        allow_regrowth: after a hard prune, may a later stage revive removed weights?
        min_layer_percent: global unstructured only: every layer keeps at least this percent
            of its weights (its best-scored), whatever the global ranking says; the rest of
            the budget is ranked globally. None: no floor (a layer may lose everything; the
            hard prune then warns with ``CollapseWarning``).
    """

    def __init__(
        self,
        model: nn.Module,
        all_percent: float,
        rho: float = 1e-3,
        *,
        rho_growth: float = 1.0,
        rho_max: float = math.inf,
        adaptive_rho: bool = False,
        p_lambda: float = 0.0,
        projection: str = "global",
        layer_percents: Sequence[float] | None = None,
        score: str = "magnitude",
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        z_init: str = "projection",
        allow_regrowth: bool = False,
        structure: str = "unstructured",
        group_score: str = "l2",
        nm_n: int = 2,
        nm_m: int = 4,
        example_inputs: torch.Tensor | None = None,
        live_weights: bool = False,
        min_layer_percent: float | None = None,
    ) -> None:
        problem = rho_schedule_problem(rho, rho_growth, rho_max)
        if problem is not None:
            raise PrunerError(" ".join(problem))
        if not (is_number(p_lambda) and p_lambda >= 0 and math.isfinite(p_lambda)):
            raise PrunerError(f"p_lambda must be a finite number >= 0, got {p_lambda!r}")
        if projection not in PROJECTIONS:
            raise PrunerError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        if z_init not in Z_INITS:
            raise PrunerError(f"z_init must be one of {Z_INITS}, got {z_init!r}")
        if score not in SCORES:
            raise PrunerError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
        if structure not in STRUCTURES:
            raise PrunerError(f"structure must be one of {tuple(STRUCTURES)}, got {structure!r}")
        if group_score not in GROUP_SCORES and group_score != OUTPUT_UNIT_SCORE:
            raise PrunerError(f"group_score must be one of "
                              f"{(*GROUP_SCORES, OUTPUT_UNIT_SCORE)}, got {group_score!r}")
        if group_score == OUTPUT_UNIT_SCORE and (structure != "units" or example_inputs is None):
            raise PrunerError("group_score 'output' ranks a transformer's units by what they "
                              "add to the residual stream, read from the model: it needs "
                              "structure 'units' and example_inputs (a batch the model "
                              "accepts)")
        if structure != "unstructured" and score != "magnitude":
            raise PrunerError(f"score={score!r} ranks single weights (structure "
                              f"'unstructured'); structure {structure!r} ranks "
                              "groups by group_score (or N:M by magnitude): drop score")
        if structure == "nm":
            _checked(nm_survivors, (1, 1), nm_n, nm_m)
            if layer_percents is not None:
                raise PrunerError("layer_percents cannot be used with structure 'nm': "
                                  "N:M fixes every layer's ratio")

        named = prunable_parameters(model, include, exclude)
        self.model = model
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        on_meta = [n for n, p in named if p.is_meta]
        if on_meta:
            raise PrunerError(f"{', '.join(on_meta[:3])}{' ...' if len(on_meta) > 3 else ''} "
                              "are on the meta device (shapes without values): there is "
                              "nothing to prune. Materialize the model first (e.g. "
                              "model.to_empty(device='cpu') and load its weights)")
        # Weights stored [in, out] (Hugging Face's Conv1D): N:M groups run along their dim 0
        self.transposed = _transposed_weights(model, self.names)
        if structure in ("filter", "channel") and any(self.transposed):
            names = [n for n, t in zip(self.names, self.transposed, strict=True) if t]
            raise PrunerError(f"structure {structure!r} does not support weights stored "
                              f"transposed ([in, out], transformers' Conv1D): "
                              f"{', '.join(names)}; exclude them or use structure "
                              "'unstructured' or 'nm'")
        self.rho = float(rho)
        self.rho_growth = float(rho_growth)
        self.rho_max = float(rho_max)
        self.adaptive_rho = bool(adaptive_rho)
        self.p_lambda = float(p_lambda)
        self.projection = projection
        self.score = score
        self.z_init = z_init
        self.allow_regrowth = bool(allow_regrowth)
        self.structure = structure
        # The last prunable layer's outputs are the model's (its classes): whole-filter
        # pruning keeps them all; other output layers (detection heads) need `exclude`.
        fixed = tuple(i == len(self.params) - 1 for i in range(len(self.params))) \
            if structure == "filter" else ()
        # Global filter pruning counts live weights when it can trace the model: a removed
        # filter also empties the columns that read it (see liveness.filter_readers).
        readers = ()
        if live_weights:
            if structure != "unstructured" or projection != "global" or example_inputs is None:
                raise PrunerError("live_weights needs structure 'unstructured', projection "
                                  "'global' and example_inputs (a batch the model accepts); "
                                  "global filter pruning counts live weights by itself")
            from .channels.liveness import LivenessError, filter_readers

            try:
                readers = filter_readers(model, self.names, example_inputs, strict=True)
            except LivenessError as err:
                raise PrunerError(f"live_weights: {err}; or set live_weights false") from None
        if structure == "filter" and projection == "global" and example_inputs is not None:
            from .channels.liveness import filter_readers

            readers = filter_readers(model, self.names, example_inputs)
        self._norms = None
        if score == FOLDED_SCORE:
            self._norms = _norm_neighbours(model, self.names, example_inputs)
        self._read_inputs = None  # the batch the share and obd scores read the model on
        if score in (SHARE_SCORE, OBD_SCORE):
            # refuses what it cannot read before any training
            _model_read_scores(score, model, self.names, example_inputs, self.params)
            self._read_inputs = example_inputs
        units = _unit_families(model, self.names) if structure == "units" else ()
        # the output score: (model, output projections, their unit indices, example inputs)
        self._unit_reader = None
        if group_score == OUTPUT_UNIT_SCORE:
            self._unit_reader = (
                model, [model.get_submodule(self.names[f.output[0]].rpartition(".")[0])
                 for f in units], [f.output[2] for f in units], example_inputs)
            _read_unit_scores(self._unit_reader, units, self.params)  # refuses before training
        floors = _floors(self.params, min_layer_percent, structure, projection, live_weights)
        self.min_layer_percent = min_layer_percent
        self.options = StructureOptions(score=score, group_score=group_score, nm_n=nm_n,
                                        nm_m=nm_m, fixed=fixed, readers=readers,
                                        floors=floors, units=units)
        self._biases = _own_biases(model, self.names, self.params) \
            if structure == "filter" else []
        self.layer_percents = None if layer_percents is None else [float(p) for p in
                                                                   layer_percents]
        if self.layer_percents is not None:
            if len(self.layer_percents) != len(self.params):
                raise PrunerError(
                    f"layer_percents has {len(self.layer_percents)} entries but there are "
                    f"{len(self.params)} prunable tensors: {', '.join(self.names)}"
                )
            for p in self.layer_percents:
                _checked(check_percent, p)
        self.total = sum(p.numel() for p in self.params)
        self.iteration = 0
        self.history: list[dict] = []
        self.masks: list[torch.Tensor] | None = None
        self.pruned = False  # True between hard_prune() and the next start_stage()
        self._enforcer: MaskEnforcer | None = None
        self.all_percent = 0.0
        self.keep = self.total
        self.set_target(all_percent)
        self.reset_admm()

    # -- targets and state ---------------------------------------------------------------
    def set_target(self, all_percent: float) -> None:
        """Change the global removal ratio (a progressive stage) without touching Z/U."""
        keep = _checked(survivor_count, self.total, all_percent)
        if self.structure == "nm":
            keep = self._nm_keep(all_percent)
        if sum(self.options.floors) > keep:
            raise PrunerError(f"min_layer_percent={self.min_layer_percent} keeps at least "
                              f"{sum(self.options.floors)} weights, more than the {keep} that "
                              f"all_percent={all_percent} leaves: lower one of them")
        if self.masks is not None and not self.allow_regrowth:
            kept_now = sum(int(m.count_nonzero()) for m in self.masks)
            if keep > kept_now:
                raise PrunerError(
                    f"all_percent={all_percent} keeps {keep} weights but only {kept_now} "
                    "survive the previous stage; stages must not decrease all_percent "
                    "unless allow_regrowth is set"
                )
        self.all_percent = float(all_percent)
        self.keep = keep

    @torch.no_grad()
    def reset_admm(self) -> None:
        """Z from ``z_init``, U = 0: the start of an ADMM run (or of a stage)."""
        weights = [p.detach() for p in self.params]
        if self.z_init == "weights":
            self.z = [w.clone() for w in weights]
        else:
            self.z = admm.project(weights, self._project(weights))
        self.u = [torch.zeros_like(w) for w in weights]
        self._anchor_for = None

    def start_stage(self, all_percent: float, rho: float | None = None,
                    rho_growth: float | None = None, rho_max: float | None = None) -> None:
        """Begin a new progressive stage towards ``all_percent`` from the current result,
        with the stage's rho schedule when ``rho`` is given (see :meth:`set_rho_schedule`).

        After a hard prune the previous mask keeps holding (the W-step cannot revive
        removed weights) unless ``allow_regrowth``; then the mask is dropped.
        """
        if self.allow_regrowth and self._enforcer is not None:
            self._enforcer.remove()
            self._enforcer = None
            self.masks = None
        if rho is not None:
            self.set_rho_schedule(rho, self.rho_growth if rho_growth is None else rho_growth,
                                  self.rho_max if rho_max is None else rho_max)
        self.set_target(all_percent)
        self.pruned = False
        self.reset_admm()

    def set_rho_schedule(self, rho: float, rho_growth: float, rho_max: float) -> None:
        """Use rho <- min(rho_max, rho·rho_growth) from now on, starting at ``rho``.

        Raises:
            PrunerError: rho <= 0, rho_growth < 1 or rho_max < rho (or not numbers).
        """
        problem = rho_schedule_problem(rho, rho_growth, rho_max)
        if problem is not None:
            raise PrunerError(" ".join(problem))
        self.rho, self.rho_growth, self.rho_max = float(rho), float(rho_growth), float(rho_max)

    # -- the three calls of a training loop -----------------------------------------------
    def penalty(self) -> torch.Tensor:
        """The term to add to the loss: ADMM penalty (until hard pruning) + p_lambda term.

        Value (rho/2)·Σ‖W−Z+U‖² + (p_lambda/2)·Σ‖W‖², gradient rho·(W−Z+U) + p_lambda·W, as
        one autograd node over all prunable tensors (``admm.fused_penalty``): no per-tensor
        graph; A = Z − U is cached between ADMM steps, and one pass over W and A per batch
        gives the value and the gradients, which autograd adopts without another copy.
        """
        if not self.pruned:
            return admm.fused_penalty(self.params, self._anchors(), self.rho, self.p_lambda)
        if self.p_lambda:
            return admm.fused_penalty(self.params, None, 0.0, self.p_lambda)
        return self.params[0].new_zeros(())

    @torch.no_grad()
    def add_penalty_gradients(self, only: Iterable[torch.Tensor] | None = None) -> None:
        """Add the gradient of :meth:`penalty` to each prunable weight's ``.grad`` (created
        when None): rho·(W − Z + U) + p_lambda·W until the hard prune, p_lambda·W after it.

        ``only``: the tensors an optimizer is about to step (its ``param_groups``' params);
        with several optimizers, each adds the penalty of its own weights at its own step,
        so no weight gets it twice. None: every prunable weight.

        The alternative to adding ``penalty()`` to the loss, for loops whose loss is not
        yours (trainer callbacks). Call it once per optimizer step, just before
        ``optimizer.step()``:

        - gradient accumulation: after the last accumulated backward pass (the penalty is
          added once per step, not once per mini-batch);
        - AMP with a ``GradScaler``: after ``scaler.unscale_(optimizer)`` (the term is not
          scaled; adding it to scaled gradients would shrink it by the scale);
        - DDP: after the backward's all-reduce, i.e. just before the step; every rank holds
          the same W, Z and U, so every rank adds the same term.

        Frozen weights (``requires_grad=False``) get nothing, as with ``penalty()``.
        Pruned entries get 0 (W is 0 there after the hard prune).
        """
        stepped = None if only is None else {id(p) for p in only}
        chosen = [i for i, p in enumerate(self.params)
                  if p.requires_grad and (stepped is None or id(p) in stepped)]
        if not chosen or (self.pruned and not self.p_lambda):
            return
        params = [self.params[i] for i in chosen]
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        anchors = None
        if not self.pruned:
            every = self._anchors()
            anchors = [every[i] for i in chosen]
        rho = 0.0 if self.pruned else self.rho
        admm.add_penalty_gradient(params, grads, anchors, rho, self.p_lambda)
        if self.masks is not None:
            # a held mask (a later progressive stage): pruned entries get no gradient, as the
            # gradient hooks give the fused penalty's, so no optimizer state builds up there
            for i, grad in zip(chosen, grads, strict=True):
                grad.mul_(self.masks[i])  # the masks live on the weights' device

    @torch.no_grad()
    def admm_step(self) -> dict:
        """Z-step, U-step, residuals and the rho update; returns this iteration's record.

        Z and U are updated in place (clone them to keep the previous values); if the
        projection fails (NaN weights), Z, U and rho are left as they were.
        """
        if self.pruned:
            raise PrunerError("admm_step() after hard_prune(); call start_stage() first")
        weights = [p.detach() for p in self.params]
        # The cached anchors Z − U are rebuilt at the end anyway, so their memory holds
        # T = W + U and then the new Z: no temporary of the weights' size besides the scores.
        buffers = self._anchors()
        self._anchor_for = None
        target = [torch.add(w, u, out=b) for w, u, b in zip(weights, self.u, buffers,
                                                             strict=True)]
        masks = self._project(target)
        for t, m, u in zip(target, masks, self.u, strict=True):
            # U + W − Z with Z = T·m is T where removed and exactly 0 where kept
            u.copy_(t).masked_fill_(m, 0.0)
        # Z = T − U_new: T where kept, exactly 0 where removed (a float subtraction is
        # several times faster than a multiplication by a boolean mask)
        z_new = [t.sub_(u) for t, u in zip(target, self.u, strict=True)]
        res = admm.Residuals(
            primal=math.sqrt(admm.squared_norm(weights, z_new)),
            dual=self.rho * math.sqrt(admm.squared_norm(z_new, self.z)),
        )
        spare, self.z = self.z, z_new
        self.iteration += 1
        record = {
            "iteration": self.iteration,
            "all_percent": self.all_percent,
            "rho": self.rho,
            "primal_residual": res.primal,
            "dual_residual": res.dual,
        }
        if self.adaptive_rho:
            new_rho = admm.balanced_rho(self.rho, res.primal, res.dual, rho_max=self.rho_max)
        else:
            new_rho = admm.next_rho(self.rho, self.rho_growth, self.rho_max)
        if new_rho != self.rho:
            factor = self.rho / new_rho  # as admm.rescale_dual: rho·U is unchanged
            for u in self.u:
                u.mul_(factor)
        self.rho = new_rho
        record["next_rho"] = new_rho
        self.history.append(record)
        self._anchors(spare)
        return record

    @torch.no_grad()
    def hard_prune(self, support: str = "weights") -> list[LayerSparsity]:
        """Zero all but the K survivors and keep them zero from now on.

        ``support="weights"`` keeps the projection of the current weights Π(W);
        ``"z"`` keeps the support of the last Z.
        """
        if support not in SUPPORTS:
            raise PrunerError(f"support must be one of {SUPPORTS}, got {support!r}")
        weights = [p.detach() for p in self.params]
        if support == "z":
            # Z has exactly K non-zeros unless some kept values are exactly 0; re-project
            # |Z| with ties to guarantee the count.
            masks = self._project([z.abs() for z in self.z], raw_scores=True)
        else:
            masks = self._project(weights)
        self._install(masks)
        self.pruned = True
        report = self.sparsity()
        collapsed = collapsed_layers(report, open_rows_floor(self.structure))
        if collapsed:
            warnings.warn("the hard prune collapses " + "; ".join(
                f"{name}: {why}" for name, why in collapsed) + ". LAMP scores (score "
                "'lamp') spread the budget more evenly; min_layer_percent sets a floor",
                CollapseWarning, stacklevel=3)
        return report

    @torch.no_grad()
    def apply_masks(self, masks: Sequence[torch.Tensor]) -> list[LayerSparsity]:
        """Hard prune to masks chosen elsewhere (Wanda's, a baseline's): like
        :meth:`hard_prune`, with the support given instead of projected.

        Args:
            masks: one boolean tensor per pruned tensor, in :attr:`names` order (the order of
                ``selection.prunable_parameters``), each of its tensor's shape.

        Returns:
            The per-layer sparsity after pruning.

        Raises:
            PrunerError: the wrong number or shapes of masks (nothing is changed then).
        """
        masks = list(masks)
        if len(masks) != len(self.params):
            raise PrunerError(f"got {len(masks)} masks for the {len(self.params)} pruned "
                              f"tensors ({', '.join(self.names)})")
        try:
            self._install(masks)
        except ValueError as err:  # a shape mismatch: the enforcer installs nothing
            raise PrunerError(str(err)) from None
        self.pruned = True
        return self.sparsity()

    def enforce(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Re-zero pruned weights (and the optimizer's buffers, if given); call after
        ``optimizer.step()`` during masked retraining."""
        if self._enforcer is None:
            raise PrunerError("enforce() before hard_prune(): there is no mask yet")
        self._enforcer.enforce(optimizer)

    def capture_gradients(self, on: bool) -> None:
        """Keep (or stop keeping) the dense gradients of the next backward passes, which
        :meth:`refine_masks` grows by; switching either way forgets what was kept."""
        if self._enforcer is None:
            raise PrunerError("capture_gradients() before hard_prune(): there is no mask yet")
        self._enforcer.capture = bool(on)
        self._enforcer.clear_captured()

    @torch.no_grad()
    def refine_masks(self, fraction: float,
                     optimizer: torch.optim.Optimizer | None = None) -> int:
        """Swap ``fraction`` of each layer's kept weights by :func:`regrow.drop_and_grow`,
        using the gradients kept since :meth:`capture_gradients`; returns the number of
        entries newly kept. Weights moved in start at 0 (they were held there), and so do
        their optimizer buffers (``optimizer``), whatever they held when last kept."""
        if self.structure != "unstructured":
            raise PrunerError(f"mask refinement swaps single weights; structure "
                              f"{self.structure!r} keeps groups")
        if self._enforcer is None or self.masks is None:
            raise PrunerError("refine_masks() before hard_prune(): there is no mask yet")
        gradients = self._enforcer.captured[:len(self.params)]
        if any(g is None for g in gradients):
            raise PrunerError("refine_masks() needs the gradients of a backward pass made "
                              "after capture_gradients(True)")
        masks = drop_and_grow([p.detach() for p in self.params], gradients, self.masks,
                              fraction)
        grown = [new & ~old for new, old in zip(masks, self.masks, strict=True)]
        self._install(masks)  # grown entries were enforced at 0 until now
        if optimizer is not None:
            zero_optimizer_state(optimizer, self.params, [~g for g in grown])
        return sum(int(g.count_nonzero()) for g in grown)

    def remove_hooks(self) -> None:
        """Detach the gradient hooks (masks are no longer enforced)."""
        if self._enforcer is not None:
            self._enforcer.remove()
            self._enforcer = None

    # -- reports ---------------------------------------------------------------------------
    @torch.no_grad()
    def preview(self) -> list[LayerSparsity]:
        """What :meth:`hard_prune` would keep per layer now, without pruning anything."""
        masks = self._project([p.detach() for p in self.params])
        return sparsity_report(self.names, masks, self._out_axes())

    def sparsity(self) -> list[LayerSparsity]:
        return sparsity_report(self.names, [p.detach() for p in self.params], self._out_axes())

    def _out_axes(self) -> list[int]:
        """Each pruned tensor's output axis (1 for a weight stored [in, out])."""
        return [1 if t else 0 for t in self.transposed]

    def summary(self) -> dict:
        return global_sparsity(self.sparsity())

    # -- persistence -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "names": list(self.names),
            "all_percent": self.all_percent,
            "rho": self.rho,
            "iteration": self.iteration,
            "history": list(self.history),
            "z": [z.clone() for z in self.z],
            "u": [u.clone() for u in self.u],
            "masks": None if self.masks is None else [m.clone() for m in self.masks],
            "pruned": self.pruned,
            "structure": self.structure,
        }

    def load_state_dict(self, state: dict) -> None:
        if list(state["names"]) != self.names:
            raise PrunerError(
                "pruner state was saved for other prunable tensors: saved "
                f"{state['names']}, this model has {self.names}"
            )
        shapes = [tuple(p.shape) for p in self.params]
        saved = [tuple(z.shape) for z in state["z"]]
        if saved != shapes:
            raise PrunerError(
                f"pruner state was saved for tensors of other shapes: saved {saved}, "
                f"this model has {shapes}"
            )
        device = self.params[0].device
        rho = state["rho"]
        if not (is_number(rho) and 0 < rho < math.inf):
            raise PrunerError(f"pruner state holds rho={rho!r}; it must be a positive number")
        # states saved before structures existed are unstructured
        saved_structure = state.get("structure", "unstructured")
        if saved_structure != self.structure:
            raise PrunerError(f"pruner state was saved with structure {saved_structure!r}, "
                              f"this pruner uses {self.structure!r}")
        masks = None if state["masks"] is None else [m.to(device) for m in state["masks"]]
        # built first: if the masks cannot be enforced, nothing has changed yet
        enforcer = None if masks is None else self._new_enforcer(masks)
        self.remove_hooks()
        self.masks = None
        self.set_target(state["all_percent"])
        self.rho = float(rho)
        self.iteration = int(state["iteration"])
        self.history = list(state["history"])
        # copies: admm_step updates Z and U in place, never the caller's tensors
        self.z = [z.to(device, copy=True) for z in state["z"]]
        self.u = [u.to(device, copy=True) for u in state["u"]]
        self._anchor_for = None
        if enforcer is not None:
            self.masks = enforcer.masks[:len(self.params)]
            self._enforcer = enforcer
        self.pruned = bool(state["pruned"])

    # -- internals -------------------------------------------------------------------------
    def _anchors(self, into: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """A = Z − U, the point the penalty pulls W towards, cached until Z or U change.

        The cache is keyed on the identity and version counter of every Z and U tensor,
        so replacing them or editing them in place refreshes it. ``into``: buffers to
        reuse.
        """
        key = [(z, z._version, u, u._version) for z, u in zip(self.z, self.u, strict=True)]
        cached = self._anchor_for
        if cached is not None and len(cached[0]) == len(key) and all(
                a[0] is b[0] and a[1] == b[1] and a[2] is b[2] and a[3] == b[3]
                for a, b in zip(cached[0], key, strict=True)):
            return cached[1]
        if into is None and cached is not None:
            into = cached[1]
        if into is not None and [a.shape for a in into] != [z.shape for z in self.z]:
            into = None
        with torch.no_grad():
            if into is None:
                anchors = [z - u for z, u in zip(self.z, self.u, strict=True)]
            else:
                anchors = [torch.sub(z, u, out=a) for z, u, a in zip(self.z, self.u, into,
                                                                    strict=True)]
        key = [(z, z._version, u, u._version) for z, u in zip(self.z, self.u, strict=True)]
        self._anchor_for = (key, anchors)
        return anchors

    def _project(self, values: Sequence[torch.Tensor], raw_scores: bool = False
                 ) -> list[torch.Tensor]:
        """Masks of the projection of ``values`` onto the current sparsity set."""
        # Removed entries may never come back: the projection scores them below all others.
        allowed = self.masks if self.masks is not None and not self.allow_regrowth else None
        percents = None
        if self.projection == "layerwise":
            percents = self.layer_percents if self.layer_percents is not None else \
                self.all_percent
        if self._norms is not None:
            # the folded score: magnitudes times the norms' current scales
            from .channels.norms import folded_magnitudes, scale_factors

            values = folded_magnitudes(values, scale_factors(self.model, self._norms))
            raw_scores = True
        elif self._read_inputs is not None:
            # the share and obd scores: read from the model as it is now
            values = _model_read_scores(self.score, self.model, self.names, self._read_inputs,
                                        values)
            raw_scores = True
        options = replace(self.options, raw_scores=raw_scores)
        if self._unit_reader is not None:
            options = replace(options, unit_scores=_read_unit_scores(
                self._unit_reader, self.options.units, values))
        if self.structure != "nm" or not any(self.transposed):
            return _checked(STRUCTURES[self.structure], values, self.keep, percents, allowed,
                            options)
        # N:M runs along the input dimension, dim 0 of a weight stored [in, out]: project the
        # transposed views and transpose the masks back
        flip = self.transposed
        values = [v.t() if t else v for v, t in zip(values, flip, strict=True)]
        if allowed is not None:
            allowed = [a.t() if t else a for a, t in zip(allowed, flip, strict=True)]
        masks = _checked(STRUCTURES[self.structure], values, self.keep, percents, allowed,
                         options)
        return [m.t().contiguous() if t else m for m, t in zip(masks, flip, strict=True)]

    def _nm_keep(self, all_percent: float) -> int:
        """The survivors N:M implies; ``all_percent`` must agree with them."""
        n, m = self.options.nm_n, self.options.nm_m
        shapes = [tuple(p.shape)[::-1] if t else tuple(p.shape)
                  for p, t in zip(self.params, self.transposed, strict=True)]
        implied = _checked(nm_removed_percent, shapes, n, m)
        if abs(float(all_percent) - implied) > NM_PERCENT_TOLERANCE:
            # a group cut short at the end of a row keeps more than N of M: name where
            odd = [f"{name} ({s[1]})" for name, s in zip(self.names, shapes, strict=True)
                   if s[1] % m]
            why = (f" (inputs not a multiple of {m}: {', '.join(odd[:3])}"
                   f"{' ...' if len(odd) > 3 else ''})") if odd else ""
            raise PrunerError(f"structure nm {n}:{m} removes {implied:.4g}% of these "
                              f"weights{why}; set all_percent to {implied:.4g} (got "
                              f"{all_percent})")
        return sum(nm_survivors(s, n, m) for s in shapes)

    def _install(self, masks: Sequence[torch.Tensor]) -> None:
        """Enforce ``masks`` from now on. The new enforcer installs completely or not at all;
        only then is the old one dropped, so an error leaves the previous state intact."""
        enforcer = self._new_enforcer(masks)
        if self._enforcer is not None:
            self._enforcer.remove()
        self.masks = enforcer.masks[:len(self.params)]
        self._enforcer = enforcer

    def _new_enforcer(self, masks: Sequence[torch.Tensor]) -> MaskEnforcer:
        """Enforcer of the weight masks, plus, for filters, the biases of removed filters."""
        params, all_masks = list(self.params), list(masks)
        for index, bias in self._biases:
            params.append(bias)
            all_masks.append(masks[index].reshape(masks[index].shape[0], -1).any(1)
                             .to(bias.device))
        return MaskEnforcer(params, all_masks)


def _unit_families(model: nn.Module, names: list[str]) -> tuple:
    """The MLP-neuron and attention-group families of a transformer's blocks (structure
    ``units``); every pruned tensor must belong to one."""
    from .posttraining.errors import OneShotError  # BlockError is one too
    from .posttraining.units import unit_families

    try:
        families = unit_families(model, names)
    except OneShotError as err:
        raise PrunerError(f"structure 'units': {err}") from None
    covered = {names[t] for f in families for t, _, _ in f.members}
    outside = [n for n in names if n not in covered]
    if outside:
        raise PrunerError(f"structure 'units' prunes whole MLP neurons and attention groups of "
                          f"the transformer blocks; {', '.join(outside[:3])}"
                          f"{' ...' if len(outside) > 3 else ''} belong to none: exclude them "
                          f"(e.g. exclude: [{outside[0].rpartition('.')[0]!r}])")
    return families


def _norm_neighbours(model: nn.Module, names: Sequence[str], example_inputs):
    """The norms next to each pruned weight, for the folded score (traced once)."""
    if example_inputs is None:
        raise PrunerError("score 'folded' finds the BatchNorm/normalization next to each "
                          "layer by tracing one forward pass: pass example_inputs (a batch "
                          "the model accepts)")
    from .channels.norms import NormTraceError, find_norm_neighbours

    try:
        return find_norm_neighbours(model, names, example_inputs)
    except NormTraceError as err:
        raise PrunerError(str(err)) from None


def _model_read_scores(score: str, model: nn.Module, names: Sequence[str], example_inputs,
                       values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The ``share`` or ``obd`` score of ``values``, from the model's activations (share) or
    output gradients (obd) on ``example_inputs``."""
    if example_inputs is None:
        raise PrunerError(f"score {score!r} reads the model on a batch (its activations or "
                          "its output gradients): pass example_inputs (a batch the model "
                          "accepts)")
    from .channels.curvature import CurvatureError, obd_saliency, output_curvature
    from .channels.shares import ShareTraceError, share_factors, share_magnitudes

    try:
        if score == SHARE_SCORE:
            return share_magnitudes(values, share_factors(model, names, example_inputs))
        return obd_saliency(values, output_curvature(model, names, example_inputs))
    except (ShareTraceError, CurvatureError) as err:
        raise PrunerError(str(err)) from None


def _read_unit_scores(reader: tuple, families: Sequence, values: Sequence[torch.Tensor]
                      ) -> tuple[torch.Tensor, ...]:
    """The ``output`` score of every unit of ``values``, its inputs read from the model now."""
    model, projections, indices, example_inputs = reader
    try:
        inputs = read_unit_inputs(model, projections, indices, example_inputs)
    except Exception as err:  # noqa: BLE001 - any failure of the user's forward pass
        raise PrunerError(f"group_score 'output' reads each unit's inputs on one forward pass "
                          f"over example_inputs, and it failed: {type(err).__name__}: "
                          f"{err}") from None
    return output_unit_scores(values, families, inputs)


def _floors(params: Sequence[torch.Tensor], min_layer_percent: float | None, structure: str,
            projection: str, live_weights: bool) -> tuple[int, ...]:
    """The fewest weights each tensor keeps under ``min_layer_percent`` (() for none)."""
    if min_layer_percent is None:
        return ()
    if not (is_number(min_layer_percent) and 0 < min_layer_percent < 100):
        raise PrunerError(f"min_layer_percent is the share of each layer's weights kept at "
                          f"least, in (0, 100); got {min_layer_percent!r}")
    if structure != "unstructured" or projection != "global" or live_weights:
        raise PrunerError("min_layer_percent floors the global unstructured ranking "
                          "(projection 'global', structure 'unstructured', live_weights "
                          "off); the other projections set every layer's share themselves")
    return tuple(max(1, math.ceil(p.numel() * min_layer_percent / 100)) for p in params)


def _own_biases(model: nn.Module, names: Sequence[str], params: Sequence[torch.Tensor]
                ) -> list[tuple[int, nn.Parameter]]:
    """(index of the weight, bias) for every pruned Conv/Linear ``weight`` whose module has a
    bias with one entry per output filter (transposed convolutions have none: their dim 0
    is the input)."""
    found = []
    for index, (name, weight) in enumerate(zip(names, params, strict=True)):
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        bias = getattr(module, "bias", None)
        if (attr == "weight" and isinstance(module, PRUNABLE_TYPES)
                and not getattr(module, "transposed", False)
                and isinstance(bias, nn.Parameter) and bias.shape == weight.shape[:1]):
            found.append((index, bias))
    return found


def _transposed_weights(model: nn.Module, names: Sequence[str]) -> list[bool]:
    """For every pruned tensor: is it the ``weight`` of a Linear stored [in, out]?"""
    out = []
    for name in names:
        module_name, _, attr = name.rpartition(".")
        out.append(attr == "weight" and is_transposed_linear(model.get_submodule(module_name)))
    return out


def _checked(fn, *args):
    """Call a projection function, turning its errors into ``PrunerError``."""
    try:
        return fn(*args)
    except ProjectionError as err:
        raise PrunerError(str(err)) from None

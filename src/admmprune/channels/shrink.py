"""Physical removal of pruned filters and channels: a structurally pruned model becomes a
smaller dense one with the same outputs.

After a hard prune with ``structure: filter`` whole output filters (dim 0 of a Conv/Linear
weight) are zero; with ``structure: channel`` whole input channels (dim 1). :func:`shrink`
removes such channels and everything coupled to them. Which tensors are coupled (BatchNorm
after a convolution, the inputs of every consumer, the partners of a residual addition, the
slices of a concatenation, the features a flatten feeds into a Linear, grouped and depthwise
convolutions) comes from torch-pruning's ``DependencyGraph``; the slicing is done here,
because torch-pruning's grouped-convolution rule assumes every group loses the same
positions.

A coupled set of channels (one "closure": each channel is one index in every member) is
removed when either
  * every Conv/Linear that writes it has the filter zero (dead by producers): the channel
    then carries only constants (the filters' biases, BatchNorm's shift), which are set to
    zero first and listed in the report as dropped constants (the pruner zeroes the biases
    of removed filters itself, so for its models nothing is dropped), or
  * every Conv/Linear that reads it has the input channel zero (dead by consumers): nobody
    uses the channel, whatever it holds,
and it reaches neither the network's output nor its input, and passes through no module
that mixes channels (LayerNorm, GroupNorm, LocalResponseNorm, ...). Every layer keeps at
least one channel; a grouped convolution keeps the same number of channels in every group
(or drops whole groups). Channels kept for one of these reasons are counted in the report.

The shrunk model is checked against the masked one (with the dropped constants zeroed) on
the example input; a difference beyond float rounding raises :class:`ShrinkError` rather
than returning a wrong model.

File format (:func:`save_shrunk`, :func:`load_shrunk`): one safetensors file holding the
shrunk state dict; its metadata (string to string) holds ``admmprune_shrunk``, a JSON object
{"model": registered name or import spec, "args": factory keyword arguments, "modules":
{module name: {"type", "in_channels", "out_channels", "groups" | "in_features",
"out_features" | "num_features"}}}. Loading builds the recorded model (a spec only from a
module the caller allows), resizes those modules and loads the tensors; nothing is
unpickled.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..jsonfile import dumps, loads
from .graph import as_args, build_graph, output_tensors

__all__ = [
    "ShrinkError",
    "ShrinkReport",
    "LayerShape",
    "DroppedConstant",
    "shrink",
    "shrink_model",
    "count_macs",
    "max_abs_difference",
    "save_shrunk",
    "load_shrunk",
    "format_shrink_report",
]

STRUCTURE_HINT = ("prune with whole filters or channels: `structure: filter` or "
                  "`structure: channel` in the recipe")
_CONV = nn.modules.conv._ConvNd
METADATA_KEY = "admmprune_shrunk"


class ShrinkError(ValueError):
    """The model or its masks cannot be shrunk (unstructured masks, a bad argument, a file
    that is not a shrunk model)."""


@dataclass
class LayerShape:
    """One Conv/Linear/BatchNorm module before and after shrinking."""

    name: str
    kind: str
    before: tuple[int, ...]
    after: tuple[int, ...]
    params_before: int
    params_after: int
    macs_before: int = 0
    macs_after: int = 0


@dataclass
class DroppedConstant:
    """A non-zero constant a removed channel carried (set to zero before removal)."""

    module: str
    parameter: str
    index: int
    value: float


@dataclass
class ShrinkReport:
    model: nn.Module = field(repr=False)
    layers: list[LayerShape]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    dropped: list[DroppedConstant]
    kept: dict[str, int]  # reason -> channels with a zero filter/input kept for it
    removed: int  # channel closures removed
    max_abs_diff: float  # shrunk vs masked model on the example input
    architecture: dict[str, dict[str, Any]]

    @property
    def param_ratio(self) -> float:
        return self.params_before / max(1, self.params_after)

    @property
    def mac_ratio(self) -> float:
        return self.macs_before / max(1, self.macs_after)


# -- measuring --------------------------------------------------------------------------------

@torch.no_grad()
def count_macs(model: nn.Module, example_inputs) -> dict[str, int]:
    """Multiply-accumulates of every Conv/Linear module for one forward pass of
    ``example_inputs`` (the whole batch), by module name (a module called twice counts
    twice)."""
    macs: dict[str, int] = {}
    hooks = []

    def hook(name):
        def record(module, inputs, output):
            if isinstance(module, _CONV):
                per_output = module.weight[0].numel()  # in_channels/groups x kernel
            else:
                per_output = module.in_features
            macs[name] = macs.get(name, 0) + output.numel() * per_output
        return record

    for name, module in model.named_modules():
        if isinstance(module, (_CONV, nn.Linear)):
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        was_training = model.training
        model.eval()
        model(*as_args(example_inputs))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return macs


def _shape(module: nn.Module) -> tuple[int, ...]:
    if isinstance(module, _BatchNorm):
        return (module.num_features,)
    return tuple(module.weight.shape)


def _architecture(model: nn.Module) -> dict[str, dict[str, Any]]:
    arch = {}
    for name, m in model.named_modules():
        if isinstance(m, _CONV):
            arch[name] = {"type": type(m).__name__, "in_channels": m.in_channels,
                          "out_channels": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            arch[name] = {"type": "Linear", "in_features": m.in_features,
                          "out_features": m.out_features}
        elif isinstance(m, _BatchNorm):
            arch[name] = {"type": type(m).__name__, "num_features": m.num_features}
    return arch


# -- reading the zero pattern -----------------------------------------------------------------

def _apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    for key, mask in masks.items():
        name = key if key in params else f"{key}.weight" \
            if key in modules and f"{key}.weight" in params else None
        if name is None:
            raise ShrinkError(f"mask {key!r} names no parameter or module of the model "
                              "(use parameter names such as 'conv1.weight')")
        p = params[name]
        mask = torch.as_tensor(mask)
        if tuple(mask.shape) != tuple(p.shape):
            raise ShrinkError(f"mask {key!r} has shape {tuple(mask.shape)}, but {name} has "
                              f"{tuple(p.shape)}")
        with torch.no_grad():
            p.mul_(mask.to(p.device, torch.bool).to(p.dtype))


def _zero_rows(module: nn.Module) -> torch.Tensor:
    """Bool per output filter: entirely zero."""
    return ~(module.weight.detach().reshape(module.weight.shape[0], -1) != 0).any(1)


def _zero_inputs(module: nn.Module) -> torch.Tensor:
    """Bool per input channel (full index, groups laid end to end): entirely zero."""
    w = module.weight.detach()
    if isinstance(module, nn.Linear):
        return ~(w != 0).any(0)
    groups = module.groups
    out_g, in_g = w.shape[0] // groups, w.shape[1]
    used = (w != 0).reshape(groups, out_g, in_g, -1).any(3).any(1)  # (groups, in_g)
    return ~used.reshape(-1)


def _check_structured(model: nn.Module) -> None:
    zeros, whole = 0, 0
    for m in model.modules():
        if isinstance(m, (_CONV, nn.Linear)):
            zeros += int((m.weight.detach() == 0).sum())
            whole += int(_zero_rows(m).sum()) + int(_zero_inputs(m).sum())
    if zeros == 0:
        raise ShrinkError(f"no Conv/Linear weight is zero: nothing to remove; {STRUCTURE_HINT}")
    if whole == 0:
        raise ShrinkError(f"the masks are unstructured: {zeros:,} weights are zero but no "
                          f"whole filter or input channel is, so nothing can be removed; "
                          f"{STRUCTURE_HINT}")


@dataclass
class _Closure:
    """One set of coupled channels: (module, direction, index) members."""

    members: list[tuple[nn.Module, str, int]]
    blocked: str | None = None
    dead_producers: bool = False
    dead_consumers: bool = False
    zero_somewhere: bool = False

    @property
    def removable(self) -> bool:
        return self.blocked is None and (self.dead_producers or self.dead_consumers)


def _in_range(module: nn.Module, out: bool, idx: int) -> bool:
    """A guard against a wrong index mapping (never removes a channel that isn't there)."""
    if isinstance(module, (_CONV, nn.Linear)):
        ins = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        return 0 <= idx < min(_shape(module)[0], ins) if isinstance(module, _CONV) and \
            module.groups == module.in_channels == module.out_channels else \
            0 <= idx < (_shape(module)[0] if out else ins)
    if isinstance(module, _BatchNorm):
        return 0 <= idx < module.num_features
    return True


def _closures(model: nn.Module, graph, blocked_nodes) -> list[_Closure]:
    import torch_pruning as tp

    internal = "torch_pruning"
    by_key: dict[frozenset, _Closure] = {}
    roots = [m for m in graph.module2node if isinstance(m, (_CONV, nn.Linear))]
    zero_rows = {m: _zero_rows(m) for m in roots}
    zero_inputs = {m: _zero_inputs(m) for m in roots}
    for root in roots:
        pruner = graph.get_pruner_of_module(root)
        group = graph.get_pruning_group(root, pruner.prune_out_channels,
                                        list(range(_shape(root)[0])))
        per_root: dict[int, list] = {}
        for item in group:
            dep, idxs, root_idxs = item.dep, item.idxs, item.root_idxs
            node = dep.target
            out = graph.is_out_channel_pruning_fn(dep.handler)
            for idx, r in zip(idxs, root_idxs, strict=True):
                per_root.setdefault(int(r), []).append((node, out, int(idx)))
        for entries in per_root.values():
            key = frozenset((id(n), o, i) for n, o, i in entries)
            if key in by_key:
                continue
            closure = _Closure(members=[])
            producers, consumers = [], []
            for node, out, idx in entries:
                module = node.module
                if not _in_range(module, out, idx):
                    closure.blocked = "an index mapping torch-pruning got wrong"
                    break
                if node in blocked_nodes:
                    closure.blocked = blocked_nodes[node]
                if isinstance(module, _CONV) and module.transposed:
                    closure.blocked = "transposed convolution (not supported)"
                elif isinstance(module, (_CONV, nn.Linear)):
                    # a depthwise convolution passes each channel through (it couples its
                    # input and output channel): neither a producer nor a consumer here,
                    # its bias is a constant like BatchNorm's shift
                    depthwise = isinstance(module, _CONV) and module.groups > 1 and \
                        module.groups == module.in_channels == module.out_channels
                    if out or depthwise:
                        if not depthwise:
                            producers.append(bool(zero_rows[module][idx]))
                        closure.members.append((module, "out", idx))
                        if not node.outputs:
                            closure.blocked = "network output"
                    if not out or depthwise:
                        if not depthwise:
                            consumers.append(bool(zero_inputs[module][idx]))
                        closure.members.append((module, "in", idx))
                        if not node.inputs:
                            closure.blocked = "network input"
                elif isinstance(module, _BatchNorm):
                    closure.members.append((module, "out", idx))
                    if not node.outputs:
                        closure.blocked = "network output"
                elif type(module).__module__.startswith(internal):
                    if not node.outputs or isinstance(module, tp.ops._OutputOp):
                        closure.blocked = "network output"
                else:
                    closure.blocked = f"passes through {type(module).__name__}"
            closure.dead_producers = bool(producers) and all(producers)
            closure.dead_consumers = bool(consumers) and all(consumers)
            closure.zero_somewhere = any(producers) or any(consumers)
            by_key[key] = closure
    return list(by_key.values())


# -- feasibility: at least one channel per layer, balanced groups -----------------------------

def _removals(closures) -> dict[tuple[nn.Module, str], dict[int, _Closure]]:
    out: dict[tuple[nn.Module, str], dict[int, _Closure]] = {}
    for c in closures:
        for module, direction, idx in c.members:
            out.setdefault((module, direction), {})[idx] = c
    return out


def _restore(chosen: set, closure: _Closure, reason: str, kept: dict[str, int]) -> None:
    if id(closure) in chosen:
        chosen.discard(id(closure))
        kept[reason] = kept.get(reason, 0) + 1


def _settle(closures: list[_Closure], kept: dict[str, int]) -> list[_Closure]:
    """The removable closures minus those restored so every layer keeps a channel and a
    grouped convolution stays balanced; repeats until nothing changes."""
    chosen = {id(c) for c in closures if c.removable}
    while True:
        before = set(chosen)
        current = [c for c in closures if id(c) in chosen]
        for (module, direction), removed in _removals(current).items():
            total = _shape(module)[0] if direction == "out" else (
                module.in_features if isinstance(module, nn.Linear) else
                module.in_channels if isinstance(module, _CONV) else module.num_features)
            if len(removed) >= total:  # keep the first channel
                _restore(chosen, removed[min(removed)], "every layer keeps a channel", kept)
        current = [c for c in closures if id(c) in chosen]
        removals = _removals(current)
        for module in {m for (m, _) in removals}:
            if not isinstance(module, _CONV) or module.groups == 1:
                continue
            g = module.groups
            sides = {}
            for direction, total in (("in", module.in_channels), ("out", module.out_channels)):
                removed = removals.get((module, direction), {})
                per = total // g
                sides[direction] = (per, removed,
                                    [per - sum(1 for i in removed if i // per == j)
                                     for j in range(g)])
            alive = [j for j in range(g) if sides["in"][2][j] or sides["out"][2][j]] or [0]
            for direction in ("in", "out"):
                per, removed, left = sides[direction]
                target = max([1] + [left[j] for j in alive])
                for j in alive:
                    missing = target - left[j]
                    for i in sorted(i for i in removed if i // per == j)[:max(0, missing)]:
                        _restore(chosen, removed[i], "grouped convolution keeps equal "
                                 "groups", kept)
        if chosen == before:
            return [c for c in closures if id(c) in chosen]


# -- slicing ----------------------------------------------------------------------------------

def _param(t: torch.Tensor, requires_grad: bool) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=requires_grad)


def _slice_conv(m: nn.Module, drop_in: set[int], drop_out: set[int]) -> None:
    g = m.groups
    in_g, out_g = m.in_channels // g, m.out_channels // g
    keep_groups, rows, cols = [], [], []
    for j in range(g):
        ins = [i for i in range(j * in_g, (j + 1) * in_g) if i not in drop_in]
        outs = [o for o in range(j * out_g, (j + 1) * out_g) if o not in drop_out]
        if not ins and not outs:
            continue  # the whole group goes
        keep_groups.append((ins, outs))
    n_in, n_out = len(keep_groups[0][0]), len(keep_groups[0][1])
    if any(len(i) != n_in or len(o) != n_out for i, o in keep_groups) or not n_in or not n_out:
        raise ShrinkError("internal error: unbalanced grouped convolution; please report it")
    w = m.weight.detach()
    for ins, outs in keep_groups:
        rows += outs
        cols.append(torch.tensor([i % in_g for i in ins]))
    rows_t = torch.tensor(rows)
    # each kept output row takes the kept input positions of its own group
    col_idx = torch.stack([cols[k] for k, (_, outs) in enumerate(keep_groups) for _ in outs])
    picked = w[rows_t]
    picked = torch.stack([picked[r, col_idx[r].to(w.device)] for r in range(len(rows))])
    m.weight = _param(picked, m.weight.requires_grad)
    if m.bias is not None:
        m.bias = _param(m.bias.detach()[rows_t.to(w.device)], m.bias.requires_grad)
    m.groups = len(keep_groups)
    m.in_channels = n_in * m.groups
    m.out_channels = n_out * m.groups


def _keep(total: int, drop: set[int], device) -> torch.Tensor:
    return torch.tensor([i for i in range(total) if i not in drop], device=device,
                        dtype=torch.long)


def _slice_linear(m: nn.Linear, drop_in: set[int], drop_out: set[int]) -> None:
    w = m.weight.detach()
    rows = _keep(m.out_features, drop_out, w.device)
    cols = _keep(m.in_features, drop_in, w.device)
    m.weight = _param(w[rows][:, cols], m.weight.requires_grad)
    if m.bias is not None:
        m.bias = _param(m.bias.detach()[rows], m.bias.requires_grad)
    m.in_features, m.out_features = len(cols), len(rows)


def _slice_bn(m: _BatchNorm, drop: set[int]) -> None:
    device = next(iter(m.state_dict().values())).device
    keep = _keep(m.num_features, drop, device)
    for name in ("weight", "bias"):
        p = getattr(m, name)
        if p is not None:
            setattr(m, name, _param(p.detach()[keep], p.requires_grad))
    for name in ("running_mean", "running_var"):
        b = getattr(m, name)
        if b is not None:
            setattr(m, name, b[keep].clone())
    m.num_features = len(keep)


# -- the entry points -------------------------------------------------------------------------

def _drop_constants(closures, names: dict[nn.Module, str]) -> list[DroppedConstant]:
    """Zero the constants carried by channels that are removed because their producers are
    zero (and that someone still reads); returns the non-zero ones."""
    dropped = []
    with torch.no_grad():
        for c in closures:
            if c.dead_consumers:
                continue  # nobody reads the channel
            for module, direction, idx in c.members:
                if direction != "out":
                    continue
                if isinstance(module, _BatchNorm):
                    shift, scale = _bn_shift(module, idx)
                    if abs(shift) > 1e-6 * scale:  # beyond the rounding of beta - mean·γ/σ
                        dropped.append(DroppedConstant(names[module], "bias", idx, shift))
                    if module.weight is not None:
                        module.weight[idx] = 0
                        module.bias[idx] = 0
                    else:  # no affine part: a zero input gives (0 - mean)/sqrt(var + eps)
                        module.running_mean[idx] = 0
                elif module.bias is not None and float(module.bias[idx]) != 0.0:
                    dropped.append(DroppedConstant(names[module], "bias", idx,
                                                   float(module.bias[idx])))
                    module.bias[idx] = 0
    return dropped


def _bn_shift(m: _BatchNorm, idx: int) -> tuple[float, float]:
    """BatchNorm's output for a zero input channel (eval mode), and the size of its terms."""
    beta = float(m.bias[idx]) if m.bias is not None else 0.0
    if m.running_mean is None:
        return beta, abs(beta)
    gamma = float(m.weight[idx]) if m.weight is not None else 1.0
    mean, var = float(m.running_mean[idx]), float(m.running_var[idx])
    centred = mean * gamma / (var + m.eps) ** 0.5
    return beta - centred, max(abs(beta), abs(centred))


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shrink(model: nn.Module, masks: Mapping[str, torch.Tensor] | None,
           example_inputs: torch.Tensor | tuple, *, atol: float = 1e-4) -> ShrinkReport:
    """Remove the zero filters/channels of ``model`` (a copy: ``model`` is left alone);
    returns the report, whose ``model`` is the shrunk module (eval mode).

    ``masks``: {parameter name (``conv1.weight``) or module name: 0/1 or bool tensor} applied
    to the copy's weights first (e.g. ``dict(zip(pruner.names, pruner.masks))``); None reads
    the zeros from the weights. ``example_inputs``: a batch (tensor, or tuple of the forward's
    arguments) to trace the model, count multiply-accumulates and check the result. Raises
    :class:`ShrinkError` for unstructured masks, and when the shrunk model's output differs
    from the masked model's (dropped constants zeroed in both) by more than ``atol`` times
    max(1, output magnitude).
    """
    if not isinstance(model, nn.Module):
        raise ShrinkError(f"shrink needs an nn.Module, got {type(model).__name__}")
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        raise ShrinkError("shrinking needs torch-pruning (a dependency of admmprune): "
                          "pip install torch-pruning") from None
    work = copy.deepcopy(model).eval()
    if masks is not None:
        _apply_masks(work, masks)
    _check_structured(work)
    args = as_args(example_inputs)
    with torch.no_grad():
        masked_out = [t.detach().clone() for t in output_tensors(work(*args))]
    before_shapes = {n: (type(m).__name__, _shape(m), sum(p.numel() for p in m.parameters()))
                     for n, m in work.named_modules()
                     if isinstance(m, (_CONV, nn.Linear, _BatchNorm))}
    macs_before = count_macs(work, args)
    params_before = _param_count(work)

    graph, blocked_nodes = build_graph(work, args)
    closures = _closures(work, graph, blocked_nodes)
    kept: dict[str, int] = {}
    covered = {(m, i) for c in closures for m, d, i in c.members if d == "in"}
    for m in work.modules():
        if isinstance(m, (_CONV, nn.Linear)):
            n = sum(1 for i in torch.nonzero(_zero_inputs(m)).flatten().tolist()
                    if (m, i) not in covered)
            if n:  # no Conv/Linear writes them: the model's input, or a mixing module's
                reason = "read from the model input or a channel-mixing module"
                kept[reason] = kept.get(reason, 0) + n
    for c in closures:
        if c.zero_somewhere and not c.removable:
            reason = c.blocked or "zero in some coupled layers only (another uses it)"
            kept[reason] = kept.get(reason, 0) + 1
    chosen = _settle(closures, kept)
    names = {m: n for n, m in work.named_modules()}
    dropped = _drop_constants(chosen, names)
    with torch.no_grad():
        reference = [t.detach().clone() for t in output_tensors(work(*args))] if dropped \
            else masked_out

    plan: dict[nn.Module, dict[str, set[int]]] = {}
    for (module, direction), removed in _removals(chosen).items():
        plan.setdefault(module, {"in": set(), "out": set()})[direction] = set(removed)
    for module, drop in plan.items():
        if isinstance(module, _CONV):
            _slice_conv(module, drop["in"], drop["out"])
        elif isinstance(module, nn.Linear):
            _slice_linear(module, drop["in"], drop["out"])
        else:
            _slice_bn(module, drop["out"])

    try:
        with torch.no_grad():
            shrunk_out = output_tensors(work(*args))
    except Exception as err:  # noqa: BLE001 - any failure means the graph was misread
        raise ShrinkError(f"the shrunk model fails on the example input ({err}); some "
                          "operation couples channels in a way torch-pruning does not "
                          "see") from None
    diff = max_abs_difference(shrunk_out, reference)
    scale = max([1.0] + [float(t.abs().max()) for t in reference if t.numel()])
    if diff > atol * scale:
        raise ShrinkError(f"the shrunk model's output differs from the masked model's by "
                          f"{diff:.3g}: some operation mixes channels in a way torch-pruning "
                          "does not see (e.g. a functional normalisation over channels)")
    macs_after = count_macs(work, args)
    layers = []
    for n, m in work.named_modules():
        if n in before_shapes:
            kind, shape, params = before_shapes[n]
            layers.append(LayerShape(n, kind, shape, _shape(m), params,
                                     sum(p.numel() for p in m.parameters()),
                                     macs_before.get(n, 0), macs_after.get(n, 0)))
    return ShrinkReport(model=work, layers=layers, params_before=params_before,
                        params_after=_param_count(work),
                        macs_before=sum(macs_before.values()),
                        macs_after=sum(macs_after.values()), dropped=dropped, kept=kept,
                        removed=len(chosen),
                        max_abs_diff=max_abs_difference(shrunk_out, masked_out),
                        architecture=_architecture(work))


def max_abs_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The largest |a - b| over two models' outputs (lists of tensors of equal shapes)."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        raise ShrinkError("the shrunk model's outputs have other shapes than the masked "
                          "model's; please report it")
    return max([0.0] + [float((x - y).abs().max()) for x, y in zip(a, b, strict=True)
                        if x.numel()])


def shrink_model(model: nn.Module, masks: Mapping[str, torch.Tensor] | None,
                 example_inputs: torch.Tensor | tuple) -> nn.Module:
    """Only the shrunk module of :func:`shrink`."""
    return shrink(model, masks, example_inputs).model


# -- files ------------------------------------------------------------------------------------

def save_shrunk(model: nn.Module, path: str | Path, *, model_name: str,
                model_args: Mapping[str, Any] | None = None) -> Path:
    """Write a shrunk model of ``model_name`` (a registered model or an import spec, built
    with ``model_args``) as safetensors with its new module shapes in the metadata (see the
    module docstring)."""
    from safetensors.torch import save_file

    from ..export.files import replacing
    from ..imports import is_spec
    from ..models import list_models

    if not is_spec(model_name) and model_name not in list_models():
        raise ShrinkError(f"{model_name!r} is not a registered model nor an import spec "
                          "(\"module:factory\"); load_shrunk rebuilds the factory (see "
                          "`admmprune models`)")
    record = {"model": model_name, "args": dict(model_args or {}),
              "modules": _architecture(model)}
    # clones: safetensors refuses tensors that share storage (tied weights)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    with replacing(path) as tmp:  # save_file's own temporary file would leave mode 0600
        save_file(state, str(tmp), metadata={"format": "pt", METADATA_KEY: dumps(record)})
    return path


def _resize(module: nn.Module, spec: Mapping[str, Any], state: Mapping[str, torch.Tensor],
            prefix: str) -> None:
    if not isinstance(spec, Mapping):
        raise ShrinkError(f"module {prefix.rstrip('.')}: its record is a "
                          f"{type(spec).__name__}, not an object")
    if spec.get("type") != type(module).__name__:
        raise ShrinkError(f"module {prefix.rstrip('.')} is a {type(module).__name__} in the "
                          f"model but a {str(spec.get('type'))[:40]} in the file")
    for attr in ("in_channels", "out_channels", "groups", "in_features", "out_features",
                 "num_features"):
        if attr in spec:
            value = spec[attr]
            # a shrunk module is never larger than the one the registered model builds
            if isinstance(value, bool) or not isinstance(value, int) \
                    or not 0 <= value <= getattr(module, attr, 0):
                raise ShrinkError(f"module {prefix.rstrip('.')}: {attr} {str(value)[:40]} is "
                                  f"not a count in 0..{getattr(module, attr, 0)}")
            setattr(module, attr, value)
    for kind in ("_parameters", "_buffers"):
        for name, value in list(getattr(module, kind).items()):
            key = prefix + name
            if value is None or key not in state:
                continue
            if state[key].numel() > value.numel():
                raise ShrinkError(f"{key} holds {list(state[key].shape)} in the file, larger "
                                  f"than the unshrunk {list(value.shape)}")
            new = value.new_empty(state[key].shape)
            if kind == "_parameters":
                new = nn.Parameter(new, requires_grad=value.requires_grad)
            getattr(module, kind)[name] = new


def load_shrunk(path: str | Path, *, max_params: int | None = None,
                allow_modules: Collection[str] = ()) -> nn.Module:
    """The shrunk model written by :func:`save_shrunk` (eval mode): the recorded model is
    built, its recorded modules resized, the tensors loaded (safetensors, no pickle).

    Args:
        path: the file.
        max_params: the largest model to build from the file's record, in parameter and
            buffer elements (default :data:`admmprune.export.untrusted.DEFAULT_MAX_PARAMS`,
            2**28); raise it only for a trusted file.
        allow_modules: the modules whose factories a recorded import spec may build (as
            for :func:`admmprune.load`); nothing else is imported or called.

    Returns:
        The shrunk model, in eval mode.

    Raises:
        ShrinkError: the file is missing, not safetensors, holds no or damaged shrink
            metadata, records a model beyond ``max_params`` or an import spec of a module
            not in ``allow_modules``, or does not fit the model.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..export.untrusted import DEFAULT_MAX_PARAMS, build_recorded

    path = Path(path)
    if not path.is_file():
        raise ShrinkError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises several kinds
        raise ShrinkError(f"{path} is not a safetensors file: {err}") from None
    if METADATA_KEY not in meta:
        raise ShrinkError(f"{path} holds no shrunk architecture (write it with "
                          "admmprune.save_shrunk or `admmprune shrink`)")
    try:
        record = loads(meta[METADATA_KEY])
    except (ValueError, RecursionError) as err:
        raise ShrinkError(f"{path}: its {METADATA_KEY} metadata is not JSON ({err})") from None
    if not (isinstance(record, dict) and "model" in record
            and isinstance(record.get("modules"), dict)):
        raise ShrinkError(f"{path}: its {METADATA_KEY} metadata is not an object with "
                          "\"model\", \"args\" and \"modules\"; write it again with "
                          "`admmprune shrink`")
    try:
        model = build_recorded(record["model"], record.get("args"),
                               DEFAULT_MAX_PARAMS if max_params is None else max_params,
                               loader="admmprune.load_shrunk", allow_modules=allow_modules)
    except ValueError as err:
        raise ShrinkError(f"{path}: {err}") from None
    modules = dict(model.named_modules())
    for name, spec in record["modules"].items():
        if name not in modules:
            raise ShrinkError(f"{path} resizes module {name[:100]!r}, which model "
                              f"{record['model']!r} does not have")
        _resize(modules[name], spec, state, f"{name}." if name else "")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ShrinkError(f"{path} does not fit model {record['model']!r}: {err}") from None
    return model.eval()


# -- the table --------------------------------------------------------------------------------

def format_shrink_report(report: ShrinkReport) -> str:
    from ..tables import format_table

    def shape(s):
        return "x".join(str(d) for d in s)

    rows = []
    for layer in report.layers:
        rows.append((layer.name, layer.kind, shape(layer.before), shape(layer.after),
                     layer.params_before, layer.params_after,
                     layer.macs_before if layer.macs_before else "",
                     layer.macs_after if layer.macs_before else ""))
    rows.append(("total", "", "", "", report.params_before, report.params_after,
                 report.macs_before, report.macs_after))
    lines = [format_table(["layer", "type", "before", "after", "params before",
                           "params after", "MACs before", "MACs after"], rows)]
    lines.append(f"parameters {report.params_before:,} -> {report.params_after:,} "
                 f"({report.param_ratio:.2f}x fewer); MACs {report.macs_before:,} -> "
                 f"{report.macs_after:,} ({report.mac_ratio:.2f}x fewer); "
                 f"{report.removed} channel(s) removed")
    for reason, n in sorted(report.kept.items()):
        lines.append(f"kept {n} zero channel(s): {reason}")
    if report.dropped:
        lines.append(f"dropped {len(report.dropped)} non-zero constant(s) carried by removed "
                     "channels (the output changes): " + ", ".join(
                         f"{d.module}.{d.parameter}[{d.index}]={d.value:.3g}"
                         for d in report.dropped[:8]) + (" ..." if len(report.dropped) > 8
                                                         else ""))
    else:
        lines.append("no constant dropped: the shrunk model computes the masked model's "
                     "function")
    return "\n".join(lines)

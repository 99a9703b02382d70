"""Dead units: outputs of a Conv/Linear layer that no surviving weight reads.

After unstructured pruning at high ratios many units are dead: at 250x on LeNet-5, 346 of
fc1's 500 neurons have every outgoing weight in fc2 pruned. Their bias and their incoming
weights cannot change the network's output, yet a file stores them. ``drop_dead_units``
zeroes them (repeatedly: a unit read only by dead units is dead too), which keeps the
output of the network exactly and lets the compressed format skip them.

Which layer reads which channel, through activations, pooling, batch norm, flatten,
concatenation and residual additions, comes from Torch-Pruning's ``DependencyGraph``. A
unit is called dead only when every item of its dependency group is of a kind whose
channel mapping is understood here and at least one Conv/Linear reads it; anything else
(a model output, attention, normalisation over channels, custom ops) keeps it alive. The
result is then checked numerically: the model's output on the example input must not
change, or nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["LivenessError", "DeadUnitReport", "dead_units", "drop_dead_units"]

# Unary ops (autograd node names) through which a filter's channel passes alone
_UNARY = ("Relu", "Pool", "Gelu", "Silu", "Sigmoid", "Tanh", "Hardtanh", "Elu", "TBackward",
          "Permute", "View", "Reshape", "Flatten", "Clone", "Squeeze")
# Torch-Pruning op types through which a channel keeps its identity (or a known index map)
_PASS_THROUGH = ("CONV", "LINEAR", "BN", "ELEMENTWISE", "RESHAPE", "CONCAT", "SPLIT")


class LivenessError(RuntimeError):
    """The dependency analysis is unavailable or failed; the message says what to do."""


@dataclass
class DeadUnitReport:
    """What ``drop_dead_units`` removed: per layer, the dead units and entries zeroed."""

    units: dict[str, int] = field(default_factory=dict)
    weights_zeroed: int = 0
    biases_zeroed: int = 0
    max_abs_diff: float = 0.0
    applied: bool = False
    reason: str = ""

    @property
    def total_units(self) -> int:
        return sum(self.units.values())

    def as_dict(self) -> dict:
        return {"units": dict(self.units), "total_units": self.total_units,
                "weights_zeroed": self.weights_zeroed, "biases_zeroed": self.biases_zeroed,
                "max_abs_diff": self.max_abs_diff, "applied": self.applied,
                "reason": self.reason}


def _graph(model: nn.Module, example_inputs: torch.Tensor):
    """The dependency graph and its blocked nodes (channel-mixing modules, concatenations
    of unknown layout), as ``admmprune.channels.shrink`` builds them."""
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        raise LivenessError("finding dead units needs torch-pruning: pip install "
                            "torch-pruning (a dependency of admmprune)") from None
    from .graph import build_graph

    try:
        return build_graph(model, example_inputs)
    except Exception as err:  # tracing arbitrary models can fail in many ways
        raise LivenessError(f"could not trace the model's channel dependencies: {err}") \
            from None


def _read_slice(module: nn.Module, channel: int) -> torch.Tensor:
    """The weights of ``module`` that read its input channel ``channel``."""
    weight = module.weight
    if isinstance(module, nn.Linear):
        return weight[:, channel]
    groups = module.groups
    per_group_in = module.in_channels // groups
    per_group_out = module.out_channels // groups
    group = channel // per_group_in
    return weight[group * per_group_out:(group + 1) * per_group_out, channel % per_group_in]


def _is_readable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (
        isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        and module.in_channels % module.groups == 0)


def dead_units(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """{module name: boolean tensor over its output units, True where dead} for every
    Conv/Linear whose outputs are read only by Conv/Linear layers whose reading weights
    are all zero. Units of layers that feed the model's output are never dead, nor units
    that pass through a module mixing channels (LocalResponseNorm: a unit nobody reads
    still changes its neighbours)."""
    return _dead_units(model, *_graph(model, example_inputs))


def _dead_units(model: nn.Module, graph, blocked) -> dict[str, torch.Tensor]:
    names = {module: name for name, module in model.named_modules()}
    result = {}
    for module, name in names.items():
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        units = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        pruner = graph.get_pruner_of_module(module)
        if pruner is None:
            continue
        group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                        idxs=list(range(units)))
        dead = torch.ones(units, dtype=torch.bool)
        read = torch.zeros(units, dtype=torch.bool)
        for item in group.items:
            target = item.dep.target
            kind = getattr(target.type, "name", str(target.type))
            roots = torch.as_tensor([int(r) for r in item.root_idxs], dtype=torch.long)
            if kind not in _PASS_THROUGH or target in blocked:
                dead[roots] = False
                continue
            reader = target.module
            if not (graph.is_in_channel_pruning_fn(item.dep.handler)
                    and isinstance(reader, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))):
                continue
            if not _is_readable(reader):
                dead[roots] = False
                continue
            read[roots] = True
            with torch.no_grad():
                for channel, root in zip(item.idxs, roots.tolist(), strict=True):
                    if bool((_read_slice(reader, int(channel)) != 0).any()):
                        dead[root] = False
        result[name] = dead & read
    return result


def drop_dead_units(model: nn.Module, example_inputs: torch.Tensor, *,
                    tolerance: float = 0.0) -> DeadUnitReport:
    """Zero the incoming weights and the bias of every dead unit, until none is left.

    The model's output on ``example_inputs`` (eval mode) must stay within ``tolerance``
    (relative to its largest magnitude); otherwise every change is undone and the report
    says why. Returns the report; ``report.applied`` tells whether anything was changed.
    """
    report = DeadUnitReport()
    was_training = model.training
    model.eval()
    backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            before = model(example_inputs)
        graph = _graph(model, example_inputs)
        modules = dict(model.named_modules())
        while True:
            changed = False
            for name, dead in _dead_units(model, *graph).items():
                module = modules[name]
                with torch.no_grad():
                    rows = module.weight[dead]
                    bias = module.bias[dead] if module.bias is not None else None
                    fresh = int((rows != 0).sum()) + (0 if bias is None
                                                      else int((bias != 0).sum()))
                    if not fresh:
                        continue
                    changed = True
                    report.weights_zeroed += int((rows != 0).sum())
                    module.weight[dead] = 0
                    if bias is not None:
                        report.biases_zeroed += int((bias != 0).sum())
                        module.bias[dead] = 0
            if not changed:
                break
        report.units = {name: int(dead.sum()) for name, dead in
                        _dead_units(model, *graph).items() if bool(dead.any())}
        with torch.no_grad():
            after = model(example_inputs)
        diff = _max_abs_diff(before, after)
        scale = max(1.0, _max_abs(before))
        report.max_abs_diff = diff
        if not diff <= tolerance * scale:
            model.load_state_dict(backup)
            report.units, report.weights_zeroed, report.biases_zeroed = {}, 0, 0
            report.reason = (f"kept every unit: dropping the dead ones changed the output by "
                             f"{diff:.3g} (the dependency analysis does not fit this model)")
            return report
        report.applied = bool(report.weights_zeroed or report.biases_zeroed)
        return report
    finally:
        model.train(was_training)


def _max_abs_diff(a, b) -> float:
    from .graph import output_tensors

    pairs = zip(output_tensors(a), output_tensors(b), strict=True)
    return max((float((x.float() - y.float()).abs().max()) for x, y in pairs
                if x.numel()), default=0.0)


def _max_abs(a) -> float:
    from .graph import output_tensors

    return max((float(x.float().abs().max()) for x in output_tensors(a) if x.numel()),
               default=0.0)


def filter_readers(model: nn.Module, names: list[str], example_inputs: torch.Tensor,
                   strict: bool = False
                   ) -> tuple[tuple[tuple[int, torch.Tensor, torch.Tensor], ...], ...]:
    """For each prunable weight ``names[j]``: the input columns (dim 1) it reads from the
    output filters of other prunable weights, as ``(i, columns, filters)``: column
    ``columns[k]`` of weight j reads filter ``filters[k]`` of weight i. A column read from
    several filters (a residual sum) appears under each; a column that reads anything
    else (the model's input, an op not understood here) appears under none, and is live
    whatever is pruned. Only plain chains are mapped (activations, pooling, batch norm,
    flatten); channels that meet a sum, a concatenation or another op are left out, so
    their readers count as live. Used by the filter projection to count live weights.
    ``strict``: a layer's filters are mapped only when every Conv/Linear reading them is
    among ``names``, so that a filter none of the mapped columns reads is truly unread
    (the unstructured live projection relies on it)."""
    was_training = model.training
    model.eval()  # dropout is traced as a multiplication in training mode
    try:
        graph, blocked = _graph(model, example_inputs)
    finally:
        model.train(was_training)
    index = {}
    for j, name in enumerate(names):
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        if attr == "weight" and _is_readable(module) and not getattr(module, "transposed",
                                                                     False):
            index[module] = j
    readers: list[list[tuple[int, torch.Tensor, torch.Tensor]]] = [[] for _ in names]
    for module, i in index.items():
        pruner = graph.get_pruner_of_module(module)
        if pruner is None:
            continue
        units = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                        idxs=list(range(units)))
        found = []
        for item in group.items:
            target = item.dep.target
            kind = getattr(target.type, "name", str(target.type))
            if target in blocked or kind not in ("CONV", "LINEAR", "BN", "RESHAPE") and not (
                    kind == "ELEMENTWISE" and any(op in target.name for op in _UNARY)):
                # sums, concatenations and unknown ops may mix in other sources (an
                # identity shortcut from the input): these channels count as read
                found = None
                break
            if target.module is not module and graph.is_out_channel_pruning_fn(
                    item.dep.handler) and isinstance(target.module, (nn.Linear, nn.Conv1d,
                                                                     nn.Conv2d, nn.Conv3d)):
                found = None  # another layer writes the same channels (a residual sum)
                break
            reader = target.module
            if strict and graph.is_in_channel_pruning_fn(item.dep.handler) \
                    and isinstance(reader, (nn.Linear, nn.modules.conv._ConvNd)) \
                    and reader not in index:
                found = None  # read by a layer outside the prunable set: always read
                break
            if graph.is_in_channel_pruning_fn(item.dep.handler) and reader in index:
                if getattr(reader, "groups", 1) != 1:
                    found = None
                    break
                found.append((index[reader],
                              torch.as_tensor([int(c) for c in item.idxs], dtype=torch.long),
                              torch.as_tensor([int(r) for r in item.root_idxs],
                                              dtype=torch.long)))
        for j, columns, filters in found or ():
            readers[j].append((i, columns, filters))
    return tuple(tuple(r) for r in readers)

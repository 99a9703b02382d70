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
    try:
        import torch_pruning as tp
    except ImportError:
        raise LivenessError("finding dead units needs torch-pruning: pip install "
                            "torch-pruning (a dependency of admmprune)") from None
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
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


def dead_units(model: nn.Module, example_inputs: torch.Tensor,
               graph=None) -> dict[str, torch.Tensor]:
    """{module name: boolean tensor over its output units, True where dead} for every
    Conv/Linear whose outputs are read only by Conv/Linear layers whose reading weights
    are all zero. Units of layers that feed the model's output are never dead."""
    graph = graph if graph is not None else _graph(model, example_inputs)
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
            if kind not in _PASS_THROUGH:
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
            for name, dead in dead_units(model, example_inputs, graph).items():
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
                        dead_units(model, example_inputs, graph).items() if bool(dead.any())}
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


def _flat_outputs(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _flat_outputs(item)]
    return []


def _max_abs_diff(a, b) -> float:
    pairs = zip(_flat_outputs(a), _flat_outputs(b), strict=True)
    return max((float((x.float() - y.float()).abs().max()) for x, y in pairs
                if x.numel()), default=0.0)


def _max_abs(a) -> float:
    return max((float(x.float().abs().max()) for x in _flat_outputs(a) if x.numel()),
               default=0.0)

"""The normalization layers next to each pruned weight, and the scale they give its entries.

A convolution followed by BatchNorm is scale-free: multiplying its weights by c changes
nothing the network computes, because BatchNorm divides the output by its own standard
deviation. Its raw magnitudes therefore say nothing against another layer's. What the
network uses is the folded weight: row ``i`` of a layer whose output goes straight into a
BatchNorm is multiplied by ``γ_i / √(running_var_i + ε)``; column ``j`` of a layer whose
input comes straight from a normalization (BatchNorm, LayerNorm, GroupNorm, RMSNorm) is
multiplied by that norm's ``γ_j``. :func:`folded_magnitudes` ranks weights by those
products (the ``folded`` score of the projection).

The pairs come from the model's data flow on one forward pass, not from module names: a
norm follows a layer when the norm's input is the very tensor the layer returned, and
precedes it when the layer's input is the very tensor the norm returned. Any op between
them (an activation, a residual addition) breaks the pair, as it breaks the folding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..selection import is_transposed_linear
from .graph import observed_forward

__all__ = ["NormNeighbours", "NormTraceError", "column_factor", "find_norm_neighbours",
           "folded_magnitudes", "scale_factors", "weight_axes"]


class NormTraceError(RuntimeError):
    """The example inputs do not run through the model; the message says what to do."""


@dataclass(frozen=True)
class NormNeighbours:
    """The normalizations around one pruned weight (None where there is none)."""

    name: str
    after: nn.Module | None  # a BatchNorm reading this layer's output
    before: nn.Module | None  # a normalization whose output this layer reads


def _scales_channels(module: nn.Module) -> bool:
    """A normalization whose affine weight scales each channel (or feature) on its own."""
    if isinstance(module, (_BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)):
        return True
    # RMSNorm classes of model libraries (LlamaRMSNorm, ...) predate torch's own
    weight = getattr(module, "weight", None)
    return type(module).__name__.endswith("RMSNorm") and isinstance(weight, torch.Tensor) \
        and weight.dim() == 1


def _module_of(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rpartition(".")[0])


def find_norm_neighbours(model: nn.Module, names: Sequence[str], example_inputs: Any
                         ) -> list[NormNeighbours]:
    """For each pruned weight in ``names``, the BatchNorm fed directly by its layer's output
    and the normalization that feeds its layer's input directly.

    Args:
        model: the model (left in the mode it was in; BatchNorm statistics untouched).
        names: full parameter names of the pruned weights (``selection`` order).
        example_inputs: a batch the model accepts (a tensor, or a tuple of positional args).

    Raises:
        NormTraceError: the forward pass failed.
    """
    layers = {name: _module_of(model, name) for name in names}
    norms = [m for m in model.modules() if _scales_channels(m)]
    produced: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # id(output) -> (module, output)
    read: dict[nn.Module, list[torch.Tensor]] = {}

    def remember_output(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            produced[id(output)] = (module, output)  # the tensor is held: ids stay unique

    def remember_input(module: nn.Module, inputs: Any) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor):
            read.setdefault(module, []).append(inputs[0])

    watched = set(layers.values()) | set(norms)
    handles = []
    for module in watched:
        handles.append(module.register_forward_hook(remember_output))
        handles.append(module.register_forward_pre_hook(remember_input))
    try:
        observed_forward(model, example_inputs, handles)
    except Exception as err:  # noqa: BLE001 - any failure of the user's forward pass
        raise NormTraceError(f"the folded score traces one forward pass on the example "
                             f"inputs to find each layer's normalization, and it failed: "
                             f"{type(err).__name__}: {err}") from None

    def source(tensor: torch.Tensor) -> nn.Module | None:
        entry = produced.get(id(tensor))
        return entry[0] if entry is not None and entry[1] is tensor else None

    after_of: dict[nn.Module, nn.Module] = {}
    for norm in norms:
        if not isinstance(norm, _BatchNorm):
            continue  # LayerNorm/GroupNorm mix a row's scale with its neighbours'
        for tensor in read.get(norm, []):
            layer = source(tensor)
            if layer is not None and layer not in norms:
                after_of.setdefault(layer, norm)
    found = []
    for name, layer in layers.items():
        inputs = read.get(layer, [])
        before = source(inputs[0]) if inputs else None
        found.append(NormNeighbours(name, after_of.get(layer),
                                    before if before in norms else None))
    return found


def _after_scale(norm: _BatchNorm) -> torch.Tensor:
    """``|γ| / √(running_var + ε)`` of a BatchNorm (``|γ|`` without running statistics)."""
    weight, var = norm.weight, norm.running_var
    scale = torch.ones(norm.num_features) if var is None \
        else (var.detach().float() + norm.eps).rsqrt()
    if weight is None:  # affine=False
        return scale
    return scale.to(weight.device) * weight.detach().abs()


def _before_scale(norm: nn.Module) -> torch.Tensor | None:
    weight = getattr(norm, "weight", None)
    return weight.detach().abs() if isinstance(weight, torch.Tensor) else None


def weight_axes(layer: nn.Module) -> tuple[int, int]:
    """(output axis, input axis) of a layer's weight."""
    if is_transposed_linear(layer):  # Hugging Face Conv1D: [in, out]
        return 1, 0
    return 0, 1


def scale_factors(model: nn.Module, neighbours: Sequence[NormNeighbours]
                  ) -> list[torch.Tensor | None]:
    """Per pruned weight, the tensor its magnitudes are multiplied by (broadcastable to the
    weight), from the norms' current statistics; None where no norm is next to it."""
    factors: list[torch.Tensor | None] = []
    for entry in neighbours:
        layer = _module_of(model, entry.name)
        weight = model.get_parameter(entry.name)
        out_axis, in_axis = weight_axes(layer)
        factor: torch.Tensor | None = None
        if isinstance(entry.after, _BatchNorm):
            row = _after_scale(entry.after)
            if row.numel() == weight.shape[out_axis]:
                shape = [1] * weight.dim()
                shape[out_axis] = -1
                factor = row.to(weight.device).view(shape)
        before = _before_scale(entry.before) if entry.before is not None else None
        if before is not None:
            column = column_factor(layer, weight, before, out_axis, in_axis)
            if column is not None:
                factor = column if factor is None else factor * column
        factors.append(factor)
    return factors


def column_factor(layer: nn.Module, weight: torch.Tensor, scale: torch.Tensor, out_axis: int,
                  in_axis: int) -> torch.Tensor | None:
    """The input-side factor: the norm's per-channel scale for each input column (grouped
    convolutions read channel ``g·in_per_group + j`` in group ``g``)."""
    groups = int(getattr(layer, "groups", 1))
    in_per_group = weight.shape[in_axis]
    if scale.numel() != in_per_group * groups:
        return None  # the norm's features are not this layer's input channels
    scale = scale.to(weight.device)
    shape = [1] * weight.dim()
    if groups == 1:
        shape[in_axis] = -1
        return scale.view(shape)
    out = weight.shape[out_axis]
    group_of_row = torch.arange(out, device=weight.device) // (out // groups)
    channel = group_of_row[:, None] * in_per_group + torch.arange(in_per_group,
                                                                  device=weight.device)
    shape[0], shape[1] = out, in_per_group
    return scale[channel].view(shape)


def folded_magnitudes(values: Sequence[torch.Tensor],
                      factors: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """``|v| · factor``: the magnitude of each entry as the network uses it."""
    return [v.detach().abs() if f is None else v.detach().abs() * f.to(v.dtype)
            for v, f in zip(values, factors, strict=True)]

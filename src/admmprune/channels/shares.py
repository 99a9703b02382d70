"""Each weight's share of its own output: a score that compares between layers whatever
their scales (the ``share`` score of the projection).

A weight ``w_ij`` of a layer ``y = W x`` moves output ``i`` by ``w_ij · x_j``. Its share of
that output, ``|w_ij| · rms(x_j) / rms(y_i)``, is unchanged when a row of ``W`` is scaled (the
BatchNorm after it divides by its own σ), when an input channel is scaled (a BatchNorm or
norm before it, or a large residual sum), or when the whole layer is. The ``folded`` score
(:mod:`.norms`) corrects the output side only; measured on a BatchNorm ResNet it starved the
first convolution of every residual block, whose inputs are the block's large residual sum
(docs/results.md section 15). This one reads both sides from the activations themselves, so
it needs no graph of which norm sits where: one forward pass over example inputs.

RMS per channel: over the batch and every position (convolutions: all but axis 1; linear
layers and Hugging Face ``Conv1D``: all but the last axis). The layer's output is measured
before anything after it (BatchNorm, activation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .graph import observed_forward
from .norms import column_factor, weight_axes

__all__ = ["ShareTraceError", "activation_rms", "share_factors", "share_magnitudes"]


class ShareTraceError(RuntimeError):
    """The share score cannot be measured; the message says what to do."""


def _channel_rms(tensor: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    t = tensor.detach().double()
    if isinstance(layer, nn.modules.conv._ConvNd):
        t = t.movedim(1, -1)
    return t.reshape(-1, t.shape[-1]).pow(2).mean(0).sqrt()


def _check_layer(name: str, layer: nn.Module) -> None:
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        raise ShareTraceError(f"{name}: the share score reads Linear, Conv1d/2d/3d and Hugging "
                              "Face Conv1D layers, not transposed convolutions: exclude it or "
                              "use another score")


def activation_rms(model: nn.Module, names: Sequence[str], example_inputs: Any
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(rms of each input channel, rms of each output channel)`` of every pruned weight's
    layer, on one forward pass over ``example_inputs`` (eval mode, no gradients; the model's
    mode and BatchNorm statistics are left as they were).

    A layer called more than once (shared weights) gets the RMS over all its calls.

    Raises:
        ShareTraceError: a transposed convolution, a forward pass that fails, or a layer the
            pass never reached.
    """
    layers = [model.get_submodule(name.rpartition(".")[0]) for name in names]
    for name, layer in zip(names, layers, strict=True):
        _check_layer(name, layer)
    sums: dict[int, list[torch.Tensor]] = {}  # id(layer) -> [input ms, output ms, calls]

    def measure(module: nn.Module, inputs: Any, output: Any) -> None:
        if not (inputs and isinstance(inputs[0], torch.Tensor)
                and isinstance(output, torch.Tensor)):
            return
        squares = [_channel_rms(inputs[0], module).pow(2), _channel_rms(output, module).pow(2)]
        entry = sums.get(id(module))
        if entry is None:
            sums[id(module)] = [*squares, torch.ones((), dtype=torch.float64)]
        else:
            entry[0] += squares[0]
            entry[1] += squares[1]
            entry[2] += 1

    handles = [layer.register_forward_hook(measure) for layer in set(layers)]
    try:
        observed_forward(model, example_inputs, handles)
    except Exception as err:  # noqa: BLE001 - any failure of the user's forward pass
        raise ShareTraceError(f"the share score measures each layer's input and output on one "
                              f"forward pass over the example inputs, and it failed: "
                              f"{type(err).__name__}: {err}") from None
    found = []
    for name, layer in zip(names, layers, strict=True):
        entry = sums.get(id(layer))
        if entry is None:
            raise ShareTraceError(f"{name}: the forward pass over the example inputs never ran "
                                  "its layer; exclude it or use another score")
        found.append(((entry[0] / entry[2]).sqrt(), (entry[1] / entry[2]).sqrt()))
    return found


def share_factors(model: nn.Module, names: Sequence[str], example_inputs: Any
                  ) -> list[torch.Tensor]:
    """Per pruned weight, ``rms(x_j) / rms(y_i)`` broadcastable to the weight (0 on an output
    that is exactly zero: its weights move nothing).

    Raises:
        ShareTraceError: see :func:`activation_rms`, or a layer whose measured channels do
            not match its weight's.
    """
    factors = []
    for name, (inputs, outputs) in zip(names, activation_rms(model, names, example_inputs),
                                       strict=True):
        layer = model.get_submodule(name.rpartition(".")[0])
        weight = model.get_parameter(name)
        out_axis, in_axis = weight_axes(layer)
        column = column_factor(layer, weight, inputs.float(), out_axis, in_axis)
        if column is None or outputs.numel() != weight.shape[out_axis]:
            raise ShareTraceError(f"{name}: its layer's input/output channels "
                                  f"({inputs.numel()}, {outputs.numel()}) do not match the "
                                  f"weight's shape {tuple(weight.shape)}; exclude it or use "
                                  "another score")
        shape = [1] * weight.dim()
        shape[out_axis] = -1
        rows = outputs.float().to(weight.device)
        inverse = torch.where(rows > 0, 1.0 / rows.clamp_min(torch.finfo(rows.dtype).tiny),
                              torch.zeros_like(rows)).view(shape)
        factors.append(column * inverse)
    return factors


def share_magnitudes(values: Sequence[torch.Tensor], factors: Sequence[torch.Tensor]
                     ) -> list[torch.Tensor]:
    """``|v| · rms(x_j) / rms(y_i)``: each entry's share of its output."""
    return [v.detach().abs() * f.to(device=v.device, dtype=v.dtype)
            for v, f in zip(values, factors, strict=True)]

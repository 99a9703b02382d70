"""Darknet's ``.weights`` file: read into and write from a model built from a cfg.

Layout (little-endian): int32 major, minor, revision; ``seen`` (images trained on) as int64
when ``major * 10 + minor >= 2``, else int32; then, for every ``[convolutional]`` layer in cfg
order, float32 arrays: with batch norm ``bn bias, bn weight, running mean, running var``
(``filters`` each), without it the conv bias; then the conv weights ``(out, in/groups, kh,
kw)`` flattened. Nothing else: the cfg must be known to read the file.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .registry import register_weights_loader

__all__ = ["DarknetHeader", "darknet_float_count", "load_darknet_weights",
           "save_darknet_weights"]

_FLOAT = np.dtype("<f4")


class DarknetHeader(NamedTuple):
    version: tuple[int, int, int]
    seen: int


def _conv_layers(model: nn.Module) -> list[nn.Module]:
    """The model's conv layers in darknet order (``module_list`` entries with a ``conv``)."""
    layers = getattr(model, "module_list", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} is not a darknet model (no module_list); "
                         "build it with admmprune.models.darknet.darknet_from_cfg")
    convs = [m for m in layers if isinstance(getattr(m, "conv", None), nn.Conv2d)]
    if not convs:
        raise ValueError("the model has no convolutional layer to hold darknet weights")
    return convs


def _tensors(layer: nn.Module) -> list[torch.Tensor]:
    """The tensors of one conv layer in file order."""
    conv, bn = layer.conv, getattr(layer, "bn", None)
    if bn is not None:
        return [bn.bias, bn.weight, bn.running_mean, bn.running_var, conv.weight]
    if conv.bias is None:
        raise ValueError("a darknet convolution without batch norm must have a bias")
    return [conv.bias, conv.weight]


def darknet_float_count(model: nn.Module) -> int:
    """How many float32 values follow the header in this model's ``.weights`` file."""
    return sum(t.numel() for layer in _conv_layers(model) for t in _tensors(layer))


def _seen_is_int64(major: int, minor: int) -> bool:
    return major * 10 + minor >= 2


def load_darknet_weights(model: nn.Module, path: str | Path) -> DarknetHeader:
    """Fill ``model`` (built from the matching cfg) from a darknet ``.weights`` file.

    Raises ``ValueError`` if the file's size does not match the model, saying by how many
    floats; the model is changed only when the whole file fits.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 12:
        raise ValueError(f"{path}: {len(data)} bytes is too short for a darknet weights "
                         "header (12 or more bytes)")
    major, minor, revision = struct.unpack_from("<3i", data, 0)
    wide = _seen_is_int64(major, minor)
    offset = 20 if wide else 16
    if len(data) < offset:
        raise ValueError(f"{path}: the file ends inside the header (version "
                         f"{major}.{minor}.{revision} needs {offset} bytes)")
    (seen,) = struct.unpack_from("<q" if wide else "<i", data, 12)
    body = len(data) - offset
    if body % 4:
        raise ValueError(f"{path}: {body} bytes after the header is not a whole number of "
                         "float32 values; the file is truncated or not a darknet .weights file")
    expected = darknet_float_count(model)
    found = body // 4
    if found != expected:
        diff = expected - found
        what = (f"{diff} floats too short" if diff > 0 else f"{-diff} floats too long")
        raise ValueError(
            f"{path}: the file is {what}: the model needs {expected} floats after the "
            f"{offset}-byte header (version {major}.{minor}.{revision}), the file holds "
            f"{found}; is the cfg (and its classes=) the one these weights were trained with?")
    values = np.frombuffer(data, dtype=_FLOAT, count=found, offset=offset)
    position = 0
    with torch.no_grad():
        for layer in _conv_layers(model):
            for tensor in _tensors(layer):
                n = tensor.numel()
                chunk = torch.from_numpy(values[position:position + n].copy())
                tensor.copy_(chunk.view_as(tensor))
                position += n
    return DarknetHeader((major, minor, revision), seen)


def save_darknet_weights(model: nn.Module, path: str | Path, seen: int = 0,
                         version: tuple[int, int, int] = (0, 2, 5)) -> None:
    """Write ``model``'s conv and batch-norm tensors as a darknet ``.weights`` file."""
    major, minor, revision = version
    header = struct.pack("<3i", major, minor, revision)
    header += struct.pack("<q" if _seen_is_int64(major, minor) else "<i", seen)
    arrays = [t.detach().to("cpu", torch.float32).reshape(-1).numpy().astype(_FLOAT)
              for layer in _conv_layers(model) for t in _tensors(layer)]
    with open(path, "wb") as handle:
        handle.write(header)
        for array in arrays:
            handle.write(array.tobytes())


def _load(model: nn.Module, path: Path) -> None:
    load_darknet_weights(model, path)


register_weights_loader("yolov4", ".weights")(_load)
register_weights_loader("yolov4-tiny", ".weights")(_load)

"""Checks of a compressed file's manifest before anything is allocated from it.

Every number in a manifest comes from the file. Before the payload is decompressed and any
tensor is built, :func:`check_tensors` makes sure each entry is well formed (types, a shape
of non-negative integers, a known dtype, layout and encodings, segments inside the payload
and no longer than the shape can need; a ``shared`` entry names an earlier stored tensor of
its shape and dtype and holds no bytes), that the shapes are those of the model to fill (or
add up to at most ``max_params`` elements when there is none), and that the payload is no
larger than the shapes can need. Decoding then allocates at most what the shapes describe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .untrusted import ModelLimitError

__all__ = ["DTYPES", "MAX_DIMS", "TensorSpec", "MismatchError", "check_tensors",
           "check_record"]

DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d for d in (
        torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
        torch.int16, torch.int8, torch.uint8, torch.bool)}
MAX_DIMS = 16
_POSITION_SEGMENTS = {"dense": 0, "bitmask": 1, "csr": 2, "relative": 1}
_VALUE_SEGMENTS = {"raw": 1, "codebook": 2}
# positions take at most 8 bytes (csr row counts) + 2 (csr columns) per entry; codes at most
# 4 (32-bit); a codebook at most 2**16 float32 centroids
_SLACK = 4 << 16


class MismatchError(ValueError):
    """The file's tensors are not those of the model to fill."""


class TensorSpec:
    """One checked manifest entry: its name, shape, element count, dtype and, for a tensor
    stored once under an earlier name (tied weights), that name (``shared``)."""

    __slots__ = ("name", "shape", "numel", "dtype", "shared")

    def __init__(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
                 shared: str | None = None) -> None:
        self.name, self.shape, self.dtype, self.shared = name, shape, dtype, shared
        self.numel = math.prod(shape)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(entry: Any, index: int, payload_bytes: int) -> tuple[TensorSpec, int]:
    """The spec of one entry and the most payload bytes its shape can need."""
    if not isinstance(entry, dict):
        raise ValueError(f"tensor entry {index} is a {type(entry).__name__}, not an object")
    name = entry.get("name")
    if not isinstance(name, str):
        raise ValueError(f"tensor entry {index} has no name")
    shape = entry.get("shape")
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS
            and all(_int(s) and s >= 0 for s in shape)):
        raise ValueError(f"tensor {name}: shape {str(shape)[:100]} is not a list of at most "
                         f"{MAX_DIMS} non-negative integers")
    dtype = DTYPES.get(entry.get("dtype"))  # type: ignore[arg-type]
    if dtype is None:
        raise ValueError(f"tensor {name}: unknown dtype {str(entry.get('dtype'))[:40]!r}")
    spec = TensorSpec(name, tuple(shape), dtype)
    item = torch.empty(0, dtype=dtype).element_size()
    segments = entry.get("segments")
    if not isinstance(segments, list) or not all(
            isinstance(s, list) and len(s) == 2 and all(_int(v) and v >= 0 for v in s)
            and s[0] + s[1] <= payload_bytes for s in segments):
        raise ValueError(f"tensor {name}: its segments are not [offset, length] pairs inside "
                         f"the {payload_bytes:,}-byte payload")
    layout = entry.get("layout")
    if layout == "shared":
        # the values are an earlier entry's (check_tensors checks which): no bytes of its own
        of = entry.get("of")
        if not isinstance(of, str):
            raise ValueError(f"tensor {name}: a shared entry names no tensor it shares")
        if segments:
            raise ValueError(f"tensor {name}: a shared entry holds no segments")
        spec.shared = of
        return spec, 0
    if layout == "raw":
        wanted = 1
        if segments and segments[0][1] != spec.numel * item:
            raise ValueError(f"tensor {name}: {segments[0][1]:,} bytes for shape "
                             f"{list(shape)} of {entry['dtype']}")
    elif layout == "sparse":
        nnz, positions, values = entry.get("nnz"), entry.get("positions"), entry.get("values")
        if not (_int(nnz) and 0 <= nnz <= spec.numel):  # type: ignore[operator]
            raise ValueError(f"tensor {name}: survivor count {str(nnz)[:40]} is not in "
                             f"0..{spec.numel:,}")
        if not (isinstance(positions, dict) and positions.get("encoding") in _POSITION_SEGMENTS
                and isinstance(values, dict) and values.get("encoding") in _VALUE_SEGMENTS):
            raise ValueError(f"tensor {name}: unknown position or value encoding")
        wanted = _POSITION_SEGMENTS[positions["encoding"]] + _VALUE_SEGMENTS[values["encoding"]]
        if values["encoding"] == "codebook" and not (
                _int(values.get("bits")) and 1 <= values["bits"] <= 16
                and _int(values.get("size")) and 0 <= values["size"] <= 1 << values["bits"]):
            raise ValueError(f"tensor {name}: codebook bits/size out of range")
    else:
        raise ValueError(f"tensor {name}: unknown layout {str(layout)[:40]!r}")
    if len(segments) != wanted:
        raise ValueError(f"tensor {name}: {len(segments)} segments where its encoding has "
                         f"{wanted}")
    need = spec.numel * (item + 14) + _SLACK
    if sum(s[1] for s in segments) > need:
        raise ValueError(f"tensor {name}: its segments hold more bytes than shape "
                         f"{list(shape)} can need")
    return spec, need


def check_tensors(manifest: Mapping[str, Any], *,
                  shapes: Mapping[str, tuple[int, ...]] | None = None,
                  max_params: int | None = None) -> list[TensorSpec]:
    """The checked tensor entries of ``manifest``.

    Args:
        manifest: a manifest as read (``payload_bytes`` already checked to be a count).
        shapes: the state-dict shapes of the model to fill; the file must hold exactly
            these names and shapes.
        max_params: without ``shapes``, the most elements all tensors may hold together.

    Returns:
        One :class:`TensorSpec` per entry, in file order.

    Raises:
        ValueError: a malformed entry or a payload larger than the shapes can need
            (the file is damaged or crafted).
        MismatchError: the names or shapes differ from ``shapes`` (the message says how).
        ModelLimitError: the elements exceed ``max_params``.
    """
    entries = manifest.get("tensors")
    if not isinstance(entries, list):
        raise ValueError("the manifest has no list of tensors")
    payload_bytes = manifest["payload_bytes"]
    specs: list[TensorSpec] = []
    need = 0
    for index, entry in enumerate(entries):
        spec, most = _entry(entry, index, payload_bytes)
        specs.append(spec)
        need += most
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("a tensor name appears twice")
    stored: dict[str, TensorSpec] = {}
    for spec in specs:
        if spec.shared is None:
            stored[spec.name] = spec
            continue
        of = stored.get(spec.shared)
        if of is None or of.shape != spec.shape or of.dtype != spec.dtype:
            raise ValueError(f"tensor {spec.name} shares {spec.shared[:100]!r}, which is no "
                             "earlier stored tensor of its shape and dtype")
    if payload_bytes > need:
        raise ValueError(f"its payload of {payload_bytes:,} bytes is larger than its tensors' "
                         f"shapes can need")
    if shapes is not None:
        problems = [f"{s.name} is {list(s.shape)} in the file but "
                    f"{list(shapes[s.name])} in the model"
                    for s in specs if s.name in shapes and s.shape != tuple(shapes[s.name])]
        missing = [n for n in shapes if n not in set(names)]
        unexpected = [n for n in names if n not in shapes]
        if missing:
            problems.append(f"missing from the file: {', '.join(missing[:5])}")
        if unexpected:
            problems.append(f"not in the model: {', '.join(unexpected[:5])}")
        if problems:
            raise MismatchError("; ".join(problems[:6]))
    elif max_params is not None:
        total = sum(s.numel for s in specs)
        if total > max_params:
            raise ModelLimitError(f"its tensors hold {total:,} elements, more than "
                                  f"max_params={max_params:,} allows; nothing was "
                                  "decompressed. If you trust the file, pass a larger "
                                  "max_params")
    return specs


def check_record(record: Any) -> tuple[Any, Any] | None:
    """(name, args) of a manifest's ``model`` entry, None when it records none; types are
    checked by :func:`admmprune.export.untrusted.check_record`."""
    if record is None:
        return None
    if not isinstance(record, dict) or "name" not in record:
        raise ValueError(f"its model record is {str(record)[:80]}, not "
                         "{\"name\": ..., \"args\": {...}}")
    return record["name"], record.get("args")

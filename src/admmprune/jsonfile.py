"""The one writer (and reader) of the JSON that admmprune writes: always valid JSON.

Python's ``json`` writes a NaN or infinite float as a bare ``NaN`` / ``Infinity``, which is
not JSON (RFC 8259): other parsers refuse the whole file. Every JSON file and line admmprune
writes (``summary.json``, ``metrics.jsonl``, ``sources.json``, ``compare``'s
``results.json``, ``report --json``, the metadata inside exported files) goes through
:func:`dumps`, which writes such a number as ``null`` and marks it in the object that holds
it::

    {"dense_loss": null, "dense_accuracy": 0.25, "non_finite": {"dense_loss": "NaN"}}

The marking maps the key (``key[i]`` for a position in a list held by that key) to
``"NaN"``, ``"Infinity"`` or ``"-Infinity"``. :func:`loads` puts the numbers back, so
admmprune's own readers see the float they wrote; other tools see ``null`` and the note.
A non-finite number that no object holds (a bare list or number) is refused (ValueError).
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["NON_FINITE", "dumps", "loads"]

NON_FINITE = "non_finite"
_VALUES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _name(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _key_text(key: Any) -> str:
    # the form json writes a key in (1 -> "1", True -> "true")
    return key if isinstance(key, str) else json.dumps(key)


def _encode(value: Any, marks: dict[str, str] | None, path: str) -> Any:
    """``value`` with non-finite floats as None, each recorded in ``marks`` (the marking of
    the innermost object holding it) under ``path``."""
    if isinstance(value, float) and not math.isfinite(value):
        if marks is None:
            raise ValueError(f"a non-finite number ({_name(value)}) outside any JSON object "
                             "cannot be marked; JSON has no NaN or Infinity")
        marks[path] = _name(value)
        return None
    if isinstance(value, dict):
        own: dict[str, str] = {}
        encoded = {key: _encode(item, own, _key_text(key)) for key, item in value.items()}
        if own:
            if NON_FINITE in value:
                raise ValueError(f"an object with a key {NON_FINITE!r} of its own cannot mark "
                                 f"its non-finite numbers ({', '.join(own)})")
            encoded[NON_FINITE] = own
        return encoded
    if isinstance(value, (list, tuple)):
        return [_encode(item, marks, f"{path}[{i}]") for i, item in enumerate(value)]
    return value


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps(value, **options)`` with every NaN or infinite float written as null and
    marked (see the module's docstring); the text is always valid JSON.

    Raises:
        ValueError: a non-finite number outside any object, or in an object that has a key
            ``"non_finite"`` of its own.
        TypeError: a value JSON cannot hold (as ``json.dumps``).
    """
    return json.dumps(_encode(value, None, ""), allow_nan=False, **options)


def _positions(path: str) -> tuple[str, list[int]] | None:
    """``"key[2][0]"`` -> ``("key", [2, 0])``; None without a position. Read from the end,
    in one pass (the text may come from an untrusted file)."""
    indices: list[int] = []
    end = len(path)
    while end and path[end - 1] == "]":
        start = path.rfind("[", 0, end - 1)
        digits = path[start + 1:end - 1]
        if start < 0 or not digits.isdigit() or not digits.isascii():
            break
        indices.append(int(digits))
        end = start
    return (path[:end], indices[::-1]) if indices else None


def _slot(obj: dict, path: str) -> tuple[Any, Any] | None:
    """(container, key or index) of the null ``path`` points at in ``obj``, or None."""
    if obj.get(path, 0) is None:
        return obj, path
    parsed = _positions(path)
    if parsed is None:
        return None
    key, indices = parsed
    holder: Any = obj.get(key)
    for index in indices[:-1]:
        if not isinstance(holder, list) or index >= len(holder):
            return None
        holder = holder[index]
    if not isinstance(holder, list) or indices[-1] >= len(holder) \
            or holder[indices[-1]] is not None:
        return None
    return holder, indices[-1]


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    decoded = {key: _decode(item) for key, item in value.items()}
    marks = decoded.get(NON_FINITE)
    if isinstance(marks, dict) and marks and all(m in _VALUES for m in marks.values()):
        restored = {key: item for key, item in decoded.items() if key != NON_FINITE}
        slots = [slot for path in marks if (slot := _slot(restored, path)) is not None]
        if len(slots) == len(marks):
            for (holder, where), mark in zip(slots, marks.values(), strict=True):
                holder[where] = _VALUES[mark]
            return restored
    return decoded  # not a marking this module wrote: left as it is


def loads(text: str | bytes) -> Any:
    """``json.loads`` that puts back the numbers :func:`dumps` marked (files of older
    versions, with bare NaN, read as well)."""
    return _decode(json.loads(text))

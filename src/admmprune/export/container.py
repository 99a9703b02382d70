"""The versioned container of a compressed model file (``.apz``); no pickle anywhere.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"\\x89ADMMPZ\\n"  (the high byte and newline catch text-mode copies)
    8       4     format version (uint32), FORMAT_VERSION
    12      4     flags (uint32), 0
    16      8     M: bytes of the compressed manifest (uint64)
    24      8     P: bytes of the compressed payload (uint64)
    32      32    sha256 of bytes 0..31 + manifest + payload
    64      M     manifest: UTF-8 JSON, zstd-compressed
    64+M    P     payload: the tensors' byte segments concatenated, zstd-compressed

The manifest (JSON, so reading it cannot run code) holds ``format``, ``version``,
``payload_bytes`` (the uncompressed payload size; decompression stops there, and it may
not exceed ``max_ratio`` times the compressed size nor what the shapes need), the model
(registered name or import spec + arguments, or null), export settings and one entry per
tensor: name, shape, dtype, layout, encodings, survivor count and its segments as [offset,
length] into the uncompressed payload (a tied weight's second name: layout ``shared``, the
name it shares, no segments).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path

import zstandard

from ..jsonfile import dumps, loads

__all__ = ["FORMAT_VERSION", "MAGIC", "HEADER_SIZE", "ContainerError", "write_container",
           "read_container", "is_container", "DEFAULT_MAX_RATIO", "RATIO_FLOOR"]

MAGIC = b"\x89ADMMPZ\n"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIIQQ32s")
HEADER_SIZE = _HEADER.size  # 64
_LEVEL = 19
_FAST_LEVEL = 3
_SMALL = 8 << 20
# Bounds on what a file can make the reader inflate. A zstd frame's own content size is not
# trusted: reading stops at the limit. Real manifests take ~100 bytes per tensor.
_MAX_MANIFEST = 16 << 20
# zstd window of our writer: 8 MiB at level 19, 2 MiB at level 3
_MAX_WINDOW = 1 << 24
# Exported payloads (float values, positions, codebooks) compress 1.1-1.5x; only constant
# tensors go far beyond. The payload may be max_ratio times its compressed size, or
# RATIO_FLOOR bytes (small files of constant tensors), whichever is larger.
DEFAULT_MAX_RATIO = 100.0
RATIO_FLOOR = 32 << 20


class ContainerError(ValueError):
    """A file that is not a readable compressed model (wrong kind, version, truncated,
    damaged); the message says which and what to do."""


def is_container(path: str | Path) -> bool:
    with Path(path).open("rb") as handle:
        return handle.read(len(MAGIC)) == MAGIC


def write_container(path: str | Path, manifest: dict, payload: bytes) -> int:
    """Write atomically (temporary file, rename); returns the file size."""
    manifest = {**manifest, "format": "admmprune-compressed", "version": FORMAT_VERSION,
                "payload_bytes": len(payload)}
    text = dumps(manifest, separators=(",", ":")).encode("utf-8")
    # zstd's strongest ordinary level costs seconds per MB: only for small files
    level = _LEVEL if len(payload) <= _SMALL else _FAST_LEVEL
    manifest_z = zstandard.ZstdCompressor(level=_LEVEL).compress(text)
    payload_z = zstandard.ZstdCompressor(level=level).compress(payload)
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(manifest_z), len(payload_z), b"")[:32]
    digest = hashlib.sha256(head + manifest_z + payload_z).digest()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(head + digest + manifest_z + payload_z)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no half-written file stays behind
        tmp.unlink(missing_ok=True)
        raise
    return HEADER_SIZE + len(manifest_z) + len(payload_z)


def _hint(start: bytes) -> str:
    if start.startswith(b"PK"):
        return " (it looks like a torch.save file: read it with torch.load, or evaluate it " \
               "with `admmprune eval --weights`)"
    if len(start) > 9 and start[8:9] == b"{":
        return " (it looks like a safetensors file: admmprune.load reads those too)"
    if start.startswith(b"\x08"):
        return " (it may be an ONNX model: run it with onnxruntime)"
    return ""


def _inflate(data: memoryview, limit: int, exact: bool) -> bytearray:
    """One zstd frame's content, refused (ValueError) past ``limit`` bytes, or short of it
    with ``exact``; memory stays within ``limit`` whatever the frame header claims."""
    buffer = bytearray(limit)
    view = memoryview(buffer)
    filled = 0
    decompressor = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW)
    with decompressor.stream_reader(data, read_across_frames=False) as reader:
        while filled < limit:
            got = reader.readinto(view[filled:])
            if not got:
                break
            filled += got
        beyond = reader.read(1)
    view.release()
    if beyond:
        raise ValueError(f"it inflates to more than {limit:,} bytes")
    if exact and filled != limit:
        raise ValueError(f"payload holds {filled} bytes, not {limit}")
    del buffer[filled:]
    return buffer


def read_container(path: str | Path, *, with_payload: bool = True,
                   check: Callable[[dict], None] | None = None,
                   max_ratio: float = DEFAULT_MAX_RATIO) -> tuple[dict, bytes | bytearray]:
    """(manifest, uncompressed payload) of a file written by :func:`write_container`, after
    checking magic, version, length and checksum.

    Args:
        path: the file.
        with_payload: decompress the payload (else it comes back empty).
        check: called with the manifest before the payload is decompressed; what it raises
            refuses the file (the caller bounds the payload by the shapes there).
        max_ratio: the payload may be at most this many times its compressed size (or
            :data:`RATIO_FLOOR` bytes); raise it only for a trusted file.

    Returns:
        The manifest (a dict) and the payload bytes.

    Raises:
        ContainerError: the file is not a readable container, or claims more than the
            limits allow.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ContainerError(f"cannot read {path}: {err}") from None
    if not data.startswith(MAGIC[:len(data)]) or not data:
        raise ContainerError(f"{path} is not an admmprune compressed model file (it does not "
                             f"start with the format's magic bytes){_hint(data[:16])}")
    if len(data) < HEADER_SIZE:
        raise ContainerError(f"{path} is truncated: {len(data)} bytes, shorter than the "
                             f"{HEADER_SIZE}-byte header; export it again")
    _, version, _flags, manifest_size, payload_size, digest = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        newer = "a newer admmprune: upgrade admmprune" if version > FORMAT_VERSION else \
            "an older admmprune: export the model again with this version"
        raise ContainerError(f"{path} uses compressed format version {version}; this "
                             f"admmprune reads version {FORMAT_VERSION}. It was written by "
                             f"{newer}")
    expected = HEADER_SIZE + manifest_size + payload_size
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than written"
        raise ContainerError(f"{path} is {what}: {len(data)} bytes where its header says "
                             f"{expected}; copy or export it again")
    if hashlib.sha256(data[:32] + data[HEADER_SIZE:]).digest() != digest:
        raise ContainerError(f"{path} is corrupt: its sha256 does not match the one written "
                             "with it (the file was damaged after export); export it again")
    body = memoryview(data)[HEADER_SIZE:]
    try:
        text = _inflate(body[:manifest_size], _MAX_MANIFEST, exact=False)
        manifest = loads(text.decode("utf-8"))
        if not isinstance(manifest, dict) or manifest.get("format") != "admmprune-compressed":
            raise ValueError("the manifest is not an admmprune manifest")
        if manifest.get("version") != version:
            raise ValueError("the manifest's version differs from the header's")
        expected_payload = manifest.get("payload_bytes")
        if isinstance(expected_payload, bool) or not isinstance(expected_payload, int) \
                or expected_payload < 0:
            raise ValueError(f"payload_bytes is {expected_payload!r}, not a byte count")
    except (zstandard.ZstdError, ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ContainerError(f"{path} is corrupt ({err}); export it again") from None
    allowed = max(RATIO_FLOOR, int(max_ratio * payload_size))
    if expected_payload > allowed:
        raise ContainerError(
            f"{path} claims a payload of {expected_payload:,} bytes from {payload_size:,} "
            f"compressed, more than max_ratio={max_ratio:g} times (or {RATIO_FLOOR:,} bytes) "
            "allows; it was not decompressed. If you trust the file, pass a larger max_ratio")
    if check is not None:
        check(manifest)
    payload: bytes | bytearray = b""
    if with_payload:
        try:
            payload = _inflate(body[manifest_size:], expected_payload, exact=True)
        except (zstandard.ZstdError, ValueError) as err:
            raise ContainerError(f"{path} is corrupt ({err}); export it again") from None
    return manifest, payload

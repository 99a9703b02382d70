"""Pure functions behind the compressed format: bit packing, position encodings of a sparse
tensor's survivors, and k-means quantization of their values.

Positions are the flat (row-major) indices of the surviving entries. Four encodings compete
per tensor and the smallest wins (:func:`choose_positions`):

- ``dense``: no positions; every entry is a value (the best choice below ~50% sparsity).
- ``bitmask``: one bit per entry.
- ``csr``: per row (first dimension) the survivor count, then one 16-bit column index per
  survivor; only for tensors with at most 65,536 columns.
- ``relative``: Deep Compression's relative indices: for each survivor the gap to the
  previous one in ``width`` bits; a gap too long for ``width`` bits is bridged by *filler*
  entries holding the largest code ``2**width - 1`` ("skip that many, no survivor here").
  Fillers carry no value, so values stay one per survivor. Every width 1..16 is priced.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pack_uint", "unpack_uint", "uint_width", "relative_encode", "relative_decode",
           "relative_count", "csr_encode", "csr_decode", "bitmask_encode", "bitmask_decode",
           "choose_positions", "encode_positions", "decode_positions", "kmeans_1d",
           "quantize", "MAX_CSR_COLUMNS"]

MAX_CSR_COLUMNS = 1 << 16
_CHUNK = 1 << 20  # entries packed at a time (bounds the temporary bit arrays)


def uint_width(max_value: int) -> int:
    """The narrowest of 8/16/32/64 bits that holds ``max_value``."""
    for width in (8, 16, 32):
        if max_value < (1 << width):
            return width
    return 64


def pack_uint(values: np.ndarray, width: int) -> bytes:
    """Unsigned integers (each < 2**width) as a little-endian bit stream of ``width`` bits
    each, padded to whole bytes."""
    values = np.asarray(values)
    if width in (8, 16, 32, 64):
        return values.astype(f"<u{width // 8}").tobytes()
    if not 1 <= width <= 32:
        raise ValueError(f"bit width must be 1..32, got {width}")
    shifts = np.arange(width, dtype=np.uint32)
    chunks = []
    for start in range(0, len(values), _CHUNK):
        part = values[start:start + _CHUNK].astype(np.uint32)
        chunks.append(((part[:, None] >> shifts) & 1).astype(np.uint8).ravel())
    bits = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    return np.packbits(bits, bitorder="little").tobytes()


def unpack_uint(data: bytes, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_uint`: ``count`` integers (int64)."""
    if width in (8, 16, 32, 64):
        needed = count * width // 8
        if len(data) < needed:
            raise ValueError(f"{count} {width}-bit integers need {needed} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=f"<u{width // 8}", count=count).astype(np.int64)
    if not 1 <= width <= 32:
        raise ValueError(f"bit width must be 1..32, got {width}")
    if len(data) * 8 < count * width:
        raise ValueError(f"{count} {width}-bit integers need {(count * width + 7) // 8} bytes, "
                         f"got {len(data)}")
    raw = np.frombuffer(data, dtype=np.uint8)
    weights = (1 << np.arange(width, dtype=np.int64))
    out = np.empty(count, dtype=np.int64)
    for start in range(0, count, _CHUNK):
        stop = min(count, start + _CHUNK)
        first, last = start * width, stop * width
        byte0 = first // 8
        bits = np.unpackbits(raw[byte0:(last + 7) // 8 + 1], bitorder="little")
        bits = bits[first - 8 * byte0:first - 8 * byte0 + (stop - start) * width]
        out[start:stop] = bits.reshape(-1, width).astype(np.int64) @ weights
    return out


def _gaps(positions: np.ndarray) -> np.ndarray:
    """Number of non-survivors before each survivor since the previous one."""
    return np.diff(positions, prepend=-1) - 1


def relative_count(positions: np.ndarray, width: int) -> int:
    """Entries (survivors + fillers) of the relative encoding at ``width`` bits."""
    top = (1 << width) - 1
    return len(positions) + int((_gaps(positions) // top).sum())


def relative_encode(positions: np.ndarray, width: int) -> np.ndarray:
    """Gap codes with fillers (``2**width - 1``) for sorted flat positions."""
    top = (1 << width) - 1
    gaps = _gaps(positions)
    fillers = gaps // top
    codes = np.full(len(positions) + int(fillers.sum()), top, dtype=np.int64)
    real = np.cumsum(fillers + 1) - 1
    codes[real] = gaps - fillers * top
    return codes


def relative_decode(codes: np.ndarray, width: int) -> np.ndarray:
    top = (1 << width) - 1
    real = codes != top
    steps = np.where(real, codes + 1, top)
    return (np.cumsum(steps) - 1)[real]


def bitmask_encode(positions: np.ndarray, numel: int) -> bytes:
    mask = np.zeros(numel, dtype=np.uint8)
    mask[positions] = 1
    return np.packbits(mask, bitorder="little").tobytes()


def bitmask_decode(data: bytes, numel: int) -> np.ndarray:
    if len(data) * 8 < numel:
        raise ValueError(f"a bitmask of {numel} entries needs {(numel + 7) // 8} bytes, "
                         f"got {len(data)}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel, bitorder="little")
    return np.flatnonzero(bits)


def csr_encode(positions: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(survivors per row, column of each survivor)."""
    counts = np.bincount(positions // cols, minlength=rows)
    return counts, positions % cols


def csr_decode(counts: np.ndarray, columns: np.ndarray, cols: int) -> np.ndarray:
    rows = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    return rows * cols + columns


def _csr_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    if len(shape) < 2 or shape[0] == 0:
        return None
    cols = int(np.prod(shape[1:]))
    return (shape[0], cols) if 0 < cols <= MAX_CSR_COLUMNS else None


def choose_positions(positions: np.ndarray, shape: tuple[int, ...], value_bits: int,
                     allow_dense: bool = True) -> tuple[dict, int]:
    """The smallest encoding of these positions plus their values, as (spec, bytes); the
    spec is what :func:`encode_positions` / :func:`decode_positions` take."""
    numel = int(np.prod(shape))
    nnz = len(positions)
    values = (nnz * value_bits + 7) // 8
    options: list[tuple[int, dict]] = [((numel + 7) // 8 + values, {"encoding": "bitmask"})]
    if allow_dense:
        options.insert(0, ((numel * value_bits + 7) // 8, {"encoding": "dense"}))
    grid = _csr_shape(shape)
    if grid is not None:
        counts = np.bincount(positions // grid[1], minlength=grid[0]) if nnz else [0]
        width = uint_width(int(np.max(counts)))
        options.append((grid[0] * width // 8 + 2 * nnz + values,
                        {"encoding": "csr", "count_width": width}))
    gaps = _gaps(positions)
    for width in range(1, 17):
        if (nnz * width + 7) // 8 + values >= min(o[0] for o in options):
            break  # even without fillers this width (and every wider one) loses
        entries = nnz + int((gaps // ((1 << width) - 1)).sum())
        options.append(((entries * width + 7) // 8 + values,
                        {"encoding": "relative", "width": width, "entries": entries}))
    size, spec = min(options, key=lambda o: o[0])  # first of equals: dense, bitmask, csr, ...
    return spec, size


def encode_positions(positions: np.ndarray, shape: tuple[int, ...], spec: dict) -> list[bytes]:
    """The byte segments of ``spec``'s encoding (none for dense)."""
    kind = spec["encoding"]
    if kind == "dense":
        return []
    if kind == "bitmask":
        return [bitmask_encode(positions, int(np.prod(shape)))]
    if kind == "csr":
        rows, cols = _csr_shape(shape)
        counts, columns = csr_encode(positions, rows, cols)
        return [pack_uint(counts, spec["count_width"]), pack_uint(columns, 16)]
    if kind == "relative":
        return [pack_uint(relative_encode(positions, spec["width"]), spec["width"])]
    raise ValueError(f"unknown position encoding {kind!r}")


def decode_positions(segments: list[bytes], shape: tuple[int, ...], spec: dict, nnz: int
                     ) -> np.ndarray | None:
    """Sorted flat positions (None for dense: every entry). Raises ValueError when the data
    does not describe ``nnz`` distinct in-range positions."""
    kind = spec.get("encoding")
    numel = int(np.prod(shape))
    if kind == "dense":
        return None
    if kind == "bitmask":
        positions = bitmask_decode(segments[0], numel)
    elif kind == "csr":
        grid = _csr_shape(shape)
        if grid is None:
            raise ValueError(f"csr encoding does not fit shape {list(shape)}")
        counts = unpack_uint(segments[0], int(spec["count_width"]), grid[0])
        if int(counts.sum()) != nnz:
            raise ValueError(f"csr row counts add up to {int(counts.sum())}, not {nnz}")
        positions = csr_decode(counts, unpack_uint(segments[1], 16, nnz), grid[1])
        if nnz and (positions.max() >= numel or np.any(np.diff(positions) <= 0)):
            raise ValueError("csr column indices are out of order or out of range")
    elif kind == "relative":
        width = int(spec["width"])
        if not 1 <= width <= 16:
            raise ValueError(f"relative index width {width} is not in 1..16")
        positions = relative_decode(unpack_uint(segments[0], width, int(spec["entries"])),
                                    width)
    else:
        raise ValueError(f"unknown position encoding {kind!r}")
    if len(positions) != nnz or (nnz and positions[-1] >= numel):
        raise ValueError(f"positions do not match: {len(positions)} decoded for {nnz} "
                         f"survivors of {numel} entries")
    return positions


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means in one dimension from a linear initialisation (k centroids evenly
    spaced between min and max, as Deep Compression found best for large weights).
    Returns (sorted centroids float64, code of each value). Empty clusters keep their place.
    Assignment by midpoints between sorted centroids is exact nearest-centroid in 1-D."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    centroids = np.linspace(lo, hi, k)
    codes = None
    for _ in range(iterations):
        new_codes = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
        if codes is not None and np.array_equal(new_codes, codes):
            break
        codes = new_codes
        sums = np.bincount(codes, weights=values, minlength=k)
        counts = np.bincount(codes, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled]
        centroids = np.sort(centroids)  # means of ordered cells stay ordered; guards ties
    return centroids, codes


def quantize(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """A codebook of at most 2**bits float32 centroids and one code per value.

    With at most 2**bits distinct values the codebook is those values (lossless). No
    centroid is 0 unless every value in its cell is 0, so quantizing survivors never prunes
    one."""
    values = np.asarray(values, dtype=np.float32)
    if len(values) == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    distinct, inverse = np.unique(values, return_inverse=True)
    if len(distinct) <= (1 << bits):
        return distinct.astype(np.float32), inverse.reshape(-1).astype(np.int64)
    centroids, codes = kmeans_1d(values, 1 << bits)
    codebook = centroids.astype(np.float32)
    for j in np.flatnonzero(codebook == 0):
        members = values[codes == j]
        nonzero = members[members != 0]
        if len(nonzero):  # the member nearest zero keeps the sign and the survivor
            codebook[j] = nonzero[np.argmin(np.abs(nonzero))]
    return codebook, codes

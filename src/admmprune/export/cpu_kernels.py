"""Two compact weight formats and their CPU kernels for batch-1 products with pruned Linear
layers: ``bitmask`` (1/8 byte per weight + 4 per kept weight) and ``index16`` (a 16-bit column
+ 4 bytes per kept weight).

Why home-made kernels: torch's only CPU sparse formats with a fast matrix-vector path are
CSR/COO with 32- or 64-bit indices, which read 8+ bytes per kept weight and lose to dense below
about 85% sparsity here; no library on PyPI that installs beside this torch ships a bitmask or
narrow-index CPU product. The kernels (``kernels/sparse_linear.c``, about 100 lines of C) use
AVX-512 (expand for the bitmask, gathers for index16) where the CPU has it, and scalar loops
elsewhere (which timing will usually reject).

They are compiled on first use with the system's C compiler (``$CC``, else ``cc``) into a cache
folder (``$ADMMPRUNE_KERNEL_DIR``, else ``~/.cache/admmprune/kernels``) and loaded with
ctypes: no build step at install time. Without a compiler, or with ``ADMMPRUNE_NO_KERNEL=1``,
:func:`kernel_available` is False and :func:`admmprune.sparsify` falls back to CSR and dense.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["FORMATS", "PackedWeight", "kernel_available", "kernel_problem", "kernel_uses_simd",
           "pack", "packed_linear"]

SOURCE = Path(__file__).with_name("kernels") / "sparse_linear.c"
FORMATS = ("bitmask", "index16")
WORD = 16  # columns per mask word (one AVX-512 lane mask)
# tried in order: some compilers refuse -march=native or lack OpenMP (then one thread runs)
FLAGS: tuple[list[str], ...] = (["-march=native", "-fopenmp"], ["-march=native"], ["-fopenmp"], [])
BLOCK_WORDS = 64  # 1,024 columns of x (4 KB) per block: they stay in L1 while weights stream


def _compiler() -> str | None:
    configured = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "").split(" ")[0]
    for name in (configured, "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cache_dir() -> Path:
    if os.environ.get("ADMMPRUNE_KERNEL_DIR"):
        return Path(os.environ["ADMMPRUNE_KERNEL_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "admmprune" / "kernels"


def _cpu_signature() -> str:
    """What -march=native depends on: a library built on one CPU may not run on another that
    shares the cache folder."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(compiler: str, target: Path) -> str | None:
    """Compiles the kernel into ``target`` (atomically); returns the error, or None."""
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for arch in FLAGS:
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
            partial = Path(tmp.name)
        command = [compiler, "-O3", *arch, "-shared", "-fPIC", str(SOURCE), "-o", str(partial)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0:
            os.replace(partial, target)
            return None
        partial.unlink(missing_ok=True)
        errors.append(f"{' '.join(command)}: {done.stderr.strip()[-400:]}")
    return "; ".join(errors)


@functools.lru_cache(maxsize=1)
def _library() -> tuple[ctypes.CDLL | None, str | None]:
    if os.environ.get("ADMMPRUNE_NO_KERNEL"):
        return None, "ADMMPRUNE_NO_KERNEL is set"
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler found (set CC, or install gcc or clang)"
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), compiler.encode(), repr(FLAGS).encode(),
                                     platform.machine().encode(),
                                     _cpu_signature().encode()])).hexdigest()[:16]
    target = _cache_dir() / f"sparse_linear-{key}.so"
    if not target.exists():
        try:
            problem = _build(compiler, target)
        except OSError as error:
            problem = f"cannot write {target.parent}: {error}"
        if problem:
            return None, f"the sparse kernels did not compile: {problem}"
    try:
        library = ctypes.CDLL(str(target))
    except OSError as error:  # a truncated or foreign file in the cache: built again next time
        target.unlink(missing_ok=True)
        return None, f"the compiled kernels did not load ({error}); removed {target}"
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    threads = ctypes.c_int
    library.admmprune_bitmask_linear.argtypes = [pointer, size, size, pointer, pointer, pointer,
                                                 size, size, pointer, pointer, size, threads]
    library.admmprune_bitmask_linear.restype = None
    library.admmprune_index16_linear.argtypes = [pointer, size, size, pointer, pointer, pointer,
                                                 pointer, pointer, size, threads]
    library.admmprune_index16_linear.restype = None
    library.admmprune_sparse_simd.restype = ctypes.c_int
    return library, None


def kernel_available() -> bool:
    """Whether the kernels are compiled and loaded (compiles them on first call)."""
    return _library()[0] is not None


def kernel_problem() -> str | None:
    """Why the kernel is unavailable, or None when it is available."""
    return _library()[1]


def kernel_uses_simd() -> bool:
    """Whether the loaded kernels use the AVX-512 paths (False: scalar fallback or none)."""
    library = _library()[0]
    return library is not None and bool(library.admmprune_sparse_simd())


@dataclass(frozen=True)
class PackedWeight:
    """A weight [out_features, in_features] in one of :data:`FORMATS` (layouts: the C source).

    ``structure``: the bitmask's 16-bit words, block-major (bitmask), or each kept weight's
    column (index16), int16 holding the unsigned bits; ``values``: the kept weights in the
    same order (bitmask: then 16 zeros of padding, which its vector loads may touch);
    ``row_start``: int64 offsets of each row's values, [out + 1] (index16), or per block and
    row, [blocks * out] (bitmask: where a thread starts)."""

    format: str
    structure: torch.Tensor
    values: torch.Tensor
    row_start: torch.Tensor
    out_features: int
    in_features: int

    @property
    def words(self) -> int:
        return -(-self.in_features // WORD)

    def nbytes(self) -> int:
        """Bytes a one-row product reads from the weight (padding aside)."""
        if self.format == "bitmask":  # its offsets are read once per thread
            return 2 * self.structure.numel() + 4 * (self.values.numel() - WORD)
        return 2 * self.structure.numel() + 4 * self.values.numel() \
            + 8 * self.row_start.numel()


def _pack_bitmask(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out_features, in_features = weight.shape
    words = -(-in_features // WORD)
    padded = torch.zeros(out_features, words * WORD, dtype=torch.float32)
    padded[:, :in_features] = weight
    bit_values = torch.ones(WORD, dtype=torch.int32) << torch.arange(WORD, dtype=torch.int32)
    masks, values, counts = [], [], []
    for start in range(0, words, BLOCK_WORDS):
        block = padded[:, start * WORD:min(words, start + BLOCK_WORDS) * WORD]
        kept = block != 0
        bits = (kept.view(out_features, -1, WORD).to(torch.int32) * bit_values).sum(-1)
        masks.append(bits.to(torch.int16).reshape(-1))  # the low 16 bits, as the C reads them
        values.append(block[kept])  # row-major: each row's values in column order
        counts.append(kept.sum(1))
    values.append(torch.zeros(WORD))
    kept_per_row = torch.cat(counts)
    row_offsets = kept_per_row.cumsum(0) - kept_per_row  # where each (block, row) starts
    return torch.cat(masks), torch.cat(values), row_offsets


def _pack_index16(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kept = weight != 0
    row_start = torch.zeros(weight.shape[0] + 1, dtype=torch.int64)
    row_start[1:] = kept.sum(1).cumsum(0)
    columns = kept.nonzero()[:, 1].to(torch.int32).to(torch.int16)  # low 16 bits
    return columns, weight[kept], row_start


def pack(weight: torch.Tensor, format: str) -> PackedWeight:
    """Packs a float32 [out, in] weight (zeros are the pruned weights) into ``format``.

    Raises:
        ValueError: for another dtype or rank, an unknown format, or index16 with more than
            65,536 input columns.
    """
    if weight.dim() != 2 or weight.dtype != torch.float32:
        raise ValueError(f"the sparse CPU formats take a 2-D float32 weight, got "
                         f"{tuple(weight.shape)} {weight.dtype}")
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose from {FORMATS}")
    if format == "index16" and weight.shape[1] > 1 << 16:
        raise ValueError(f"index16 addresses at most 65,536 input columns, not "
                         f"{weight.shape[1]}")
    weight = weight.detach().cpu()
    packer = _pack_bitmask if format == "bitmask" else _pack_index16
    structure, values, row_start = packer(weight)
    return PackedWeight(format, structure.contiguous(), values.contiguous(),
                        row_start.contiguous(), *weight.shape)


def packed_linear(x: torch.Tensor, packed: PackedWeight,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` for ``x`` [rows, in_features] float32 on the CPU. Each row streams
    the whole weight: batches beyond a few rows are better served by dense or CSR.

    Raises:
        RuntimeError: when the kernels are unavailable (see :func:`kernel_problem`).
        ValueError: when ``x`` is not float32 CPU with ``in_features`` columns.
    """
    library = _library()[0]
    if library is None:
        raise RuntimeError(f"the sparse kernels are unavailable: {kernel_problem()}")
    if x.dim() != 2 or x.shape[1] != packed.in_features or x.dtype != torch.float32 \
            or x.device.type != "cpu":
        raise ValueError(f"the sparse kernels take float32 CPU inputs [rows, "
                         f"{packed.in_features}], got {tuple(x.shape)} {x.dtype} on {x.device}")
    x = x.contiguous()
    out = torch.empty(x.shape[0], packed.out_features, dtype=torch.float32)
    if bias is not None:  # kept referenced until the call returns
        bias = bias.detach().contiguous()
    bias_pointer = None if bias is None else bias.data_ptr()
    threads = torch.get_num_threads()
    if packed.format == "bitmask":
        library.admmprune_bitmask_linear(
            x.data_ptr(), x.shape[0], x.shape[1], packed.structure.data_ptr(),
            packed.values.data_ptr(), packed.row_start.data_ptr(), packed.words, BLOCK_WORDS,
            bias_pointer, out.data_ptr(), packed.out_features, threads)
    else:
        library.admmprune_index16_linear(
            x.data_ptr(), x.shape[0], x.shape[1], packed.structure.data_ptr(),
            packed.values.data_ptr(), packed.row_start.data_ptr(), bias_pointer,
            out.data_ptr(), packed.out_features, threads)
    return out

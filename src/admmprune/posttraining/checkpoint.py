"""Prune a model whose weights stay on disk: one block in memory at a time.

The model is built with empty weights (accelerate's ``init_empty_weights``: parameters on
the ``meta`` device, buffers such as rotary tables real); the weights outside the blocks
(embeddings, final norm, head) are read from the safetensors checkpoint first, then each
block's tensors just before the engine prunes it (``safetensors.safe_open``: one tensor at a
time, read into memory of its own rather than left a view of a mapping of the whole file).
Once pruned and run, the block is written to its own shard of the output directory and
released back to ``meta``. At the end the weights outside the blocks are written to a last
shard, with the index (``model.safetensors.index.json``) and the source directory's other
files (``config.json`` ...): a Hugging Face directory that ``from_pretrained`` loads as it is.

:func:`prune_checkpoint` does all this for a Hugging Face model directory;
:class:`LazyCheckpoint` is the :class:`~admmprune.posttraining.engine.BlockStore` it uses, for
any ``nn.Module`` built with empty weights whose state-dict names are the checkpoint's.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import jsonfile
from .blocks import find_blocks
from .engine import BlockCallback, LayerRecord, prune_blocks
from .errors import OneShotError
from .methods import LayerMethod

__all__ = ["INDEX", "LazyCheckpoint", "weight_files", "empty_causal_lm", "prune_checkpoint",
           "trim_heap"]

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def weight_files(source: str | Path) -> dict[str, Path]:
    """``{tensor name: safetensors file}`` of a checkpoint: a Hugging Face directory (one
    ``model.safetensors`` or shards listed by ``model.safetensors.index.json``) or one
    ``.safetensors`` file.

    Raises:
        OneShotError: no safetensors weights there.
    """
    source = Path(source)
    if source.is_dir() and (source / INDEX).is_file():
        weight_map = json.loads((source / INDEX).read_text())["weight_map"]
        return {key: source / name for key, name in weight_map.items()}
    path = source / SINGLE if source.is_dir() else source
    if not path.is_file():
        raise OneShotError(f"{source} holds no safetensors weights ({SINGLE} or {INDEX}): "
                           "save the model with save_pretrained(..., safe_serialization=True)")
    with _open(path) as f:
        return {key: path for key in f.keys()}


def _open(path: Path, device: torch.device | str = "cpu") -> Any:
    """safetensors' lazy reader of ``path``, reading each tensor into memory of its own
    (``pread``) where the installed safetensors can (0.8 on).

    Its default backend maps the whole file private and writable, and every tensor it returns
    stays a view of that mapping: while one tensor of a shard lives, the whole shard is in
    the process's data segment, which ``RLIMIT_DATA`` and ``RLIMIT_AS`` count, so a process
    capped below the size of the checkpoint's largest file could not read one block of it.
    """
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt", device=str(device), backend="pread")
    except TypeError:  # safetensors before 0.8: no backend argument, memory-mapped only
        return safe_open(str(path), framework="pt", device=str(device))


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc's
    except (OSError, AttributeError):  # another C library: nothing to call
        return None


_MALLOC_TRIM = _malloc_trim()


def trim_heap() -> bool:
    """Give the C heap's free memory back to the system (glibc's ``malloc_trim``).

    glibc raises its mmap threshold to the size of every large block freed (up to 32 MiB), so
    a block's tensors of a few MiB soon come from the heap, which keeps their space once they
    are freed: without a trim after each block, the resident memory of a pruning run grew
    with depth (to 65% of a 1.7 GiB model pruned block by block,
    ``benchmarks/oneshot_memory.py``).

    Returns:
        Whether there was a ``malloc_trim`` to call.
    """
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def _under(key: str, prefix: str) -> bool:
    return key.startswith(prefix + ".")


class LazyCheckpoint:
    """A block store over a safetensors checkpoint (see the module docstring).

    Call :meth:`load_outside` before the engine runs and :meth:`finish` after it.

    Args:
        model: the model built with empty weights (parameters on ``meta``).
        source: the checkpoint (see :func:`weight_files`).
        out: the output directory to create (written next to it, renamed when complete).
        device: where tensors are loaded.

    Attributes:
        block_bytes: bytes of block tensors materialised now.
        peak_block_bytes: the most ever materialised at once.
    """

    def __init__(self, model: nn.Module, source: str | Path, out: str | Path,
                 device: torch.device | str = "cpu") -> None:
        self.model = model
        self.source = Path(source)
        self.out = Path(out)
        if self.out.exists():
            raise OneShotError(f"{self.out} already exists: choose another output directory "
                               "or remove it")
        self.device = torch.device(device)
        self.files = weight_files(self.source)
        self.aliases: dict[str, list[str]] = {}  # a name -> every name of its Parameter
        by_id: dict[int, list[str]] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            by_id.setdefault(id(param), []).append(name)
        for names in by_id.values():
            for name in names:
                self.aliases[name] = names
        self.block_names: list[str] = []
        self.written: dict[str, str] = {}  # tensor name -> shard file name
        self.shards: list[str] = []  # in the order written
        self.total_size = 0  # bytes written
        self.block_bytes = 0
        self.peak_block_bytes = 0
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))

    # -- reading ---------------------------------------------------------------------------
    def _read(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        by_file: dict[Path, list[str]] = {}
        for key in keys:
            by_file.setdefault(self.files[key], []).append(key)
        for path, names in by_file.items():
            with _open(path, self.device) as f:
                for key in names:
                    tensors[key] = f.get_tensor(key)
        return tensors

    def _set(self, key: str, tensor: torch.Tensor | None) -> int:
        """Put ``tensor`` (None: an empty ``meta`` one) in the model under ``key`` and its
        aliases; returns the bytes it holds, 0 for a key the model does not have."""
        module_name, _, attr = key.rpartition(".")
        try:
            module = self.model.get_submodule(module_name)
        except AttributeError:
            return 0
        old = getattr(module, attr, None)
        if not isinstance(old, torch.Tensor):
            return 0
        value = torch.empty_like(old, device="meta") if tensor is None else tensor
        if tuple(value.shape) != tuple(old.shape):
            raise OneShotError(f"{key} is {tuple(value.shape)} in {self.source} but "
                               f"{tuple(old.shape)} in the model built from its config")
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(value, requires_grad=old.requires_grad)
            for alias in self.aliases.get(key, [key]):
                owner, _, name = alias.rpartition(".")
                setattr(self.model.get_submodule(owner), name, new)
        else:
            setattr(module, attr, value)
        return value.numel() * value.element_size() if tensor is not None else 0

    def _check_loaded(self, module: nn.Module, prefix: str) -> None:
        empty = [f"{prefix}{n}" for n, p in module.named_parameters() if p.device.type == "meta"]
        if empty:
            raise OneShotError(f"{self.source} lacks {len(empty)} tensors of the model, e.g. "
                               f"{empty[:5]}: it is not this model's checkpoint")

    def load_outside(self, blocks: Sequence[tuple[str, nn.Module]]) -> None:
        """Load every tensor outside the blocks (embeddings, norms, head).

        Raises:
            OneShotError: the checkpoint misses one of the model's tensors there.
        """
        self.block_names = [name for name, _ in blocks]
        keys = [k for k in self.files if not any(_under(k, b) for b in self.block_names)]
        for key, tensor in self._read(keys).items():
            self._set(key, tensor)
        for name, param in self.model.named_parameters():
            if param.device.type == "meta" and not any(_under(name, b)
                                                       for b in self.block_names):
                raise OneShotError(f"{self.source} lacks {name}: it is not this model's "
                                   "checkpoint")

    def load(self, name: str, block: nn.Module) -> None:
        """Read ``block``'s tensors (``name`` is its name in the model).

        Raises:
            OneShotError: :meth:`load_outside` was not called first, or the checkpoint
                misses a tensor of the block.
        """
        if not self.block_names:
            raise OneShotError("call load_outside(blocks) before the engine runs: the "
                               "embeddings must be loaded to reach the first block")
        keys = [k for k in self.files if _under(k, name)]
        for key, tensor in self._read(keys).items():
            self.block_bytes += self._set(key, tensor)
        self._check_loaded(block, name + ".")
        self.peak_block_bytes = max(self.peak_block_bytes, self.block_bytes)

    def release(self, name: str, block: nn.Module) -> None:
        """Write ``block``'s tensors to its shard, put them back on ``meta`` and give the
        freed memory back to the system (:func:`trim_heap`)."""
        keys = [k for k in self.files if _under(k, name)]
        self._write(keys, f"block-{len(self.shards):05d}.safetensors")
        for key in keys:
            self._set(key, None)
        self.block_bytes = 0
        trim_heap()

    # -- writing ---------------------------------------------------------------------------
    def _current(self, key: str, unknown: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if key in unknown:
            return unknown[key]
        return self.model.get_parameter(key) if key in self.aliases \
            else self.model.get_buffer(key)

    def _write(self, keys: Sequence[str], file_name: str) -> None:
        from safetensors.torch import save_file

        if not keys:
            return
        present = set(self.aliases) | {n for n, _ in self.model.named_buffers()}
        unknown = self._read([k for k in keys if k not in present])  # passed through as is
        tensors: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for key in keys:
            tensor = self._current(key, unknown).detach().to("cpu").contiguous()
            if tensor.data_ptr() in seen:  # safetensors refuses shared storage
                tensor = tensor.clone()
            seen.add(tensor.data_ptr())
            tensors[key] = tensor
            self.total_size += tensor.numel() * tensor.element_size()
        save_file(tensors, str(self.tmp / file_name), metadata={"format": "pt"})
        self.shards.append(file_name)
        self.written.update({key: file_name for key in keys})

    def finish(self) -> Path:
        """Write the tensors outside the blocks, the index and the source's other files;
        move the directory into place.

        Returns:
            The output directory.
        """
        keys = [k for k in self.files if k not in self.written]
        self._write(keys, "rest.safetensors")
        # Hugging Face's shard names, now that their number is known
        renamed = {old: f"model-{i + 1:05d}-of-{len(self.shards):05d}.safetensors"
                   for i, old in enumerate(self.shards)}
        for old, new in renamed.items():
            (self.tmp / old).rename(self.tmp / new)
        index = {"metadata": {"total_size": self.total_size},
                 "weight_map": {k: renamed[v] for k, v in sorted(self.written.items())}}
        (self.tmp / INDEX).write_text(jsonfile.dumps(index, indent=2) + "\n")
        if self.source.is_dir():
            for path in sorted(self.source.iterdir()):
                if path.is_file() and not path.name.endswith(".safetensors") \
                        and path.name != INDEX:
                    shutil.copy2(path, self.tmp / path.name)
        self.tmp.rename(self.out)
        return self.out

    def discard(self) -> None:
        """Remove the half-written output (after a failure)."""
        shutil.rmtree(self.tmp, ignore_errors=True)


def empty_causal_lm(source: str | Path) -> nn.Module:
    """The causal LM of a Hugging Face directory's ``config.json``, built with empty weights
    (parameters on ``meta``, buffers real) by accelerate's ``init_empty_weights``.

    Raises:
        OneShotError: no ``config.json``; transformers or accelerate missing.
    """
    source = Path(source)
    try:
        import transformers
    except ImportError:
        raise OneShotError("pruning a Hugging Face directory needs transformers (pip install "
                           "transformers)") from None
    try:
        from accelerate import init_empty_weights
    except ImportError:
        raise OneShotError("pruning a checkpoint block by block needs accelerate to build "
                           "the model without weights (pip install accelerate)") from None
    if not (source / "config.json").is_file():
        raise OneShotError(f"{source} is not a Hugging Face model directory (no config.json)")
    config = transformers.AutoConfig.from_pretrained(source)
    with init_empty_weights():  # parameters on meta; buffers (rotary tables) real
        model = transformers.AutoModelForCausalLM.from_config(config)
    # tied weights (GPT-2's head and embedding) are not tied inside init_empty_weights, whose
    # patched register_parameter replaces the shared Parameter: tie them once outside
    model.tie_weights()
    return model


def prune_checkpoint(source: str | Path, out: str | Path, batches: Iterable,
                     method: str | LayerMethod = "sparsegpt", *,
                     all_percent: float | Mapping[str, float] | None = None,
                     nm: tuple[int, int] | None = None, include: Sequence[str] | None = None,
                     exclude: Sequence[str] | None = None, pattern: str | None = None,
                     order: str = "block", max_batches: int | None = None,
                     device: torch.device | str = "cpu", progress: bool = True,
                     keep_masks: bool = False, callback: BlockCallback | None = None
                     ) -> list[LayerRecord]:
    """Prune a Hugging Face model directory block by block, one block in memory at a time,
    into a new Hugging Face directory.

    Args:
        source: the model directory (``config.json`` and safetensors weights).
        out: the directory to create.
        batches, method, all_percent, nm, include, exclude, pattern, order, max_batches,
            progress, keep_masks, callback: as :func:`~admmprune.posttraining.prune_blocks`.
        device: where weights and activations go.

    Returns:
        One :class:`LayerRecord` per pruned layer.

    Raises:
        OneShotError: not a Hugging Face directory, ``out`` exists, a checkpoint that does
            not fit the model, transformers or accelerate missing; or as ``prune_blocks``.
    """
    source = Path(source)
    model = empty_causal_lm(source)
    store = LazyCheckpoint(model, source, out, device)
    try:
        store.load_outside(find_blocks(model, pattern))
        records = prune_blocks(model, batches, method, all_percent=all_percent, nm=nm,
                               include=include, exclude=exclude, pattern=pattern, order=order,
                               max_batches=max_batches, device=device, progress=progress,
                               keep_masks=keep_masks, callback=callback, store=store)
        store.finish()
    except BaseException:
        store.discard()
        raise
    return records

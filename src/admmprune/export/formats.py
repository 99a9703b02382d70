"""Writers of the three export formats and the reader ``load``.

- compressed (``.apz``, :func:`save_compressed`): the pruned tensors as positions of their
  survivors plus values (float as they are, or a per-layer k-means codebook of 2**bits
  centroids), every other tensor as it is, in the container of :mod:`.container`.
- dense (``.safetensors``, :func:`save_dense`): the plain state dict, readable by anyone.
- onnx (``.onnx``, :func:`save_onnx`): torch.onnx export, checked against PyTorch with
  onnxruntime (``pip install 'admmprune[onnx]'``).

Both file kinds that hold weights can record the model's registered name (or import spec)
and its arguments, so :func:`load` rebuilds the module without the code that made it (a
spec from a module the caller allows).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..jsonfile import dumps, loads
from ..selection import SelectionError, prunable_parameters
from . import encoding
from .container import (
    DEFAULT_MAX_RATIO,
    ContainerError,
    is_container,
    read_container,
    write_container,
)
from .files import replacing
from .manifest import DTYPES, MismatchError, TensorSpec, check_record, check_tensors
from .untrusted import (
    DEFAULT_MAX_PARAMS,
    ModelLimitError,
    ModuleNotAllowedError,
    build_recorded,
)

__all__ = ["ExportError", "save_compressed", "save_dense", "save_onnx", "load",
           "load_state_dict", "read_manifest", "shared_names", "BITS"]

BITS = (32, 8, 6, 5, 4)

_DTYPES = DTYPES


class ExportError(ValueError):
    """A model or file that cannot be exported or loaded; the message says what to do."""


def _model_record(model_name: str | None, model_args: Mapping[str, Any] | None) -> dict | None:
    if model_name is None:
        return None
    record = {"name": model_name, "args": dict(model_args or {})}
    try:
        dumps(record)
    except (TypeError, ValueError) as err:
        raise ExportError(f"model_args must be plain JSON values (numbers, strings, lists, "
                          f"dicts) to be recorded in the file: {err}") from None
    return record


def _survivors(tensor: torch.Tensor) -> torch.Tensor:
    """Entries that are not zero (NaN survives). -0.0 counts as pruned and comes back as
    +0.0: pruning by ``w * mask`` leaves -0.0 in half the pruned entries, and storing them
    would undo the compression."""
    return tensor != 0


def sparse_names(model: nn.Module, state: Mapping[str, torch.Tensor],
                  masks: Mapping[str, torch.Tensor] | None, include: Sequence[str],
                  exclude: Sequence[str]) -> dict[str, torch.Tensor]:
    """{state-dict name: boolean support} of the tensors stored sparse."""
    if masks is not None:
        supports = {}
        for name, mask in masks.items():
            if name not in state:
                raise ExportError(f"mask {name!r} names no tensor of the model's state dict")
            tensor = state[name]
            mask = torch.as_tensor(mask).detach().cpu().to(torch.bool)
            if tuple(mask.shape) != tuple(tensor.shape):
                raise ExportError(f"mask {name!r} has shape {list(mask.shape)} but the tensor "
                                  f"has {list(tensor.shape)}")
            if bool((_survivors(tensor) & ~mask).any()):
                raise ExportError(f"{name} holds non-zero weights outside its mask; apply the "
                                  "masks first (pruner.hard_prune() / pruner.enforce())")
            supports[name] = mask
        return supports
    try:
        named = prunable_parameters(model, include, exclude)
    except SelectionError:
        return {}  # nothing prunable: every tensor is stored as it is
    return {name: _survivors(state[name]) for name, _ in named
            if name in state and state[name].is_floating_point()}


def shared_names(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """{name: the first name of the same tensor} for the entries of a state dict that are
    another entry's very tensor (tied weights: same storage, offset, shape, strides and
    dtype), read before anything copies them."""
    first: dict[tuple, str] = {}
    shared = {}
    for name, tensor in state.items():
        if tensor.numel() == 0 or tensor.device.type == "meta":
            continue
        key = (str(tensor.device), tensor.untyped_storage().data_ptr(),
               tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if key in first:
            shared[name] = first[key]
        else:
            first[key] = name
    return shared


def _bitwise_nonzero(flat: torch.Tensor) -> torch.Tensor:
    """Entries whose bits are not all zero: -0.0 and NaN included."""
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()]
    return flat.view(ints) != 0


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    if tensor.numel() == 0:
        return b""
    return tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def _dtype_name(tensor: torch.Tensor) -> str:
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ExportError(f"tensor dtype {tensor.dtype} is not supported by the compressed "
                          f"format (supported: {', '.join(_DTYPES)})")
    return name


def save_compressed(model: nn.Module, path: str | Path, *, bits: int = 32,
                    masks: Mapping[str, torch.Tensor] | None = None,
                    include: Sequence[str] = (), exclude: Sequence[str] = (),
                    model_name: str | None = None, model_args: Mapping[str, Any] | None = None,
                    metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s state dict as a compressed file; returns its path.

    The pruned tensors are the prunable weights (Conv/Linear, ``include``/``exclude`` as for
    the pruner) or the names of ``masks``; their support is the mask, or their non-zero
    entries. A tensor the state dict holds under several names (tied weights) is stored
    once, under its first name, as the tensor of that name is stored. ``bits`` 32 stores
    surviving values as they are (the round trip is bitwise exact); 8/6/5/4 replace them
    by a per-tensor codebook of 2**bits k-means centroids.
    ``model_name``/``model_args`` (a registered model or an import spec) let :func:`load`
    rebuild the module.

    Raises:
        ExportError: bad arguments, or (quantized) a pruned tensor with an inf or NaN
            survivor, which a codebook cannot hold.
    """
    if bits not in BITS:
        raise ExportError(f"bits must be one of {', '.join(map(str, BITS))}, got {bits!r}")
    record = _model_record(model_name, model_args)
    state = model.state_dict()
    shared = shared_names(state)
    state = {k: v.detach().cpu() for k, v in state.items()}
    supports = sparse_names(model, state, masks, include, exclude)
    segments: list[bytes] = []
    offset = 0
    entries = []

    def add(data: bytes) -> list[int]:
        nonlocal offset
        segments.append(data)
        offset += len(data)
        return [offset - len(data), len(data)]

    for name, tensor in state.items():
        entry: dict[str, Any] = {"name": name, "shape": list(tensor.shape),
                                 "dtype": _dtype_name(tensor)}
        if name in shared:
            # a tied weight (a language model's embedding and LM head): stored once, under
            # the first name; its values are that tensor's, exactly
            entry.update(layout="shared", of=shared[name], segments=[])
            entries.append(entry)
            continue
        flat = tensor.contiguous().view(-1)
        item_bits = 8 * flat.element_size()
        if name not in supports:
            # Not pruned, stored exactly; sparse when that is smaller (the biases of dead
            # units, see admmprune.channels.liveness). Bitwise non-zero, so -0.0 is kept.
            spec = None
            if tensor.is_floating_point() and tensor.numel() and bool((flat == 0).any()):
                positions = torch.nonzero(_bitwise_nonzero(flat)).view(-1).numpy()
                spec, _ = encoding.choose_positions(positions, tuple(tensor.shape),
                                                    item_bits, allow_dense=True)
            if spec is None or spec["encoding"] == "dense":
                entry["layout"] = "raw"
                entry["segments"] = [add(_raw_bytes(tensor))]
            else:
                entry.update(layout="sparse", nnz=len(positions), positions=spec,
                             values={"encoding": "raw"})
                entry["segments"] = [add(s) for s in encoding.encode_positions(
                    positions, tuple(tensor.shape), spec)]
                entry["segments"].append(add(_raw_bytes(flat[torch.from_numpy(positions)])))
            entries.append(entry)
            continue
        positions = torch.nonzero(supports[name].reshape(-1)).view(-1).numpy()
        quantized = bits < 32 and tensor.is_floating_point()
        # quantized tensors are never stored dense: a pruned entry would need its own code
        spec, _ = encoding.choose_positions(positions, tuple(tensor.shape),
                                            bits if quantized else item_bits,
                                            allow_dense=not quantized)
        dense = spec["encoding"] == "dense"
        values = flat if dense else flat[torch.from_numpy(positions)]
        entry.update(layout="sparse", nnz=len(positions), positions=spec)
        entry["segments"] = [add(s) for s in encoding.encode_positions(
            positions, tuple(tensor.shape), spec)]
        if quantized:
            floats = values.float()
            bad = int((~torch.isfinite(floats)).sum())
            if bad:
                # one inf/NaN among the k-means inputs makes every centroid non-finite
                raise ExportError(f"{name} holds {bad} non-finite survivor(s) (inf or NaN, "
                                  f"in float32) of {len(floats)}: a {bits}-bit codebook "
                                  "cannot represent them; repair the weights, or export with "
                                  "bits=32, which stores every value as it is")
            codebook, codes = encoding.quantize(floats.numpy(), bits)
            width = max(1, int(np.ceil(np.log2(max(len(codebook), 2)))))
            entry["values"] = {"encoding": "codebook", "bits": width, "size": len(codebook)}
            entry["segments"] += [add(encoding.pack_uint(codes, width)),
                                  add(codebook.astype("<f4").tobytes())]
        else:
            entry["values"] = {"encoding": "raw"}
            entry["segments"].append(add(_raw_bytes(values)))
        entries.append(entry)
    manifest = {"model": record, "bits": bits, "tensors": entries,
                "metadata": dict(metadata or {})}
    path = Path(path)
    try:
        write_container(path, manifest, b"".join(segments))
    except (TypeError, ValueError) as err:
        raise ExportError(f"cannot write {path}: {err}") from None
    return path


def read_manifest(path: str | Path) -> dict:
    """The manifest of a compressed file (checked like :func:`load`, payload not decoded)."""
    return read_container(path, with_payload=False)[0]


def _segment(payload: bytes | bytearray, span: Any, name: str) -> bytes:
    if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) for v in span)
            and 0 <= span[0] and 0 <= span[1] and span[0] + span[1] <= len(payload)):
        raise ValueError(f"tensor {name}: segment {span!r} lies outside the payload")
    return bytes(memoryview(payload)[span[0]:span[0] + span[1]])


def _tensor(entry: dict, spec: TensorSpec, payload: bytes | bytearray) -> torch.Tensor:
    """One tensor of an entry that :func:`.manifest.check_tensors` accepted: what it
    allocates is bounded by the checked shape."""
    name, dtype, shape, numel = spec.name, spec.dtype, spec.shape, spec.numel
    item = torch.empty(0, dtype=dtype).element_size()
    segs = [_segment(payload, s, name) for s in entry["segments"]]

    def raw(data: bytes, count: int) -> torch.Tensor:
        if len(data) != count * item:
            raise ValueError(f"tensor {name}: {len(data)} bytes for {count} {entry['dtype']}")
        if count == 0:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(bytearray(data), dtype=dtype)

    if entry["layout"] == "raw":
        return raw(segs[0], numel).reshape(shape)
    nnz = entry["nnz"]
    spec_pos, values_spec = entry["positions"], entry["values"]
    npos = {"dense": 0, "bitmask": 1, "csr": 2, "relative": 1}[spec_pos["encoding"]]
    positions = encoding.decode_positions(segs[:npos], shape, spec_pos, nnz)
    count = numel if positions is None else nnz
    rest = segs[npos:]
    if values_spec["encoding"] == "raw":
        values = raw(rest[0], count)
    else:
        size, width = values_spec["size"], values_spec["bits"]
        if len(rest[1]) != 4 * size:
            raise ValueError(f"tensor {name}: a codebook of {size} needs {4 * size} bytes")
        codebook = np.frombuffer(rest[1], dtype="<f4")
        codes = encoding.unpack_uint(rest[0], width, count)
        if count and codes.max() >= size:
            raise ValueError(f"tensor {name}: codes do not fit its codebook")
        values = torch.from_numpy(codebook[codes].astype(np.float32)).to(dtype)
    if positions is None:
        return values.reshape(shape)
    out = torch.zeros(numel, dtype=dtype)
    out[torch.from_numpy(positions)] = values
    return out.reshape(shape)


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        state = load_file(str(path))
        record = loads(meta["admmprune_model"]) if "admmprune_model" in meta else None
    except (SafetensorError, OSError, ValueError, RecursionError) as err:
        raise ExportError(f"{path} is not a readable safetensors file ({err})") from None
    return state, record


def _kind(path: Path) -> str:
    """"safetensors", or "container" (an .apz or anything else: read_container names it)."""
    if not path.is_file():
        raise ExportError(f"{path} does not exist")
    with path.open("rb") as handle:
        start = handle.read(16)
    if path.suffix == ".safetensors" or (len(start) > 8 and start[8:9] == b"{"
                                          and not is_container(path)):
        return "safetensors"
    if path.suffix == ".onnx":
        raise ExportError(f"{path} is an ONNX model: run it with onnxruntime "
                          "(onnxruntime.InferenceSession), it does not load as an nn.Module")
    return "container"


def _check_max_params(max_params: Any) -> None:
    if isinstance(max_params, bool) or not isinstance(max_params, int) or max_params < 0:
        raise ExportError(f"max_params must be a whole number >= 0, got {max_params!r}")


def _read_container(path: Path, target: Callable[[dict], nn.Module | None],
                    max_params: int, max_ratio: float, recorded: bool = False
                    ) -> tuple[dict[str, torch.Tensor], nn.Module | None]:
    """The state dict of a container and the module ``target`` chose for it from the
    manifest (None: no module, the shapes are bounded by ``max_params``; ``recorded``: the
    module is the one the file records). The manifest is checked before the payload is
    decompressed."""
    chosen: dict[str, Any] = {}

    def check(manifest: dict) -> None:
        try:
            model = target(manifest)
            shapes = None if model is None else \
                {k: tuple(v.shape) for k, v in model.state_dict().items()}
            chosen["specs"] = check_tensors(manifest, shapes=shapes, max_params=max_params)
        except MismatchError as err:
            if recorded:
                raise ContainerError(f"{path} is corrupt: its tensors do not fit the model it "
                                     f"records ({err}); export it again") from None
            raise ExportError(f"{path} does not fit the model: {err}") from None
        except ModelLimitError as err:
            raise ContainerError(f"{path}: {err}") from None
        except (ValueError, KeyError, TypeError) as err:
            if isinstance(err, (ExportError, ContainerError)):
                raise
            raise ContainerError(f"{path} is corrupt ({err}); export it again") from None
        chosen["model"] = model

    manifest, payload = read_container(path, check=check, max_ratio=max_ratio)
    state: dict[str, torch.Tensor] = {}
    try:
        for entry, spec in zip(manifest["tensors"], chosen["specs"], strict=True):
            # a shared entry is the very tensor of an earlier one (checked by check_tensors)
            state[spec.name] = state[spec.shared] if spec.shared is not None else \
                _tensor(entry, spec, payload)
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise ContainerError(f"{path} is corrupt ({err}); export it again") from None
    return state, chosen["model"]


def _recorded(path: Path, record: Any, max_params: int,
              allow_modules: Collection[str]) -> nn.Module:
    """The model a file records (registered, or a spec of an allowed module), built only
    within ``max_params``."""
    try:
        found = check_record(record)
        if found is None:
            raise ExportError(f"{path} records no registered model; pass the module to fill: "
                              "load(path, model) or load(path, lambda: MyNet())")
        return build_recorded(*found, max_params=max_params, allow_modules=allow_modules)
    except ModelLimitError as err:
        raise ContainerError(f"{path}: {err}") from None
    except ModuleNotAllowedError as err:
        raise ExportError(f"{path} {err}; or pass the module to fill: load(path, "
                          "MyNet())") from None
    except ExportError:
        raise
    except ValueError as err:
        raise ContainerError(f"{path} records a model that cannot be built ({err})") from None


def load_state_dict(path: str | Path, *, max_params: int = DEFAULT_MAX_PARAMS,
                    max_ratio: float = DEFAULT_MAX_RATIO) -> dict[str, torch.Tensor]:
    """The state dict of a compressed (.apz) or dense (.safetensors) file, on the CPU.

    Args:
        path: the file.
        max_params: the most tensor elements an .apz file may hold in all (checked before
            anything is decompressed); raise it only for a trusted file.
        max_ratio: the most an .apz payload may inflate, relative to its compressed size
            (see :func:`.container.read_container`).

    Raises:
        ExportError: the file is missing or of another kind.
        ContainerError: a damaged or crafted .apz file, or one beyond the limits (the
            message says which limit and how to raise it).
    """
    path = Path(path)
    _check_max_params(max_params)
    if _kind(path) == "safetensors":
        return _load_safetensors(path)[0]
    return _read_container(path, lambda manifest: None, max_params, max_ratio)[0]


def load(path: str | Path,
         model_factory: nn.Module | Callable[[], nn.Module] | None = None, *,
         max_params: int = DEFAULT_MAX_PARAMS,
         max_ratio: float = DEFAULT_MAX_RATIO,
         allow_modules: Collection[str] = ()) -> nn.Module:
    """An ordinary ``nn.Module`` (in eval mode) from a compressed or dense file.

    A file is data from whoever wrote it: loading runs no code from it, and what it can
    make this function allocate is bounded. Every tensor's name and shape is checked against
    the module to fill before anything is decompressed, and the registered model a file
    records is built only when it has at most ``max_params`` parameter and buffer elements
    (counted while building it on the ``meta`` device, which allocates nothing).

    Args:
        path: an ``.apz`` or ``.safetensors`` file.
        model_factory: a module to fill in place, or a callable returning one; by default
            the model the file records is built (``create_model(name, **args)``): a
            registered name, or an import spec (``"module:factory"``) of a module in
            ``allow_modules``.
        max_params: the largest recorded model to build, in parameter and buffer elements
            (default 2**28, 1 GiB of float32: four times YOLOv4). Raise it only for a
            trusted file.
        max_ratio: the most an .apz payload may inflate, relative to its compressed size
            (or 32 MiB, whichever is more); raise it only for a trusted file.
        allow_modules: the modules (``"your_resnet"``, as the spec names them) whose
            factories a file's import spec may build; the spec's module is imported then
            (from the Python path or the current directory). A file can make ``load``
            import or call nothing else, even a function of a module already imported.

    Returns:
        The filled module, in eval mode.

    Raises:
        ExportError: the file is missing or of another kind, records no model and none was
            given, records an import spec of a module not in ``allow_modules``, or does not
            fit the given module.
        ContainerError: a damaged or crafted .apz file, a recorded model that cannot be
            built, or a file beyond the limits (the message names the limit and how to
            raise it).
    """
    path = Path(path)
    _check_max_params(max_params)
    if isinstance(model_factory, nn.Module):
        given: nn.Module | None = model_factory
    elif model_factory is not None:
        given = model_factory()
    else:
        given = None
    if _kind(path) == "safetensors":
        state, record = _load_safetensors(path)
        model = given if given is not None else \
            _recorded(path, record, max_params, allow_modules)
    else:
        def target(manifest: dict) -> nn.Module:
            return given if given is not None else \
                _recorded(path, manifest.get("model"), max_params, allow_modules)

        state, filled = _read_container(path, target, max_params, max_ratio,
                                        recorded=given is None)
        assert filled is not None  # target always returns a module
        model = filled
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ExportError(f"{path} does not fit the model: {err}") from None
    return model.eval()


def save_dense(model: nn.Module, path: str | Path, *, model_name: str | None = None,
               model_args: Mapping[str, Any] | None = None) -> Path:
    """The plain state dict as safetensors (no masks, no ADMM state); loadable into the
    unpruned architecture with ``safetensors.torch.load_file`` + ``load_state_dict``."""
    from safetensors.torch import save_file

    record = _model_record(model_name, model_args)
    # clones: safetensors refuses tensors that share storage (tied weights)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": "pt"}
    if record:
        meta["admmprune_model"] = dumps(record)
    path = Path(path)
    with replacing(path) as tmp:  # save_file's own temporary file would leave mode 0600
        save_file(state, str(tmp), metadata=meta)
    return path


def _output_tensors(out: Any, where: str = "output") -> list[torch.Tensor]:
    """The tensors of a forward's output in the order ONNX lists them: a tensor, or a
    (nested) list or tuple of tensors, as the registered models return (detectors: a list
    of heads)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)) and out:
        return [t for i, item in enumerate(out) for t in _output_tensors(item, f"{where}[{i}]")]
    kind = "an empty " + type(out).__name__ if isinstance(out, (list, tuple)) \
        else type(out).__name__
    raise ExportError(f"the model's {where} is {kind}; ONNX export handles a tensor or a "
                      "list/tuple of tensors")


def save_onnx(model: nn.Module, path: str | Path, example: torch.Tensor, *,
              check: bool = True, atol: float = 1e-4) -> dict:
    """Export ``model`` with torch.onnx (dynamic batch) and, with ``check``, compare
    onnxruntime's outputs on ``example`` with PyTorch's.

    The model may return a tensor (ONNX output ``output``) or a list/tuple of tensors, such
    as a detector's heads (outputs ``output0``, ``output1``, ...). The file is written next
    to ``path`` and renamed to it only once exported and checked, so a failure leaves
    nothing behind (and an existing ``path`` as it was).

    Args:
        model: the module (put in eval mode).
        path: the ``.onnx`` file to write.
        example: one input batch to trace and check with.
        check: run the file with onnxruntime and compare every output.
        atol: the largest difference allowed, relative to each output's largest magnitude
            (at least 1).

    Returns:
        {"path": path, "max_abs_diff": the largest difference over the outputs, or None
        without ``check``}.

    Raises:
        ExportError: the exporter fails, the output is not tensors, onnxruntime is missing
            (with ``check``), or its outputs differ from PyTorch's.
    """
    path = Path(path)
    model = model.eval()
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as err:  # noqa: BLE001 - whatever the model's forward raises
        raise ExportError(f"the model does not run on the example input "
                          f"{list(example.shape)}: {err}") from None
    want = [t.detach().cpu().float().numpy() for t in _output_tensors(out)]
    names = ["output"] if len(want) == 1 else [f"output{i}" for i in range(len(want))]
    result: dict[str, Any] = {"path": path, "max_abs_diff": None}
    try:
        with replacing(path) as tmp:
            _export_onnx(model, example, tmp, names)
            if check:
                result["max_abs_diff"] = _check_onnx(tmp, example, want, names, atol)
    except OSError as err:  # the temporary file or the rename
        raise ExportError(f"cannot write {path}: {err}") from None
    return result


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, names: list[str]
                 ) -> None:
    try:
        # the TorchScript exporter: the torch.export one needs onnxscript, not a dependency
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", "Constant folding", UserWarning)
            torch.onnx.export(model, (example,), str(path), input_names=["input"],
                              output_names=names,
                              dynamic_axes={n: {0: "batch"} for n in ["input", *names]},
                              dynamo=False)
    except Exception as err:  # noqa: BLE001 - the exporter raises many kinds
        raise ExportError(f"torch.onnx could not export the model: {err}") from None


def _check_onnx(path: Path, example: torch.Tensor, want: list[np.ndarray], names: list[str],
                atol: float) -> float:
    """The largest difference between onnxruntime's outputs and ``want``; raises
    ExportError when one exceeds ``atol`` (relative to that output's magnitude)."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("checking the ONNX file needs onnxruntime: pip install "
                          "'admmprune[onnx]' (or pass check=False)") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(names, {"input": example.detach().cpu().numpy()})
    worst = 0.0
    for name, g, w in zip(names, got, want, strict=True):
        if g.shape != w.shape:
            raise ExportError(f"onnxruntime's {name} has shape {list(g.shape)}, PyTorch's "
                              f"{list(w.shape)}")
        diff = float(np.max(np.abs(g - w))) if w.size else 0.0
        if not diff <= atol * max(1.0, float(np.max(np.abs(w))) if w.size else 0.0):
            raise ExportError(f"onnxruntime's {name} differs from PyTorch's by {diff:.3g}")
        worst = max(worst, diff)
    return worst

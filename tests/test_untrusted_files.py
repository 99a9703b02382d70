"""Crafted model files (issue 24, item 8): what a file claims never decides what the loader
allocates or builds. Each file is written by the real writers and then tampered with (the
manifest or metadata edited, lengths and checksum made consistent again)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
import zstandard
from safetensors.torch import load_file, save_file

import admmprune
from admmprune.channels.shrink import METADATA_KEY, ShrinkError, load_shrunk, save_shrunk
from admmprune.export import (
    ContainerError,
    ExportError,
    load_state_dict,
    save_compressed,
    save_dense,
)
from admmprune.export.container import HEADER_SIZE, MAGIC
from admmprune.export.untrusted import DEFAULT_MAX_PARAMS

ARGS = {"depth": 1, "width": 8, "input_size": 12, "num_classes": 3}
HUGE_MLP = {"depth": 2, "width": 40_000, "input_size": 784}  # 1.6e9 parameters: 6.5 GB
MB = 1 << 20


def _good_file(directory: Path) -> Path:
    torch.manual_seed(0)
    model = admmprune.create_model("mlp", **ARGS)
    with torch.no_grad():
        for _, weight in admmprune.prunable_parameters(model):
            weight[weight.abs() < weight.abs().median()] = 0
    return save_compressed(model, directory / "good.apz", model_name="mlp", model_args=ARGS)


def _parts(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    _, _, _, manifest_size, _, _ = struct.unpack_from("<8sIIQQ32s", data)
    body = data[HEADER_SIZE:]
    manifest = json.loads(zstandard.ZstdDecompressor().decompress(body[:manifest_size]))
    return manifest, body[manifest_size:]


def _rewrite(path: Path, manifest: dict | None = None, *, text: bytes | None = None,
             payload_z: bytes | None = None) -> Path:
    """``path`` with its manifest (or manifest text) and compressed payload replaced, the
    header lengths and the sha256 made to match: a crafted file that passes every
    integrity check."""
    old_manifest, old_payload_z = _parts(path)
    if text is None:
        text = json.dumps(old_manifest if manifest is None else manifest).encode()
    manifest_z = zstandard.ZstdCompressor().compress(text)
    payload_z = old_payload_z if payload_z is None else payload_z
    head = struct.pack("<8sIIQQ", MAGIC, 1, 0, len(manifest_z), len(payload_z))
    digest = hashlib.sha256(head + manifest_z + payload_z).digest()
    path.write_bytes(head + digest + manifest_z + payload_z)
    return path


def _tampered(directory: Path, edit) -> Path:
    path = _good_file(directory)
    manifest, _ = _parts(path)
    edit(manifest)
    return _rewrite(path, manifest)


def _weight(manifest: dict) -> dict:
    return next(t for t in manifest["tensors"] if t["name"] == "hidden.0.weight")


def _no_survivors(entry: dict, shape: list) -> None:
    """A sparse entry with no survivors: a few bytes of manifest for any shape."""
    entry.update(shape=shape, layout="sparse", nnz=0,
                 positions={"encoding": "relative", "width": 1, "entries": 0},
                 values={"encoding": "raw"}, segments=[[0, 0], [0, 0]])


def _refused(call, error=ContainerError, match: str = "", max_mb: float = 20,
             max_seconds: float = 5):
    """``call`` raises exactly ``error`` (matching ``match``) quickly and without
    allocating (Python and numpy allocations traced)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError) as caught:
            call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
    assert caught.match(match)
    assert time.perf_counter() - start < max_seconds
    assert peak < max_mb * MB, f"peak {peak / MB:.0f} MB"
    return caught.value


def _share(manifest: dict, name: str, of, segments=None) -> None:
    """Entry ``name`` made a tied weight stored as ``of`` (bias 8 and classifier bias 3
    differ in shape: the shape is made ``of``'s where it exists)."""
    entry = next(t for t in manifest["tensors"] if t["name"] == name)
    source = next((t for t in manifest["tensors"] if t["name"] == of), entry)
    if name != "classifier.weight":
        entry["shape"] = list(source["shape"])
    for key in ("positions", "values", "nnz"):
        entry.pop(key, None)
    entry.update(layout="shared", of=of, segments=segments or [])


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


def _entry_set(key, value):
    return lambda m: _weight(m).__setitem__(key, value)


CRAFTED = {
    "shape 2**62 x 2**62, no survivors": (
        lambda m: _no_survivors(_weight(m), [2**62, 2**62]),
        r"its tensors do not fit the model it records \(hidden\.0\.weight is "
        r"\[4611686018427387904, 4611686018427387904\] in the file but \[8, 12\]"),
    "negative shape": (_entry_set("shape", [-1, 12]), "shape .-1, 12. is not a list"),
    "shape of text": (_entry_set("shape", "abc"), "shape abc is not a list"),
    "shape of booleans": (_entry_set("shape", [True, 12]), "is not a list of at most"),
    "unknown dtype": (_entry_set("dtype", "float128"), "unknown dtype 'float128'"),
    "no tensors key": (lambda m: m.pop("tensors"), "the manifest has no list of tensors"),
    "tensors not a list": (_set("tensors", {"a": 1}), "no list of tensors"),
    "entry not an object": (_set("tensors", [1]), "tensor entry 0 is a int, not an object"),
    "entry without a name": (lambda m: _weight(m).pop("name"), "tensor entry 0 has no name"),
    "no layout": (lambda m: _weight(m).pop("layout"), "unknown layout 'None'"),
    "no segments": (lambda m: _weight(m).pop("segments"), "segments are not .offset, length"),
    "segment beyond the payload": (_entry_set("segments", [[0, 2**60]]),
                                   "segments are not .offset, length. pairs inside"),
    "survivors beyond numel": (_entry_set("nnz", 97), "survivor count 97 is not in 0..96"),
    "survivor count as text": (_entry_set("nnz", "3"), "survivor count 3 is not in"),
    "no positions": (lambda m: _weight(m).pop("positions"), "unknown position or value"),
    "unknown encoding": (_entry_set("positions", {"encoding": "zip"}), "unknown position"),
    "twice the same name": (lambda m: m["tensors"].append(m["tensors"][0]), "appears twice"),
    "payload_bytes as text": (_set("payload_bytes", "x"), "payload_bytes is 'x', not a byte"),
    "payload_bytes negative": (_set("payload_bytes", -1), "payload_bytes is -1"),
    "payload_bytes boolean": (_set("payload_bytes", True), "payload_bytes is True"),
    "payload_bytes missing": (lambda m: m.pop("payload_bytes"), "payload_bytes is None"),
    "payload_bytes 2**70": (_set("payload_bytes", 2**70), "claims a payload of "
                            "1,180,591,620,717,411,303,424 bytes from .* max_ratio=100"),
    "model args a list": (_set("model", {"name": "mlp", "args": [1, 2]}),
                          "arguments must be an object of name: value, got list"),
    "model args of a wrong type": (_set("model", {"name": "mlp", "args": {"width": "abc"}}),
                                   "records a model that cannot be built .*'width': 'abc'"),
    "model args unknown": (_set("model", {"name": "mlp", "args": {"wide": 3}}),
                           "unexpected keyword argument 'wide'"),
    "model name a number": (_set("model", {"name": 3, "args": {}}),
                            "model name must be a string, got int"),
    "model name unknown": (_set("model", {"name": "resnet9000"}), "'resnet9000' is not "
                           "registered"),
    "model record without a name": (_set("model", {"args": {}}), "its model record is"),
    "model record a string": (_set("model", "mlp"), "its model record is mlp, not"),
    "shared with a missing tensor": (lambda m: _share(m, "hidden.0.weight", "nope"),
                                     "shares 'nope', which is no earlier stored tensor"),
    "shared with a later tensor": (lambda m: _share(m, "hidden.0.bias", "classifier.bias"),
                                   "shares 'classifier.bias', which is no earlier"),
    "shared of another shape": (lambda m: _share(m, "classifier.weight", "hidden.0.weight"),
                                "of its shape and dtype"),
    "shared naming nothing": (lambda m: _share(m, "hidden.0.bias", 3),
                              "a shared entry names no tensor it shares"),
    "shared with segments": (lambda m: _share(m, "classifier.bias", "hidden.0.bias",
                                              [[0, 12]]),
                             "a shared entry holds no segments"),
    "shared with itself": (lambda m: _share(m, "hidden.0.bias", "hidden.0.bias"),
                           "which is no earlier stored tensor"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_manifest_is_refused_before_anything_is_allocated(case, tmp_path):
    edit, match = CRAFTED[case]
    path = _tampered(tmp_path, edit)
    _refused(lambda: admmprune.load(path), match=match)


def test_a_sparse_tensor_of_any_shape_is_bounded_by_max_params_without_a_model(tmp_path):
    path = _tampered(tmp_path, lambda m: _no_survivors(_weight(m), [50_000, 10_000]))
    err = _refused(lambda: load_state_dict(path), match="hold 500,000,[0-9,]+ elements, more "
                   "than max_params=268,435,456 allows; nothing was decompressed. If you "
                   "trust the file, pass a larger max_params")
    assert str(path) in str(err)
    # the caller's module decides the shapes: a file that differs is refused first
    _refused(lambda: admmprune.load(path, admmprune.create_model("mlp", **ARGS)), ExportError,
             r"does not fit the model: hidden\.0\.weight is \[50000, 10000\] in the file but "
             r"\[8, 12\] in the model")


def test_the_limits_can_be_raised_for_a_trusted_file(tmp_path):
    path = _good_file(tmp_path)
    _refused(lambda: admmprune.load(path, max_params=100),
             match=r"records model 'mlp' with arguments \{'depth': 1, .*more than 100 "
                   r"parameters and buffers \(the limit max_params\); it was not built. If "
                   r"you trust the file, pass a larger max_params: admmprune.load\(path, "
                   r"max_params=...\)")
    _refused(lambda: load_state_dict(path, max_params=100), match="max_params=100")
    assert sum(t.numel() for t in load_state_dict(path, max_params=131).values()) == 131
    assert isinstance(admmprune.load(path, max_params=131), torch.nn.Module)
    with pytest.raises(ExportError, match="max_params must be a whole number"):
        admmprune.load(path, max_params=-1)


def _zeros_frame(size: int, declare: bool) -> bytes:
    """A zstd frame of ``size`` zero bytes, made without holding them (a few KB)."""
    compressor = zstandard.ZstdCompressor(level=1).compressobj(size=size if declare else -1)
    chunk = bytes(MB)
    out = [compressor.compress(chunk) for _ in range(size // MB)]
    return b"".join([*out, compressor.flush()])


def test_the_payload_may_not_inflate_beyond_the_file_size_or_the_shapes(tmp_path):
    path = _good_file(tmp_path)
    manifest, _ = _parts(path)
    bomb = _zeros_frame(256 * MB, declare=False)  # ~8 KB
    _rewrite(path, {**manifest, "payload_bytes": 256 * MB}, payload_z=bomb)
    _refused(lambda: admmprune.load(path), match=r"claims a payload of 268,435,456 bytes "
             r"from [0-9,]+ compressed, more than max_ratio=100 times \(or 33,554,432 bytes\) "
             "allows; it was not decompressed. If you trust the file, pass a larger max_ratio")
    # past the ratio bound, the shapes bound it: 131 elements need far less
    _refused(lambda: admmprune.load(path, max_ratio=1e9),
             match="payload of 268,435,456 bytes is larger than its tensors' shapes can need")


def test_a_frame_that_inflates_beyond_its_declared_size_is_cut_off(tmp_path):
    path = _good_file(tmp_path)
    manifest, _ = _parts(path)
    # the frame's own header says 256 MB; the manifest 1,000 bytes: neither is trusted
    _rewrite(path, {**manifest, "payload_bytes": 1000},
             payload_z=_zeros_frame(256 * MB, declare=True))
    _refused(lambda: admmprune.load(path), match="inflates to more than 1,000 bytes")
    # the same for the manifest: a 64 MB "manifest" is cut off at 16 MB
    _rewrite(path, text=b" " * (64 * MB))
    _refused(lambda: admmprune.load(path), match="inflates to more than 16,777,216 bytes",
             max_mb=40)


def test_a_deeply_nested_manifest_is_refused(tmp_path):
    path = _rewrite(_good_file(tmp_path), text=b"[" * 100_000 + b"]" * 100_000)
    _refused(lambda: admmprune.load(path), match="is corrupt")


# -- shrink's files --------------------------------------------------------------------------

def _shrunk_file(directory: Path, record_edit=None, text: str | None = None) -> Path:
    path = directory / "shrunk.safetensors"
    save_shrunk(admmprune.create_model("mlp", **ARGS), path, model_name="mlp",
                model_args=ARGS)
    if record_edit is not None or text is not None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            record = json.loads(handle.metadata()[METADATA_KEY])
        if record_edit is not None:
            record_edit(record)
        state = load_file(str(path))
        save_file(state, str(path), metadata={"format": "pt", METADATA_KEY:
                                               text if text is not None else json.dumps(record)})
    return path


def _module(name: str, key: str, value):
    return lambda r: r["modules"][name].__setitem__(key, value)


SHRUNK = {
    "not JSON": ({"text": "{nope"}, "its admmprune_shrunk metadata is not JSON"),
    "a list": ({"text": "[1, 2]"}, "metadata is not an object with \"model\""),
    "no model": ({"record_edit": lambda r: r.pop("model")}, "is not an object with"),
    "modules a list": ({"record_edit": lambda r: r.__setitem__("modules", [])},
                       "is not an object with"),
    "args a list": ({"record_edit": lambda r: r.__setitem__("args", [1])},
                    "arguments must be an object of name: value, got list"),
    "args of a wrong type": ({"record_edit": lambda r: r["args"].__setitem__("depth", "x")},
                             "cannot build the recorded model 'mlp'"),
    "model unknown": ({"record_edit": lambda r: r.__setitem__("model", "resnet9000")},
                      "'resnet9000' is not registered"),
    "module spec a number": ({"record_edit": lambda r: r["modules"].__setitem__(
        "hidden.0", 7)}, "module hidden.0: its record is a int, not an object"),
    "features as text": ({"record_edit": _module("hidden.0", "out_features", "8")},
                         "out_features 8 is not a count in 0..8"),
    "features larger than built": ({"record_edit": _module("hidden.0", "out_features",
                                                          2**62)}, "is not a count in 0..8"),
    "unknown module": ({"record_edit": lambda r: r["modules"].__setitem__("nope", {})},
                       "resizes module 'nope'"),
    "model beyond max_params": ({"record_edit": lambda r: r["args"].update(HUGE_MLP)},
                                "more than 268,435,456 parameters and buffers .* pass a larger "
        r"max_params: admmprune.load_shrunk\(path, max_params=...\)"),
}


@pytest.mark.parametrize("case", sorted(SHRUNK))
def test_damaged_shrink_metadata_is_a_shrink_error(case, tmp_path):
    how, match = SHRUNK[case]
    path = _shrunk_file(tmp_path, **how)
    _refused(lambda: load_shrunk(path), ShrinkError, match)


def test_an_intact_shrunk_file_still_loads(tmp_path):
    model = load_shrunk(_shrunk_file(tmp_path))
    assert model.hidden[0].out_features == 8
    with pytest.raises(ShrinkError, match="max_params"):
        load_shrunk(_shrunk_file(tmp_path), max_params=10)


# -- import specs: the caller names the modules a file may build from --------------------------

SPEC_MODULE = "yourmodel_load_spec"
SPEC_CODE = """
from torch import nn


def net(width=4):
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))
"""


@pytest.fixture
def spec_module(tmp_path, monkeypatch) -> str:
    """A module of the caller's, importable but not imported (yet)."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / f"{SPEC_MODULE}.py").write_text(SPEC_CODE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, SPEC_MODULE, raising=False)
    return SPEC_MODULE


def test_load_builds_an_import_spec_only_from_a_module_the_caller_allows(tmp_path,
                                                                          spec_module):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    spec, args = f"{spec_module}:net", {"width": 6}
    files = [save_compressed(model, tmp_path / "m.apz", model_name=spec, model_args=args),
             save_dense(model, tmp_path / "m.safetensors", model_name=spec, model_args=args)]
    for path in files:
        _refused(lambda path=path: admmprune.load(path), ExportError,
                 rf"records the model '{spec}', an import spec: building it imports and runs "
                 rf"module '{spec_module}', which load\(\) does only for a module you allow: "
                 rf"load\(path, allow_modules=\['{spec_module}'\]\)")
        _refused(lambda path=path: admmprune.load(path, allow_modules=["other_module"]),
                 ExportError, "allow_modules")
        assert spec_module not in sys.modules  # nothing of it was imported, nothing ran
    for path in files:
        loaded = admmprune.load(path, allow_modules=[spec_module])
        assert loaded[0].out_features == 6
        for name, tensor in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), (path, name)
    _refused(lambda: admmprune.load(files[0], allow_modules=[spec_module], max_params=10),
             match="more than 10 parameters and buffers")


def test_a_file_cannot_make_load_call_what_the_caller_did_not_allow(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(os, "system", lambda *args, **kwargs: calls.append(args))
    record = {"name": "os:system", "args": {"command": "echo crafted"}}  # os is imported
    path = _tampered(tmp_path, _set("model", record))
    _refused(lambda: admmprune.load(path), ExportError, "'os:system', an import spec")
    _refused(lambda: admmprune.load(path, allow_modules=[SPEC_MODULE]), ExportError,
             r"allow_modules=\['os'\]")
    shrunk = _shrunk_file(tmp_path, lambda r: r.update(model="os:system", args={}))
    _refused(lambda: load_shrunk(shrunk), ShrinkError, "'os:system', an import spec")
    assert calls == []


def test_a_shrunk_import_spec_model_loads_from_an_allowed_module(tmp_path, spec_module):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    path = save_shrunk(model, tmp_path / "small.safetensors", model_name=f"{spec_module}:net",
                       model_args={"width": 6})
    _refused(lambda: load_shrunk(path), ShrinkError, "allow_modules")
    small = load_shrunk(path, allow_modules=[spec_module])
    assert small[0].out_features == 2
    assert torch.equal(small[2].weight, model[2].weight)


# -- the whole process under a memory limit ----------------------------------------------------

_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import torch, admmprune
    from admmprune.export import load_state_dict
    from admmprune.channels.shrink import load_shrunk
    with open("/proc/self/status") as status:
        vm = next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmSize:"))
    limit = vm + 768 * 2**20  # 768 MB more than the interpreter with torch holds now
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    calls = {"load": admmprune.load, "state": load_state_dict, "shrunk": load_shrunk,
             "fill": lambda p: admmprune.load(p, admmprune.create_model("mlp", depth=1,
                                              width=8, input_size=12, num_classes=3))}
    for line in sys.stdin:
        call, path = json.loads(line)
        start = time.perf_counter()
        try:
            calls[call](path)
            result = ["returned", ""]
        except BaseException as err:
            result = [type(err).__name__, str(err)[:300]]
        print(json.dumps([call, path, *result, time.perf_counter() - start]), flush=True)
""")


def test_files_claiming_gigabytes_are_refused_within_a_memory_limit(tmp_path):
    """In a child process that cannot take 768 MB more than it holds, each file (a few KB
    claiming 2 to 6.5 GB) is refused with the library's error, quickly."""
    cases = []
    for name, edit, calls, error in (
            ("sparse_2gb", lambda m: _no_survivors(_weight(m), [50_000, 10_000]),
             ("load", "state", "fill"), ("ContainerError", "ContainerError", "ExportError")),
            ("mlp_6gb", _set("model", {"name": "mlp", "args": HUGE_MLP}),
             ("load",), ("ContainerError",)),
            ("deep", _set("model", {"name": "mlp", "args": {"depth": 10**9, "width": 1}}),
             ("load",), ("ContainerError",))):
        directory = tmp_path / name
        directory.mkdir()
        path = _tampered(directory, edit)
        cases += [(call, str(path), want) for call, want in zip(calls, error, strict=True)]
    shrunk = _shrunk_file(tmp_path, lambda r: r["args"].update(HUGE_MLP))
    cases.append(("shrunk", str(shrunk), "ShrinkError"))
    dense = save_dense(admmprune.create_model("mlp", **ARGS), tmp_path / "dense.safetensors",
                       model_name="mlp", model_args=HUGE_MLP)  # a record that lies
    cases.append(("load", str(dense), "ContainerError"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    lines = "".join(json.dumps([call, path]) + "\n" for call, path, _ in cases)
    done = subprocess.run([sys.executable, "-c", _CHILD], input=lines, capture_output=True,
                          text=True, timeout=120, env=env)
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == len(cases), done.stderr[-2000:]
    for (call, path, want), (_, _, got, message, seconds) in zip(cases, results, strict=True):
        assert (call, Path(path).parent.name, got) == (call, Path(path).parent.name, want), \
            message
        # refused before building: building any of these would take minutes (a billion
        # layers) or hit the memory limit; 30 s leaves room for a busy CI machine (5.3 s seen
        # with two training jobs beside the suite)
        assert seconds < 30, (call, path, seconds)
    assert "max_params" in results[1][3] and "max_params" in results[3][3]


def test_default_max_params_holds_every_registered_model():
    assert DEFAULT_MAX_PARAMS >= 4 * 64_429_584  # YOLOv4 with its buffers

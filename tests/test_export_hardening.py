"""Export of awkward models and files written with the umask (issue 24, items 3, 11, 14)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import onnxruntime  # the test extra installs it: a missing one fails, not skips
import pytest
import torch
import yaml
from torch import nn

import admmprune
from admmprune.channels.shrink import save_shrunk
from admmprune.cli import main
from admmprune.export import BITS, ExportError, save_compressed, save_dense, save_onnx
from admmprune.export.files import replacing
from admmprune.models import list_models
from admmprune.models.registry import model_factory


def _pruned_linear() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            weight = layer.weight
            weight[weight.abs() < weight.abs().median()] = 0.0
    return model


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan"), 1e300])
@pytest.mark.parametrize("bits", [b for b in BITS if b < 32])
def test_quantized_export_refuses_a_non_finite_survivor_naming_the_tensor(bits, bad, tmp_path):
    model = _pruned_linear()
    if bad == 1e300:  # finite in float64, inf once it becomes a float32 centroid
        model = model.double()
    with torch.no_grad():
        row, col = torch.nonzero(model[2].weight)[0].tolist()
        model[2].weight[row, col] = bad
    path = tmp_path / "m.apz"
    with pytest.raises(ExportError, match=r"^2\.weight holds 1 non-finite survivor.*bits=32"):
        save_compressed(model, path, bits=bits)
    assert not path.exists()
    save_compressed(model, path, bits=32)  # stored as it is
    got = admmprune.export.load_state_dict(path)["2.weight"]
    want = model[2].weight.detach()
    assert torch.equal(got.view(torch.int64 if got.dtype == torch.float64 else torch.int32),
                       want.view(torch.int64 if want.dtype == torch.float64 else torch.int32))


def test_quantized_export_of_finite_weights_still_works(tmp_path):
    model = _pruned_linear()
    save_compressed(model, tmp_path / "m.apz", bits=4)
    loaded = admmprune.export.load_state_dict(tmp_path / "m.apz")
    assert bool(torch.isfinite(loaded["0.weight"]).all())
    assert torch.equal(loaded["0.weight"] != 0, model[0].weight != 0)



# -- item 11: written files follow the umask ----------------------------------------------------

@pytest.fixture
def umask():
    """Sets the process umask for a test and restores it afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def _write_every_format(directory: Path) -> list[Path]:
    model = admmprune.create_model("mlp", depth=1, width=8, input_size=6, num_classes=3)
    return [save_compressed(model, directory / "m.apz"),
            save_compressed(model, directory / "m4.apz", bits=4),
            save_dense(model, directory / "m.safetensors"),
            save_onnx(model, directory / "m.onnx", torch.randn(2, 6))["path"],
            save_shrunk(model, directory / "m.shrunk.safetensors", model_name="mlp",
                        model_args={"depth": 1, "width": 8, "input_size": 6,
                                    "num_classes": 3})]


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_mode_of_a_plain_open(umask, mask, mode, tmp_path):
    umask(mask)
    paths = _write_every_format(tmp_path)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in paths} == \
        {p.name: oct(mode) for p in paths}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    # replacing an existing file gives the new one the same mode
    paths = _write_every_format(tmp_path)
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths} == {mode}
    assert len(list(tmp_path.iterdir())) == len(paths)


def test_a_failed_write_leaves_neither_a_temporary_file_nor_a_changed_target(tmp_path):
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk"), replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


# -- item 14: ONNX export of every registered model, checked, nothing left on failure ----------

SMALLEST: dict[str, tuple[dict, tuple[int, ...]]] = {
    "alexnet": ({"num_classes": 3, "image_size": 67, "fc_width": 16}, (2, 3, 67, 67)),
    "gpt": ({"n_layer": 1, "n_embd": 16, "n_head": 2, "context": 8}, (2, 8)),  # byte tokens
    "lenet300": ({"num_classes": 3}, (2, 1, 28, 28)),
    "llama": ({"n_layer": 1, "n_embd": 16, "n_head": 2, "n_kv_head": 1, "intermediate": 24,
               "context": 8}, (2, 8)),
    "lenet5": ({"num_classes": 3}, (2, 1, 28, 28)),
    "mlp": ({"depth": 1, "width": 8, "input_size": 12, "num_classes": 3}, (2, 12)),
    "mobilenet_bn": ({"num_classes": 3, "width": 4}, (2, 1, 28, 28)),
    "resnet_bn": ({"num_classes": 3, "width": 4}, (2, 1, 28, 28)),
    "yolov4": ({"num_classes": 1, "image_size": 32}, (2, 3, 32, 32)),
    "yolov4-tiny": ({"num_classes": 1, "image_size": 32}, (2, 3, 32, 32)),
}


def test_every_registered_model_has_a_smallest_onnx_case():
    # built-in models only: other tests register their own (user files through --import)
    builtin = [n for n in list_models()
               if model_factory(n).__module__.startswith("admmprune.models.")]
    assert sorted(SMALLEST) == sorted(builtin)


@pytest.mark.parametrize("name", sorted(SMALLEST))
def test_every_registered_model_exports_to_onnx_matching_pytorch(name, tmp_path):
    args, shape = SMALLEST[name]
    torch.manual_seed(0)
    model = admmprune.create_model(name, **args).eval()
    x = torch.randint(0, 256, shape) if name in ("gpt", "llama") else torch.randn(*shape)
    result = save_onnx(model, tmp_path / "m.onnx", x[:1])
    assert result["path"] == tmp_path / "m.onnx" and result["max_abs_diff"] < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"),
                                           providers=["CPUExecutionProvider"])
    with torch.no_grad():
        out = model(x)
    want = out if isinstance(out, list) else [out]
    got = session.run(None, {"input": x.numpy()})  # another batch size: the axis is dynamic
    assert len(got) == len(want) == (2 if name == "yolov4-tiny" else 3 if name == "yolov4"
                                     else 1)
    names = [o.name for o in session.get_outputs()]
    assert names == (["output"] if len(want) == 1 else [f"output{i}" for i in range(len(want))])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=1e-3)


class _Nested(nn.Module):
    """A tuple holding a tensor and a list: flattened in order, one ONNX output each."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        y = self.linear(x)
        return y, [y.relu(), y.sum(1)]


def test_tuple_and_nested_outputs_export_one_output_each(tmp_path):
    model = _Nested().eval()
    x = torch.randn(5, 4)
    assert save_onnx(model, tmp_path / "m.onnx", x[:2])["max_abs_diff"] < 1e-5
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"),
                                           providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["output0", "output1", "output2"]
    got = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        y, (relu, total) = model(x)
    for g, w in zip(got, (y, relu, total), strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5)


class _Noisy(nn.Module):
    """Its output differs on every call: PyTorch and onnxruntime cannot agree."""

    def forward(self, x):
        return [x, x + torch.rand_like(x)]


class _Dict(nn.Module):
    def forward(self, x):
        return {"boxes": x}


def test_a_failed_onnx_export_or_check_leaves_nothing_and_keeps_an_existing_file(tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="onnxruntime's output1 differs from PyTorch's"):
        save_onnx(_Noisy(), path, torch.zeros(1, 4))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ExportError, match="output is dict; ONNX export handles a tensor or"):
        save_onnx(_Dict(), path, torch.zeros(1, 4))
    with pytest.raises(ExportError, match=r"does not run on the example input \[1, 3, 20, 20\]"):
        save_onnx(admmprune.create_model("yolov4-tiny", num_classes=1, image_size=32), path,
                  torch.zeros(1, 3, 20, 20))
    with pytest.raises(ExportError, match="cannot write .*no_dir"):
        save_onnx(nn.Linear(4, 2), tmp_path / "no_dir" / "m.onnx", torch.zeros(1, 4))
    path.write_bytes(b"an earlier export")
    with pytest.raises(ExportError, match="differs"):
        save_onnx(_Noisy(), path, torch.zeros(1, 4))
    assert path.read_bytes() == b"an earlier export" and list(tmp_path.iterdir()) == [path]


def test_export_command_writes_a_checked_onnx_of_a_detection_run(tmp_path, digit_set, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"model": "yolov4-tiny", "dataset": "coco", "task": "detection",
         "data_dir": str(digit_set), "image_size": 32, "batch_size": 2, "workers": 0,
         "device": "cpu", "progress": False}))
    torch.save(admmprune.create_model("yolov4-tiny", num_classes=10, image_size=32)
               .state_dict(), run / "model.pt")
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "model.onnx", "model.pt"]

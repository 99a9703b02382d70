"""`admmprune draw` and draw_detections: detection grids from run directories, clear refusals;
and the YOLOv4 COCO recipe validates."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import DETECTION_SMALL, REPO
from PIL import Image

from admmprune.cli import main
from admmprune.cli.draw import PREDICTION_COLOUR, draw_detections
from admmprune.models import create_model, weights_loader
from admmprune.runs.config import load_config
from admmprune.tasks.detection import detect

SMALL = DETECTION_SMALL


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory, digit_set):
    root = tmp_path_factory.mktemp("draw")
    digits = digit_set
    run_dir = root / "run"
    assert main(["prune", "recipes/yolov4_tiny_digits.yaml", "--data-dir", str(digits),
                 "--all-percent", "80", "--run-dir", str(run_dir), *SMALL]) == 0
    return run_dir


def _prediction_pixels(path) -> int:
    """Pixels within a few levels of the detection colour."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    target = np.array([int(PREDICTION_COLOUR[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - target).max(-1) <= 12).sum())


def test_yolov4_coco_recipe_validates():
    config = load_config("recipes/yolov4_coco.yaml")
    assert (config.model, config.dataset, config.task) == ("yolov4", "coco", "detection")
    assert config.image_size in (512, 608) and config.image_size % 32 == 0
    assert config.amp == "bf16" and config.workers == 8 and config.accumulate > 1
    assert config.pretrained.endswith(".weights")
    assert weights_loader("yolov4", config.pretrained) is not None  # darknet, not a state dict
    assert config.all_percent == 92.86
    assert 100 / (100 - config.all_percent) == pytest.approx(14.0, abs=0.01)
    assert config.steps_per_epoch and config.k_step >= 1 and config.retraining_epochs >= 1


def test_draw_detections_writes_a_grid(tmp_path):
    torch.manual_seed(0)
    model = create_model("yolov4-tiny", num_classes=3, image_size=64)
    images = torch.rand(2, 3, 64, 64)
    found = detect(model, images, conf=0.3, max_det=20)
    given = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0]]), "scores": torch.tensor([0.9]),
              "labels": torch.tensor([2])}] * 2
    truth = [{"boxes": torch.tensor([[10.0, 10.0, 38.0, 28.0]]), "labels": torch.tensor([2])},
             {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    out = draw_detections(images, [("random yolov4-tiny", found), ("given", given)], truth,
                          ["a", "b", "c"], tmp_path / "grid.png")
    assert out.stat().st_size > 1000
    width, height = Image.open(out).size
    assert width > height * 0.8  # two columns for two rows, plus the legend
    # the same grid without the given boxes has fewer pixels of the detection colour
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
              "labels": torch.zeros(0, dtype=torch.long)}] * 2
    bare = draw_detections(images, [("random yolov4-tiny", found), ("given", empty)], truth,
                           ["a", "b", "c"], tmp_path / "bare.png")
    assert _prediction_pixels(out) > _prediction_pixels(bare) + 50

    with pytest.raises(ValueError, match="detections for 1 images but 2"):
        draw_detections(images, [("short", found[:1])], truth, None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="picture format"):
        draw_detections(images, [("m", found)], truth, None, tmp_path / "x.txt")


def test_draw_command_dense_next_to_pruned(tmp_path, detection_run, capsys):
    out = tmp_path / "dets.png"
    assert main(["draw", str(detection_run), "--compare-dense", "--images", "2",
                 "--conf", "0.01", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert out.stat().st_size > 1000
    width, height = Image.open(out).size
    assert width == pytest.approx(2 * 3.4 * 110, abs=4)  # two columns: dense, pruned
    assert height == pytest.approx((2 * 3.4 + 0.6) * 110, abs=4)  # two images

    # two run directories: one column each
    two = tmp_path / "two.png"
    assert main(["draw", str(detection_run), str(detection_run), "--images", "1",
                 "--out", str(two)]) == 0
    assert Image.open(two).size[0] == pytest.approx(2 * 3.4 * 110, abs=4)


def test_draw_has_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["draw", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: admmprune draw" in text
    for flag in ("--out", "--images", "--weights", "--compare-dense", "--conf"):
        assert flag in text


def test_draw_refuses_missing_weights(tmp_path, detection_run, capsys):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.yaml", "summary.json", "dense.pt"):
        shutil.copy(detection_run / name, partial / name)
    out = tmp_path / "x.png"
    assert main(["draw", str(partial), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.pt does not exist" in err and "--weights dense" in err
    assert not out.exists()
    assert main(["draw", str(partial), "--weights", "dense", "--images", "1",
                 "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert main(["draw", str(partial), "--weights", "dense", "--compare-dense",
                 "--out", str(out)]) == 2
    assert "--compare-dense" in capsys.readouterr().err


def test_draw_refuses_a_classification_run(tmp_path, capsys):
    run_dir = tmp_path / "lenet"
    assert main(["prune", "recipes/lenet5.yaml", "--dataset", "synthetic", "--train-subset",
                 "64", "--test-subset", "32", "--dense-epochs", "1", "--k-step", "1",
                 "--retraining-epochs", "1", "--no-progress", "--threads", "1",
                 "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()
    out = tmp_path / "x.png"
    assert main(["draw", str(run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is a classification run" in err and "task: detection" in err
    assert not out.exists()
    assert main(["draw", str(run_dir), "--out", str(tmp_path / "x.txt")]) == 2
    assert "end the file name with one of" in capsys.readouterr().err


def test_draw_refuses_a_run_whose_code_changed_unless_allowed(tmp_path, detection_run, capsys):
    """draw rebuilds each run's model from its config, like eval: a file the run imported
    that changed since is refused, and --allow-changed-sources draws with a warning."""
    import json

    import yaml

    from admmprune.imports import file_sha256

    helper = tmp_path / "draw_sources_helper.py"
    helper.write_text("VALUE = 1\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("summary.json", "model.pt"):
        shutil.copy(detection_run / name, run_dir / name)
    config = yaml.safe_load((detection_run / "config.yaml").read_text())
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**config, "imports": [str(helper)]}))
    (run_dir / "sources.json").write_text(json.dumps({str(helper.resolve()):
                                                      file_sha256(helper)}))
    helper.write_text("VALUE = 2\n")
    out = tmp_path / "x.png"
    assert main(["draw", str(run_dir), "--images", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{helper.resolve()} changed since the run" in err and "--allow-changed-sources" in err
    assert not out.exists()
    assert main(["draw", str(run_dir), "--images", "1", "--out", str(out),
                 "--allow-changed-sources"]) == 0
    assert str(helper.resolve()) in capsys.readouterr().err
    assert out.is_file()

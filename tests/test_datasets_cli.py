"""Datasets beyond MNIST through the same command line: Fashion-MNIST, an image-folder tree,
and the seed's two-stage AlexNet run on a generated mini-ImageNet (small images)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO
from imagegen import make_image_tree, make_mini_imagenet
from test_alexnet import make_weights, save_npy

from admmprune.cli import main
from admmprune.data import create_dataset, list_datasets
from admmprune.data.imagenet import read_label_file

TINY = ["--dense-epochs", "1", "--k-step", "2", "--retraining-epochs", "1", "--no-progress",
        "--threads", "1"]
# AlexNet on 67x67 images (1x1x256 before fc6) with narrow fully connected layers.
SMALL_ALEXNET = ["--image-size", "67", "--resize", "76", "--model-args", "{fc_width: 32}",
                 "--batch-size", "4", "--amp", "off", "--accumulate", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def summary_of(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_datasets_command_lists_every_registered_dataset(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    names = [d.name for d in list_datasets()]
    assert {"mnist", "fashion-mnist", "imagefolder", "imagenet", "synthetic"} <= set(names)
    for name in names:
        assert name in out
    assert "classification" in out


def test_fashion_mnist_through_the_cli(tmp_path, fashion_dir):
    run_dir = tmp_path / "run"
    code = main(["prune", "recipes/lenet5_fashion.yaml", "--data-dir", str(fashion_dir.parent),
                 "--train-subset", "400", "--test-subset", "200", "--all-percent", "90",
                 "--run-dir", str(run_dir), *TINY])
    assert code == 0
    summary = summary_of(run_dir)
    assert summary["dataset"] == "fashion-mnist" and summary["metric"] == "accuracy"
    assert 0.1 < summary["pruned_accuracy"] <= 1
    assert summary["pruned_accuracy"] <= summary["pruned_top5"] <= 1
    assert summary["kept"] == 430500 - round(0.9 * 430500)


def test_mnist_files_are_not_fashion_mnist(tmp_path, mnist_dir, capsys):
    code = main(["prune", "recipes/lenet5_fashion.yaml", "--data-dir", str(mnist_dir),
                 "--run-dir", str(tmp_path / "run"), *TINY])
    assert code == 2
    err = capsys.readouterr().err
    assert "not the original Fashion-MNIST" in err
    assert not (tmp_path / "run").exists()  # nothing written for a run that cannot start


def test_imagefolder_trains_prunes_and_evaluates(tmp_path, capsys):
    classes = ["cat", "dog", "emu"]
    make_image_tree(tmp_path / "data" / "train", classes, per_class=8)
    make_image_tree(tmp_path / "data" / "val", classes, per_class=3, seed=1)
    run_dir = tmp_path / "run"
    code = main(["prune", "recipes/lenet5.yaml", "--model", "alexnet", "--dataset",
                 "imagefolder", "--data-dir", str(tmp_path / "data"), "--workers", "2",
                 "--all-percent", "95", "--run-dir", str(run_dir), *TINY, *SMALL_ALEXNET])
    assert code == 0
    summary = summary_of(run_dir)
    assert summary["dataset"] == "imagefolder"
    weights = torch.load(run_dir / "model.pt")
    assert weights["fc8.weight"].shape == (3, 32)  # class count taken from the folders
    assert summary["pruned_top5"] == 1.0  # 3 classes: top-5 holds every class
    assert 0 <= summary["pruned_accuracy"] <= 1
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "top-1 accuracy" in out and "top-5 accuracy" in out
    assert f"{100 * summary['pruned_accuracy']:.2f}%" in out


def test_alexnet_two_stage_run_on_mini_imagenet(tmp_path, capsys):
    """The seed's experiment in miniature: labels written once, a Caffe .npy as the dense
    model, `--stage admm` then `--stage retrain` as two commands, then eval."""
    mini = make_mini_imagenet(tmp_path / "ilsvrc", ["n01440764", "n01443537", "n01484850"],
                              train_per_class=6, val_count=9)
    assert main(["imagenet-labels", "--root", str(mini.root), "--devkit",
                 str(mini.devkit)]) == 0
    labels, classes = read_label_file(mini.root / "val_labels.txt")
    assert labels == mini.val_labels and classes == mini.wnids

    npy = tmp_path / "alexnet.npy"
    save_npy(npy, make_weights(0, image_size=67, fc_width=32, num_classes=3))
    run_dir = tmp_path / "run"
    common = ["--no-progress", "--threads", "1"]
    code = main(["prune", "recipes/alexnet_imagenet.yaml", "--stage", "admm", "--run-dir",
                 str(run_dir), "--data-dir", str(mini.root), "--pretrained", str(npy),
                 "--workers", "0", "--k-step", "2", "--retraining-epochs", "1",
                 "--all-percent", "90", "--optimizer", "adam", "--learning-rate", "1e-4",
                 *common, *SMALL_ALEXNET])
    assert code == 0
    after_admm = summary_of(run_dir)
    assert not after_admm["complete"] and not (run_dir / "model.pt").exists()
    assert (run_dir / "admm.pt").is_file()
    assert [m["phase"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text()
                                    .splitlines())] == ["admm", "admm", "hard_prune"]

    assert main(["prune", "--stage", "retrain", "--run-dir", str(run_dir), *common]) == 0
    summary = summary_of(run_dir)
    assert summary["complete"] and summary["model"] == "alexnet"
    assert summary["kept"] == summary["total"] - round(0.9 * summary["total"])
    for phase in ("dense", "admm", "pruned"):
        assert 0 <= summary[f"{phase}_accuracy"] <= summary[f"{phase}_top5"] <= 1
    state = torch.load(run_dir / "model.pt")
    kept = sum(int(state[f"{n}.weight"].count_nonzero()) for n in
               ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"])
    assert kept <= summary["kept"]
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    assert f"{100 * summary['pruned_accuracy']:.2f}%" in capsys.readouterr().out


def test_eval_reads_the_test_split_only(tmp_path, mnist_dir, monkeypatch):
    """Evaluation needs no training files: the factory is asked for the test split alone."""
    run_dir = tmp_path / "run"
    assert main(["prune", "recipes/lenet5.yaml", "--data-dir", str(mnist_dir),
                 "--train-subset", "200", "--test-subset", "100", "--run-dir", str(run_dir),
                 *TINY]) == 0
    import admmprune.runs.build as build

    asked = []
    real = build.create_dataset

    def spy(name, options, device, splits):
        asked.append(tuple(splits))
        return real(name, options, device, splits)

    monkeypatch.setattr(build, "create_dataset", spy)
    assert main(["eval", str(run_dir)]) == 0
    assert asked == [("test",)]


def test_unknown_dataset_is_refused_with_the_list(tmp_path, capsys):
    code = main(["prune", "recipes/lenet5.yaml", "--dataset", "cifar", "--run-dir",
                 str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'cifar'" in err and "imagefolder" in err


def test_imagefolder_without_data_dir_says_what_to_pass(tmp_path, capsys, monkeypatch):
    code = main(["prune", "recipes/lenet5.yaml", "--dataset", "imagefolder", "--run-dir",
                 str(tmp_path / "run")])
    assert code == 2
    assert "--data-dir" in capsys.readouterr().err


def test_stream_and_tensor_batches_share_the_epoch_order():
    from types import SimpleNamespace

    options = SimpleNamespace(data_dir=None, download=False, train_subset=50, test_subset=20,
                              seed=3, augment_shift=0, batch_size=7)
    data = create_dataset("synthetic", options, torch.device("cpu"))
    from torch.utils.data import TensorDataset

    from admmprune.data import StreamBatches

    stream = StreamBatches(TensorDataset(data.train.x, data.train.y), 7, shuffle=True, seed=3)
    for epoch in (0, 4):
        data.train.set_epoch(epoch)
        stream.set_epoch(epoch)
        a = torch.cat([y for _, y in data.train])
        b = torch.cat([y for _, y in stream])
        assert torch.equal(a, b)
    assert len(stream) == len(data.train) == 8

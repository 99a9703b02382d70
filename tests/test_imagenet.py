"""ILSVRC2012 on a generated mini tree: the three validation label sources agree, the
dataset pairs every file with its sorted-WNID index, and user mistakes get clear errors."""

from __future__ import annotations

import sys
import tarfile

import pytest
import torch
from imagegen import dominant_class, make_mini_imagenet, write_image, write_meta_mat

from admmprune.data.imagenet import (
    ImageNetDataset,
    devkit_wnids,
    make_label_file,
    read_label_file,
    read_val_labels,
    write_label_file,
)
from admmprune.data.mnist import DatasetError

# Sorted: n01440764 (0), n02100735 (1), n02119789 (2); the devkit numbers them
# n02100735 = 1, n02119789 = 2, n01440764 = 3.
WNIDS = ["n02119789", "n01440764", "n02100735"]


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return make_mini_imagenet(tmp_path_factory.mktemp("imagenet"), WNIDS, 2, 7, size=(24, 20))


def _small(**kwargs):
    return dict(resize=16, crop=12, **kwargs)


def test_the_generated_devkit_is_not_in_sorted_order(mini):
    assert mini.wnids == sorted(WNIDS)
    assert mini.devkit_order != mini.wnids
    assert all(mini.devkit_order.index(w) != i for i, w in enumerate(mini.wnids))
    assert set(mini.val_labels.values()) == {0, 1, 2}


def test_all_three_label_sources_give_the_sorted_wnid_indices(mini, tmp_path):
    data = mini.devkit / "data"
    archive = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(mini.devkit, arcname="ILSVRC2012_devkit_t12")
    sources = [mini.devkit, data, archive, data / "meta.mat",
               data / "ILSVRC2012_validation_ground_truth.txt",
               [data / "ILSVRC2012_validation_ground_truth.txt", data / "meta.mat"],
               mini.val_txt, mini.loc_csv]
    for source in sources:
        assert read_val_labels(source, mini.wnids) == mini.val_labels, source
    # the devkit's class list is its leaves only: the non-leaf n00001740 would sort first
    assert devkit_wnids(mini.devkit) == mini.wnids


def test_label_files_from_each_source_are_identical(mini, tmp_path):
    texts = set()
    for name, source in (("devkit", mini.devkit), ("val_txt", mini.val_txt),
                         ("loc_csv", mini.loc_csv)):
        out = make_label_file(mini.root, out=tmp_path / f"{name}.txt", **{name: source})
        texts.add(out.read_text())
        labels, classes = read_label_file(out)
        assert labels == mini.val_labels and classes == mini.wnids
    assert len(texts) == 1
    lines = texts.pop().splitlines()
    assert lines[0] == "# classes: n01440764 n02100735 n02119789"
    assert lines[1] == f"ILSVRC2012_val_00000001.JPEG {mini.val_labels['ILSVRC2012_val_00000001']}"
    assert not list(tmp_path.glob(".*.part"))  # the atomic write left nothing behind


def test_val_dataset_returns_each_images_label(mini, tmp_path):
    labels = make_label_file(mini.root, loc_csv=mini.loc_csv, out=tmp_path / "val_labels.txt")
    ds = ImageNetDataset(mini.root, "val", labels_file=labels, **_small())
    assert ds.classes == mini.wnids and len(ds) == 7 and not ds.train
    assert ds.targets == [mini.val_labels[p.stem] for p in mini.val_files]
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 12, 12) and x.dtype == torch.float32
        assert ds.path(i) == mini.val_files[i]
        assert y == mini.val_labels[mini.val_files[i].stem] == dominant_class(x)
    # a plain Caffe val.txt (no class line) works as a label file too
    caffe = ImageNetDataset(mini.root, "val", labels_file=mini.val_txt, **_small())
    assert caffe.targets == ds.targets
    # no augmentation on val by default: every epoch alike
    first = ds[0][0]
    ds.set_epoch(3)
    assert torch.equal(ds[0][0], first)


def test_train_split_uses_sorted_wnid_folders(mini):
    ds = ImageNetDataset(mini.root, "train", **_small(seed=5))
    assert ds.classes == mini.wnids and ds.train
    assert ds.targets == [0, 0, 1, 1, 2, 2]
    assert [dominant_class(ds[i][0]) for i in range(len(ds))] == ds.targets
    assert ds.path(2) == mini.train_files["n02100735"][0]


def test_val_without_train_takes_classes_from_the_devkit(mini, tmp_path):
    root = tmp_path / "valonly"
    (root / "val").mkdir(parents=True)
    for path in mini.val_files:
        (root / "val" / path.name).write_bytes(path.read_bytes())
    with pytest.raises(DatasetError, match="from ROOT/train or, without it, from the devkit"):
        make_label_file(root, val_txt=mini.val_txt, out=root / "val_labels.txt")
    make_label_file(root, devkit=mini.devkit, out=root / "val_labels.txt")
    ds = ImageNetDataset(root, "val", **_small())  # default label file ROOT/val_labels.txt
    assert ds.classes == mini.wnids
    assert ds.targets == [mini.val_labels[p.stem] for p in mini.val_files]
    # a Caffe val.txt alone does not say which WNIDs the indices stand for
    with pytest.raises(DatasetError, match="class list"):
        ImageNetDataset(root, "val", labels_file=mini.val_txt)


def test_val_sorted_into_wnid_folders_needs_no_label_file(mini, tmp_path):
    root = tmp_path / "sorted"
    for path in mini.train_files["n02119789"] + mini.train_files["n01440764"]:
        for split in ("train", "val"):
            target = root / split / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    ds = ImageNetDataset(root, "val", **_small())
    assert ds.classes == ["n01440764", "n02119789"] and ds.targets == [0, 0, 1, 1]


def test_missing_labels_and_unknown_classes_are_reported(mini, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("".join(mini.val_txt.read_text().splitlines(True)[:-2]))
    with pytest.raises(DatasetError, match="no label for 2 of the 7 images"):
        make_label_file(mini.root, val_txt=short, out=tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()
    with pytest.raises(DatasetError, match="no label for 2 of the 7 images.*imagenet-labels"):
        ImageNetDataset(mini.root, "val", labels_file=short)
    # labels of images that are not there are only counted
    longer = tmp_path / "longer.txt"
    longer.write_text(mini.val_txt.read_text() + "ILSVRC2012_val_00000099.JPEG 1\n")
    make_label_file(mini.root, val_txt=longer, out=tmp_path / "ok.txt")
    with pytest.raises(DatasetError, match=r"1 WNID\(s\) are not among the 3 classes"):
        read_val_labels(mini.loc_csv, mini.wnids[:2] + ["n09999999"])
    with pytest.raises(DatasetError, match=r"label\(s\) are >= the 2 classes"):
        read_val_labels(mini.val_txt, mini.wnids[:2])
    bad = tmp_path / "bad.txt"
    bad.write_text("ILSVRC2012_val_00000001.JPEG zero\n")
    with pytest.raises(DatasetError, match=r"bad.txt:1: expected 'FILENAME INDEX'"):
        read_val_labels(bad, mini.wnids)
    with pytest.raises(ValueError, match="exactly one label source"):
        make_label_file(mini.root, devkit=mini.devkit, val_txt=mini.val_txt, out=bad)


def test_layout_errors_say_what_to_do(mini, tmp_path):
    with pytest.raises(DatasetError, match=r"val_labels.txt does not exist.*admmprune "
                                           r"imagenet-labels --root"):
        ImageNetDataset(mini.root, "val")
    with pytest.raises(DatasetError, match="does not exist"):
        ImageNetDataset(tmp_path / "missing", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="validation folder .* does not exist"):
        ImageNetDataset(tmp_path / "empty", "val")
    with pytest.raises(DatasetError, match="ImageNet training folder .* does not exist"):
        ImageNetDataset(tmp_path / "empty", "train")
    write_image(tmp_path / "odd" / "train" / "cats" / "a.JPEG", (1, 2, 3), (8, 8), 0)
    with pytest.raises(DatasetError, match="not WordNet IDs like n01440764: cats"):
        ImageNetDataset(tmp_path / "odd", "train")
    with pytest.raises(ValueError, match="split"):
        ImageNetDataset(mini.root, "test")
    labels = write_label_file({"ILSVRC2012_val_00000001": 0}, tmp_path / "l.txt",
                              classes=["n01440764", "n02100735"])
    with pytest.raises(DatasetError, match="different class list"):
        ImageNetDataset(mini.root, "val", labels_file=labels)


def test_devkit_problems_are_reported(mini, tmp_path, monkeypatch):
    kit = tmp_path / "kit" / "data"
    write_meta_mat(kit / "meta.mat", mini.devkit_order)
    (kit / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n4\n")
    with pytest.raises(DatasetError, match="IDs 4 are not leaf classes"):
        read_val_labels(kit.parent, mini.wnids)
    (kit / "meta.mat").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="not a readable MATLAB file"):
        read_val_labels(kit.parent, mini.wnids)
    with pytest.raises(DatasetError, match="expected data/meta.mat"):
        read_val_labels(tmp_path, mini.wnids)
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # as if scipy were not installed
    with pytest.raises(DatasetError, match=r"needs scipy: pip install 'admmprune\[imagenet\]'"):
        read_val_labels(mini.devkit, mini.wnids)

"""Image preprocessing (Caffe / standard), decoding, the class-per-folder dataset and the
determinism of its augmentation across epochs and DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from imagegen import CLASS_COLOURS, dominant_class, make_image_tree
from PIL import Image
from torch.utils.data import DataLoader

from admmprune.data.imagefolder import (
    ImageFolderDataset,
    find_split_dirs,
    image_folder_splits,
)
from admmprune.data.images import (
    CaffeTransform,
    StandardTransform,
    load_image,
    make_transform,
)
from admmprune.data.mnist import DatasetError

CLASSES = ["ant", "bee", "cat"]


def _position_image(size: int = 256) -> tuple[Image.Image, np.ndarray]:
    """R = column, G = row, B = (row + column) % 256: each pixel says where it is."""
    rows, cols = np.mgrid[0:size, 0:size]
    rgb = np.stack([cols % 256, rows % 256, (rows + cols) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB"), rgb


def _expected_caffe(rgb: np.ndarray, top: int, left: int, crop: int, mirror: bool) -> np.ndarray:
    window = rgb[top:top + crop, left:left + crop].astype(np.float32)
    if mirror:
        window = window[:, ::-1]
    bgr = window[..., ::-1] - np.array([104.0, 117.0, 123.0], dtype=np.float32)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1))


# --------------------------------------------------------------------------- transforms


def test_caffe_center_crop_is_bgr_minus_mean_at_the_centre():
    image, rgb = _position_image()
    out = CaffeTransform(256, 227, train=False)(image)
    assert out.shape == (3, 227, 227) and out.dtype == torch.float32
    # Caffe's centre offset: (256 - 227) // 2 = 14.
    assert torch.equal(out, torch.from_numpy(_expected_caffe(rgb, 14, 14, 227, False)))
    # spot values, written out by hand: output (0, 0) is pixel row 14, column 14
    assert out[:, 0, 0].tolist() == [28 - 104, 14 - 117, 14 - 123]
    assert out[:, 10, 200].tolist() == [(24 + 214) - 104, 24 - 117, 214 - 123]


def test_caffe_random_crop_and_mirror_follow_the_generator():
    image, rgb = _position_image()
    transform = CaffeTransform(256, 227, train=True)
    seen = set()
    for seed in range(12):
        top, left, mirror = transform.crop_params(np.random.default_rng(seed))
        out = transform(image, np.random.default_rng(seed))
        assert 0 <= top <= 29 and 0 <= left <= 29
        assert torch.equal(out, torch.from_numpy(_expected_caffe(rgb, top, left, 227, mirror)))
        seen.add(mirror)
        if mirror:  # leftmost output column is the crop's rightmost pixel column
            assert out[2, 0, 0].item() == left + 226 - 123
    assert seen == {True, False}


def test_images_are_warped_to_a_square_without_antialiasing():
    # 16 -> 8 columns: bilinear with half-pixel centres averages column pairs (2d, 2d+1),
    # as OpenCV's INTER_LINEAR (Caffe's LMDBs) does; an antialiased filter would blur to 25/75.
    cols = np.array([(0 if x % 4 < 2 else 100) + 50 for x in range(16)], dtype=np.uint8)
    rgb = np.broadcast_to(cols[None, :, None], (5, 16, 3)).copy()
    out = CaffeTransform(8, 8, train=False)(Image.fromarray(rgb, "RGB"))
    assert out.shape == (3, 8, 8)  # 5 x 16 warped to 8 x 8: aspect not kept
    assert out[2, 3].tolist() == [v - 123.0 for v in (50, 150) * 4]


def test_standard_preprocessing_is_rgb_normalised():
    image, rgb = _position_image(64)
    out = StandardTransform(64, 32, train=False)(image)
    assert out.shape == (3, 32, 32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (rgb[16 + 5, 16 + 7] / 255.0 - mean) / std  # centre offset (64 - 32) // 2
    assert np.allclose(out[:, 5, 7].numpy(), expected, atol=1e-5)


def test_transform_arguments_are_checked():
    with pytest.raises(ValueError, match="crop"):
        CaffeTransform(100, 227, train=False)
    with pytest.raises(ValueError, match="preprocess"):
        make_transform("torchvision", train=False)
    with pytest.raises(ValueError, match="generator"):
        CaffeTransform(8, 4, train=True)(Image.new("RGB", (8, 8)))


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"),
                                      ("CMYK", "JPEG"), ("L", "JPEG")])
def test_any_pillow_mode_decodes_as_rgb(tmp_path, mode, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.new(mode, (10, 6)).save(path, format=fmt)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (10, 6)


def test_a_corrupt_image_names_the_file(tmp_path):
    make_image_tree(tmp_path, CLASSES, 2, size=(12, 10))
    bad = tmp_path / "bee" / "img_001.jpg"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated JPEG
    (tmp_path / "cat" / "img_000.jpg").write_bytes(b"not an image at all")
    ds = ImageFolderDataset(tmp_path, train=False, resize=8, crop=8)
    ds[0]
    for index, name in ((3, "bee/img_001.jpg"), (4, "cat/img_000.jpg")):
        with pytest.raises(DatasetError, match=name):
            ds[index]


# --------------------------------------------------------------------------- imagefolder


def test_imagefolder_indices_follow_sorted_folders_and_files(tmp_path):
    # created out of order; a hidden folder and a non-image file must be ignored
    make_image_tree(tmp_path, CLASSES, 3, size=(20, 16))
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "ant" / "notes.txt").write_text("x")
    (tmp_path / "bee" / "sub").mkdir()
    Image.new("RGB", (20, 16), CLASS_COLOURS[1]).save(tmp_path / "bee" / "sub" / "deep.PNG")
    ds = ImageFolderDataset(tmp_path, train=False, resize=16, crop=12)
    assert ds.classes == CLASSES
    assert ds.targets == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert [ds.path(i).name for i in range(4)] == ["img_000.jpg", "img_001.jpg",
                                                   "img_002.jpg", "img_000.jpg"]
    assert ds.path(6).relative_to(tmp_path).as_posix() == "bee/sub/deep.PNG"
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 12, 12) and y == ds.targets[i] and dominant_class(x) == y
    x, y = ds[-1]
    assert y == 2
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_standard_imagefolder_keeps_labels(tmp_path):
    make_image_tree(tmp_path, CLASSES, 1, size=(20, 16), ext=".png")
    ds = ImageFolderDataset(tmp_path, train=True, resize=16, crop=12, preprocess="standard")
    assert [dominant_class(ds[i][0], "standard") for i in range(3)] == [0, 1, 2]


def test_imagefolder_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope", train=False)
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.jpg")
    with pytest.raises(DatasetError, match="no class sub-folders.*1 image files directly"):
        ImageFolderDataset(tmp_path, train=False)
    make_image_tree(tmp_path, CLASSES, 1, size=(8, 8))
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("no images")
    with pytest.raises(DatasetError, match=r"1 class folder\(s\) hold no images \(dog\)"):
        ImageFolderDataset(tmp_path, train=False)
    with pytest.raises(ValueError, match="seed"):
        ImageFolderDataset(tmp_path / "ant", train=False, seed=-1)


def test_split_helper_finds_val_or_test_and_checks_classes(tmp_path):
    with pytest.raises(DatasetError, match="no train/"):
        find_split_dirs(tmp_path)
    make_image_tree(tmp_path / "train", CLASSES, 2, size=(8, 8))
    with pytest.raises(DatasetError, match="no val/ or test/"):
        find_split_dirs(tmp_path)
    make_image_tree(tmp_path / "test", CLASSES, 1, size=(8, 8))
    assert find_split_dirs(tmp_path) == (tmp_path / "train", tmp_path / "test")
    train, evaluation = image_folder_splits(tmp_path, resize=8, crop=6)
    assert (len(train), len(evaluation)) == (6, 3) and train.train and not evaluation.train
    assert train.classes == evaluation.classes == CLASSES
    make_image_tree(tmp_path / "val", ["ant", "cat", "dog"], 1, size=(8, 8))
    assert find_split_dirs(tmp_path)[1] == tmp_path / "val"  # val wins over test
    with pytest.raises(DatasetError, match=r"missing there: bee; 1 class\(es\) are not in .*dog"):
        image_folder_splits(tmp_path)


# --------------------------------------------------------------------------- determinism


@pytest.fixture
def tree(tmp_path):
    make_image_tree(tmp_path, CLASSES, 4, size=(40, 32))
    return tmp_path


def _stack(ds):
    return torch.stack([ds[i][0] for i in range(len(ds))])


def test_augmentation_depends_on_seed_epoch_and_index_only(tree):
    ds = ImageFolderDataset(tree, train=True, resize=32, crop=24, seed=3)
    first = _stack(ds)
    assert torch.equal(_stack(ds), first)  # same epoch again: same crops
    assert torch.equal(ds[5][0], first[5])  # fetch order does not matter
    again = ImageFolderDataset(tree, train=True, resize=32, crop=24, seed=3)
    assert torch.equal(_stack(again), first)
    ds.set_epoch(1)
    second = _stack(ds)
    assert sum(not torch.equal(a, b) for a, b in zip(first, second, strict=True)) >= len(ds) - 2
    ds.set_epoch(0)
    assert torch.equal(_stack(ds), first)
    other_seed = ImageFolderDataset(tree, train=True, resize=32, crop=24, seed=4)
    assert not torch.equal(_stack(other_seed), first)
    evaluation = ImageFolderDataset(tree, train=False, resize=32, crop=24)
    plain = _stack(evaluation)
    evaluation.set_epoch(7)
    assert torch.equal(_stack(evaluation), plain)  # no augmentation: epochs alike


class _EpochOrder:
    """A shuffled order per epoch that does not depend on the DataLoader's own generator
    (worker start-up draws from that one)."""

    def __init__(self, n):
        self.n, self.epoch = n, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch))
                    .tolist())


def _batches(ds, workers, epochs, **kwargs):
    order = _EpochOrder(len(ds))
    loader = DataLoader(ds, batch_size=5, sampler=order, num_workers=workers, **kwargs)
    out = []
    for epoch in epochs:
        ds.set_epoch(epoch)
        order.epoch = epoch
        out.append([(x.clone(), y.clone()) for x, y in loader])
    return out


def test_dataloader_workers_give_the_same_batches(tree):
    ds = ImageFolderDataset(tree, train=True, resize=32, crop=24, seed=1)
    serial = _batches(ds, 0, [0, 1])
    # persistent workers hold their own copy of the dataset: set_epoch must still reach them
    parallel = _batches(ds, 2, [0, 1], persistent_workers=True)
    for epoch in range(2):
        assert len(serial[epoch]) == len(parallel[epoch]) == 3
        for (xs, ys), (xp, yp) in zip(serial[epoch], parallel[epoch], strict=True):
            assert torch.equal(xs, xp) and torch.equal(ys, yp)
    assert not torch.equal(serial[0][0][0], serial[1][0][0])

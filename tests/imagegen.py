"""Small generated image trees for tests: class-per-folder trees and a mini ILSVRC2012 with
its three validation label sources (devkit, Caffe's val.txt, Kaggle's LOC csv).

Every image of class k is CLASS_COLOURS[k] plus a little noise, so a test can tell from a
decoded image which class it belongs to (:func:`dominant_class`) and check that a dataset
pairs each file with the right label, while random crops still differ.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 40), (40, 220, 220),
    (220, 40, 220), (130, 130, 130), (250, 250, 250),
)


def write_image(path: Path, colour: Sequence[int], size: tuple[int, int], seed: int) -> Path:
    """A (width, height) RGB image of ``colour`` with +-20 noise, saved in the format its
    suffix names (JPEG for .JPEG/.jpg)."""
    width, height = size
    rng = np.random.default_rng(seed)
    noise = rng.integers(-20, 21, size=(height, width, 3))
    pixels = np.clip(np.asarray(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else None
    Image.fromarray(pixels, "RGB").save(path, format=fmt, quality=95)
    return path


def dominant_class(image: torch.Tensor, preprocess: str = "caffe") -> int:
    """Index into CLASS_COLOURS nearest to the mean colour of a preprocessed (3, H, W) image."""
    mean = image.double().mean(dim=(1, 2))
    if preprocess == "caffe":
        rgb = (mean + torch.tensor([104.0, 117.0, 123.0], dtype=torch.float64)).flip(0)
    else:
        rgb = (mean * torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)
               + torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)) * 255
    colours = torch.tensor(CLASS_COLOURS, dtype=torch.float64)
    return int(((colours - rgb) ** 2).sum(dim=1).argmin())


def make_image_tree(root: Path, classes: Sequence[str], per_class: int,
                    size: tuple[int, int] = (40, 32), ext: str = ".jpg", seed: int = 0
                    ) -> dict[str, list[Path]]:
    """ROOT/<class>/img_NNN<ext>, ``per_class`` images each; class ``classes[k]`` gets
    CLASS_COLOURS[k] (pass the class names sorted so that k is the dataset's index).
    Returns {class: [paths]}."""
    written: dict[str, list[Path]] = {}
    for k, name in enumerate(classes):
        written[name] = [
            write_image(Path(root) / name / f"img_{i:03d}{ext}", CLASS_COLOURS[k], size,
                        seed=seed * 100_003 + k * 1009 + i)
            for i in range(per_class)
        ]
    return written


@dataclass
class MiniImageNet:
    root: Path
    wnids: list[str]                 # sorted: position = class index
    devkit_order: list[str]          # WNID of ILSVRC2012_ID 1, 2, ... (not sorted)
    train_files: dict[str, list[Path]]
    val_files: list[Path]            # ROOT/val/ILSVRC2012_val_NNNNNNNN.JPEG, in order
    val_labels: dict[str, int]       # stem -> sorted-WNID index (the truth)
    devkit: Path                     # holds data/meta.mat and data/..._ground_truth.txt
    val_txt: Path                    # Caffe's format
    loc_csv: Path                    # Kaggle's format


def write_meta_mat(path: Path, leaves: Sequence[str], non_leaves: Sequence[str] = ()) -> Path:
    """A devkit meta.mat: struct array ``synsets`` with the real fields; ILSVRC2012_ID i+1 is
    ``leaves[i]`` (num_children 0), then the non-leaf synsets (num_children > 0)."""
    import scipy.io

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images"]
    synsets = np.zeros((len(leaves) + len(non_leaves), 1), dtype=[(f, "O") for f in fields])
    for i, wnid in enumerate([*leaves, *non_leaves]):
        leaf = i < len(leaves)
        children = np.zeros((1, 0)) if leaf else np.arange(1, len(leaves) + 1)[None, :]
        synsets[i, 0] = (
            np.array([[i + 1]], dtype=np.uint16), np.array([wnid]), np.array([f"words {wnid}"]),
            np.array([f"gloss of {wnid}"]), np.array([[0 if leaf else len(leaves)]], np.uint8),
            children.astype(np.uint16), np.array([[0 if leaf else 1]], np.uint8),
            np.array([[1300 if leaf else 0]], np.uint16),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"synsets": synsets})
    return path


def make_mini_imagenet(root: Path, wnids: Sequence[str], train_per_class: int, val_count: int,
                       size: tuple[int, int] = (40, 32), seed: int = 0) -> MiniImageNet:
    """ROOT/train/<WNID>/<WNID>_N.JPEG, a flat ROOT/val/ILSVRC2012_val_NNNNNNNN.JPEG, and
    the three label sources under ROOT/labels/. The devkit's ID order is the sorted WNIDs
    rotated by one (no class keeps its index), and meta.mat also holds a non-leaf synset
    whose WNID sorts first. Needs scipy (for meta.mat)."""
    root = Path(root)
    wnids = sorted(wnids)
    if len(wnids) < 2 or val_count < len(wnids):
        raise ValueError("need >= 2 WNIDs and at least one val image per class")
    devkit_order = wnids[1:] + wnids[:1]
    train_files: dict[str, list[Path]] = {}
    for k, wnid in enumerate(wnids):
        train_files[wnid] = [
            write_image(root / "train" / wnid / f"{wnid}_{i + 1}.JPEG", CLASS_COLOURS[k], size,
                        seed=seed * 100_003 + k * 1009 + i)
            for i in range(train_per_class)
        ]
    rng = random.Random(seed)
    truth = list(range(len(wnids))) + [rng.randrange(len(wnids))
                                       for _ in range(val_count - len(wnids))]
    rng.shuffle(truth)
    val_files, val_labels = [], {}
    for n, k in enumerate(truth, 1):
        stem = f"ILSVRC2012_val_{n:08d}"
        val_files.append(write_image(root / "val" / f"{stem}.JPEG", CLASS_COLOURS[k], size,
                                     seed=seed * 100_003 + 77_777 + n))
        val_labels[stem] = k

    labels = root / "labels"
    devkit = labels / "ILSVRC2012_devkit_t12"
    write_meta_mat(devkit / "data" / "meta.mat", devkit_order, non_leaves=["n00001740"])
    ids = [devkit_order.index(wnids[k]) + 1 for k in truth]
    (devkit / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{i}\n" for i in ids))
    val_txt = labels / "val.txt"
    val_txt.write_text("".join(f"{s}.JPEG {k}\n" for s, k in val_labels.items()))
    rows = [f"{s},{wnids[k]} 1 2 30 28 {wnids[k]} 5 6 20 20 " for s, k in val_labels.items()]
    rng.shuffle(rows)  # Kaggle's file is not in image order
    loc_csv = labels / "LOC_val_solution.csv"
    loc_csv.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    return MiniImageNet(root=root, wnids=wnids, devkit_order=devkit_order,
                        train_files=train_files, val_files=val_files, val_labels=val_labels,
                        devkit=devkit, val_txt=val_txt, loc_csv=loc_csv)

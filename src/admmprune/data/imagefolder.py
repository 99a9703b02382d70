"""A class-per-folder image tree (``ROOT/<class>/**/*.jpg``) as a map-style dataset, and a
helper that finds the ``train/`` and ``val/`` (or ``test/``) trees of a data directory.

Class names are the sorted sub-folder names and a class's index is its position in that
order; files are sorted, so the same tree always gives the same indices. Folders and files
whose names start with a dot (``.ipynb_checkpoints``, ``.DS_Store``) are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .errors import DatasetError
from .images import IMAGE_EXTENSIONS, ImageFiles, check_seed, make_transform
from .loader import image_options, stream_splits
from .registry import register_dataset

__all__ = [
    "ImageFolderDataset",
    "EVAL_SPLITS",
    "find_class_folders",
    "list_images",
    "scan_class_tree",
    "find_split_dirs",
    "image_folder_splits",
]

EVAL_SPLITS: tuple[str, ...] = ("val", "test")


def _normalise_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(extensions, str):
        raise TypeError("extensions must be a sequence of suffixes such as ('.jpg', '.png')")
    return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def _is_image(name: str, extensions: tuple[str, ...]) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions


def list_images(directory: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                recursive: bool = True) -> list[str]:
    """Image files under ``directory`` (suffix matched case-insensitively), as sorted paths
    relative to ``directory`` with ``/`` separators."""
    extensions = _normalise_extensions(extensions)
    found: list[str] = []
    if not recursive:
        with os.scandir(directory) as entries:
            found = [e.name for e in entries
                     if _is_image(e.name, extensions) and e.is_file()]
        return sorted(found)
    for parent, dirs, names in os.walk(directory, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(parent, directory)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        found.extend(prefix + n for n in names if _is_image(n, extensions))
    return sorted(found)


def find_class_folders(root: str | os.PathLike[str], what: str = "image tree") -> list[str]:
    """Sorted names of the class sub-folders of ``root``; :class:`DatasetError` when ``root``
    is missing or has none."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"{what} {root} does not exist or is not a directory. Pass the folder that holds "
            "one sub-folder per class (ROOT/<class>/<image files>)."
        )
    with os.scandir(root) as entries:
        classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not classes:
        loose = list_images(root, recursive=False)
        hint = (f" It holds {len(loose)} image files directly; move each class's images into "
                "its own sub-folder ROOT/<class>/." if loose else "")
        raise DatasetError(f"{what} {root} has no class sub-folders.{hint} Expected "
                           "ROOT/<class>/<image files>, one folder per class.")
    return classes


def scan_class_tree(root: str | os.PathLike[str],
                    extensions: Sequence[str] = IMAGE_EXTENSIONS,
                    what: str = "image tree",
                    ) -> tuple[list[str], list[str], list[int]]:
    """(classes, files relative to root, targets) of a class-per-folder tree. Every class
    folder must hold at least one image (searched recursively)."""
    root = Path(root)
    classes = find_class_folders(root, what)
    extensions = _normalise_extensions(extensions)
    files: list[str] = []
    targets: list[int] = []
    empty: list[str] = []
    for index, name in enumerate(classes):
        images = list_images(root / name, extensions)
        if not images:
            empty.append(name)
        files.extend(f"{name}/{f}" for f in images)
        targets.extend([index] * len(images))
    if empty:
        shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        raise DatasetError(
            f"{what} {root}: {len(empty)} class folder(s) hold no images ({shown}); looked for "
            f"files ending in {', '.join(extensions)}. Add images or remove the empty folders "
            "(every folder counts as a class, so an empty one adds a class that never occurs)."
        )
    return classes, files, targets


class ImageFolderDataset(ImageFiles):
    """Images in ``ROOT/<class>/`` folders, labelled by the sorted position of their folder.

    ``train=True`` draws a random crop and mirror per (seed, epoch, index); ``train=False``
    takes the centre crop. ``preprocess="caffe"`` gives BGR 0-255 minus the Caffe mean (what
    Caffe-converted models expect); ``"standard"`` gives RGB 0-1 normalised by ImageNet's
    mean and std. Images are warped to ``resize`` x ``resize`` before cropping ``crop``.
    """

    def __init__(self, root: str | os.PathLike[str], *, train: bool, resize: int = 256,
                 crop: int = 227, preprocess: str = "caffe", seed: int = 0,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        transform = make_transform(preprocess, train=train, resize=resize, crop=crop)
        check_seed(seed)  # before listing what may be a million files
        classes, files, targets = scan_class_tree(root, extensions)
        super().__init__(root, files, targets, classes, transform, seed=seed)
        self.train = train


def find_split_dirs(directory: str | os.PathLike[str],
                    eval_splits: Sequence[str] = EVAL_SPLITS) -> tuple[Path, Path]:
    """(DIR/train, DIR/val) of a data directory; ``DIR/test`` stands in for ``val`` when
    there is no ``val``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"data directory {directory} does not exist or is not a directory.")
    train = directory / "train"
    if not train.is_dir():
        raise DatasetError(
            f"{directory} has no train/ folder. Expected DIR/train/<class>/... and "
            f"DIR/{'/ or DIR/'.join(eval_splits)}/<class>/... with the same class folders."
        )
    for name in eval_splits:
        if (directory / name).is_dir():
            return train, directory / name
    raise DatasetError(
        f"{directory} has train/ but no {' or '.join(f'{s}/' for s in eval_splits)} folder for "
        "evaluation. Add one with the same class sub-folders as train/."
    )


def _check_same_classes(train: Sequence[str], other: Sequence[str], train_dir: Path,
                        other_dir: Path) -> None:
    if list(train) == list(other):
        return
    missing = sorted(set(train) - set(other))
    extra = sorted(set(other) - set(train))

    def few(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} class(es) of {train_dir} are missing there: {few(missing)}")
    if extra:
        parts.append(f"{len(extra)} class(es) are not in {train_dir}: {few(extra)}")
    raise DatasetError(
        f"{other_dir} and {train_dir} must have the same class folders (a class's index is "
        f"its sorted position, so any difference mislabels images): {'; '.join(parts)}."
    )


def image_folder_splits(directory: str | os.PathLike[str], *, resize: int = 256,
                        crop: int = 227, preprocess: str = "caffe", seed: int = 0,
                        extensions: Sequence[str] = IMAGE_EXTENSIONS,
                        ) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """(training set with augmentation, evaluation set with centre crops) of a directory
    holding ``train/`` and ``val/`` (or ``test/``) class trees with identical class lists."""
    train_dir, eval_dir = find_split_dirs(directory)
    kwargs = dict(resize=resize, crop=crop, preprocess=preprocess, seed=seed,
                  extensions=extensions)
    # Compare the class lists before listing thousands of files.
    _check_same_classes(find_class_folders(train_dir), find_class_folders(eval_dir),
                        train_dir, eval_dir)
    return (ImageFolderDataset(train_dir, train=True, **kwargs),
            ImageFolderDataset(eval_dir, train=False, **kwargs))


@register_dataset("imagefolder", "your own images: DATA_DIR/train/<class>/*.jpg and "
                                 "DATA_DIR/val/<class>/ (or test/), class = sorted folder "
                                 "position; streamed with Pillow")
def _imagefolder_splits(options, device, splits):
    if not options.data_dir:
        raise DatasetError("dataset imagefolder needs data_dir (--data-dir DIR) holding "
                           "train/<class>/ and val/<class>/ (or test/<class>/) image folders")
    kwargs = image_options(options)
    if "train" in splits:
        train, test = image_folder_splits(options.data_dir, **kwargs)
    else:
        _, eval_dir = find_split_dirs(options.data_dir)
        train, test = None, ImageFolderDataset(eval_dir, train=False, **kwargs)
    return stream_splits(train, test if "test" in splits else None, options, device)

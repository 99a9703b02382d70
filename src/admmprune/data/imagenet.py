"""ILSVRC2012 (ImageNet-1k) with the class indices Caffe and bvlc_alexnet.npy use.

Layout (the original tarballs unpacked, or Kaggle's ``ILSVRC/Data/CLS-LOC``)::

    ROOT/train/<WNID>/*.JPEG            one folder per class (1000)
    ROOT/val/ILSVRC2012_val_00000001.JPEG ...   flat; labels come from a label file
    ROOT/val/<WNID>/*.JPEG              (also accepted: val sorted into class folders)

A class's index is the position of its WNID in sorted order. Validation labels can be taken
from any of three sources, which all give the same indices:

* the devkit: ``data/ILSVRC2012_validation_ground_truth.txt`` holds one ILSVRC2012_ID per
  validation image, and ``data/meta.mat`` maps those IDs (which are NOT in sorted-WNID
  order) to WNIDs; a devkit folder, its ``data/`` folder or the ``.tar.gz`` is accepted;
* Caffe's ``val.txt``: ``ILSVRC2012_val_00000001.JPEG 65``, indices already sorted-WNID;
* Kaggle's ``LOC_val_solution.csv``: ``ILSVRC2012_val_00000001,n01751748 x y x y ...``.

:func:`make_label_file` (``admmprune imagenet-labels``) turns one of them into the label file
:class:`ImageNetDataset` reads: Caffe's val.txt format, sorted by file name, preceded by a
``# classes: WNID ...`` comment that records the class list (so the validation set can be
used without ``ROOT/train``). Its default place is ``ROOT/val_labels.txt``; a plain Caffe
val.txt works as a label file too.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .imagefolder import find_class_folders, list_images, scan_class_tree
from .images import IMAGE_EXTENSIONS, ImageFiles, check_seed, make_transform
from .loader import image_options, stream_splits
from .registry import register_dataset

__all__ = [
    "DEFAULT_LABELS_NAME",
    "ImageNetDataset",
    "devkit_wnids",
    "make_label_file",
    "read_devkit",
    "read_label_file",
    "read_val_labels",
    "train_wnids",
    "val_stem",
    "write_label_file",
]

log = logging.getLogger(__name__)

DEFAULT_LABELS_NAME = "val_labels.txt"
GROUND_TRUTH_NAME = "ILSVRC2012_validation_ground_truth.txt"
META_NAME = "meta.mat"
CLASSES_HEADER = "# classes:"
_WNID = re.compile(r"n\d{8}")
_PathLike = str | os.PathLike[str]


def _labels_hint(root: Path | str = "ROOT") -> str:
    return (f"Create it with `admmprune imagenet-labels --root {root} (--devkit DIR | --val-txt "
            f"FILE | --loc-csv FILE) --out {Path(root) / DEFAULT_LABELS_NAME}` (or pass "
            "labels_file=).")


def val_stem(name: str) -> str:
    """``ILSVRC2012_val_00000001.JPEG`` -> ``ILSVRC2012_val_00000001``: labels are matched
    on the name without its image suffix, so .JPEG, .jpg or none all match."""
    base, ext = os.path.splitext(name)
    return base if ext.lower() in IMAGE_EXTENSIONS else name


def _few(names: Sequence[str], n: int = 5) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def _check_wnids(wnids: Sequence[str], where: str) -> None:
    bad = [w for w in wnids if not _WNID.fullmatch(w)]
    if bad:
        raise DatasetError(
            f"{where}: {len(bad)} folder(s) are not WordNet IDs like n01440764: {_few(bad)}. "
            "ImageNet's train/ holds one folder per WNID; for another class-per-folder tree "
            "use the imagefolder dataset."
        )


def train_wnids(root: _PathLike) -> list[str]:
    """Sorted WNIDs of the class folders in ``ROOT/train``."""
    train = Path(root) / "train"
    wnids = find_class_folders(train, "ImageNet training folder")
    _check_wnids(wnids, str(train))
    return wnids


# --------------------------------------------------------------------------- devkit


def _import_loadmat():
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise DatasetError(
            "reading the ImageNet devkit's meta.mat needs scipy: pip install 'admmprune["
            "imagenet]' (or pip install scipy), or use Caffe's val.txt / Kaggle's "
            "LOC_val_solution.csv instead."
        ) from exc
    return loadmat


def _item(value: object) -> object:
    # loadmat wraps MATLAB scalars in arrays of varying depth depending on squeeze_me.
    array = np.asarray(value)
    return array.ravel()[0].item() if array.size else None


def _parse_meta(data: bytes, where: str) -> dict[int, str]:
    """ILSVRC2012_ID -> WNID of the leaf synsets (num_children == 0) in a meta.mat."""
    loadmat = _import_loadmat()
    try:
        mat = loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=True)
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError...
        raise DatasetError(f"{where}: not a readable MATLAB file ({exc}). Use the meta.mat of "
                           "the ILSVRC2012 devkit (ILSVRC2012_devkit_t12).") from exc
    synsets = mat.get("synsets")
    fields = getattr(getattr(synsets, "dtype", None), "names", None) or ()
    if synsets is None or not {"ILSVRC2012_ID", "WNID", "num_children"} <= set(fields):
        raise DatasetError(f"{where}: no struct array 'synsets' with fields ILSVRC2012_ID, "
                           "WNID, num_children. Use the meta.mat of the ILSVRC2012 devkit.")
    synsets = np.atleast_1d(synsets)
    leaves: dict[int, str] = {}
    for entry in synsets.ravel():
        if int(_item(entry["num_children"]) or 0) != 0:
            continue
        ident, wnid = int(_item(entry["ILSVRC2012_ID"])), str(_item(entry["WNID"]))
        if ident in leaves:
            raise DatasetError(f"{where}: ILSVRC2012_ID {ident} appears twice.")
        leaves[ident] = wnid
    if not leaves:
        raise DatasetError(f"{where}: no leaf synsets (num_children == 0).")
    return leaves


def _parse_ground_truth(text: str, where: str) -> list[int]:
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            ids.append(int(line))
        except ValueError:
            raise DatasetError(f"{where}:{number}: expected one ILSVRC2012_ID per line, got "
                               f"{line.strip()[:60]!r}.") from None
    if not ids:
        raise DatasetError(f"{where} is empty.")
    return ids


def _devkit_files(devkit: Path) -> tuple[tuple[bytes, str], tuple[str, str]]:
    """((meta.mat bytes, where), (ground truth text, where)) from a devkit folder, its data/
    folder, the .tar(.gz) archive, or a meta.mat / ground-truth file inside data/."""
    if devkit.is_file() and tarfile.is_tarfile(devkit):
        found: dict[str, tuple[bytes, str]] = {}
        with tarfile.open(devkit) as archive:
            for member in archive.getmembers():
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in (META_NAME, GROUND_TRUTH_NAME):
                    handle = archive.extractfile(member)
                    assert handle is not None
                    found[name] = (handle.read(), f"{devkit}:{member.name}")
        missing = [n for n in (META_NAME, GROUND_TRUTH_NAME) if n not in found]
        if missing:
            raise DatasetError(f"devkit archive {devkit} lacks {' and '.join(missing)}. Use "
                               "ILSVRC2012_devkit_t12.tar.gz.")
        gt, gt_where = found[GROUND_TRUTH_NAME]
        return found[META_NAME], (gt.decode("ascii", "replace"), gt_where)
    if devkit.is_file() and devkit.name in (META_NAME, GROUND_TRUTH_NAME):
        devkit = devkit.parent
    for folder in (devkit / "data", devkit):
        meta, gt = folder / META_NAME, folder / GROUND_TRUTH_NAME
        if meta.is_file() and gt.is_file():
            return (meta.read_bytes(), str(meta)), (gt.read_text(), str(gt))
    raise DatasetError(
        f"devkit {devkit}: expected data/{META_NAME} and data/{GROUND_TRUTH_NAME} (the "
        "unpacked ILSVRC2012_devkit_t12, or its .tar.gz)."
    )


def read_devkit(devkit: _PathLike) -> tuple[list[int], dict[int, str]]:
    """(ILSVRC2012_ID of validation image 1, 2, ..., leaf ILSVRC2012_ID -> WNID)."""
    (meta, meta_where), (gt, gt_where) = _devkit_files(Path(devkit))
    id_to_wnid = _parse_meta(meta, meta_where)
    ids = _parse_ground_truth(gt, gt_where)
    unknown = sorted({i for i in ids if i not in id_to_wnid})
    if unknown:
        raise DatasetError(f"{gt_where}: IDs {_few([str(i) for i in unknown])} are not leaf "
                           f"classes of {meta_where}; the two files do not belong together.")
    return ids, id_to_wnid


def devkit_wnids(devkit: _PathLike) -> list[str]:
    """Sorted WNIDs of the devkit's leaf classes (the 1000 ILSVRC2012 classes)."""
    return sorted(read_devkit(devkit)[1].values())


# --------------------------------------------------------------------------- label sources


def _index_of(wnids_sorted: Sequence[str]) -> dict[str, int]:
    if list(wnids_sorted) != sorted(wnids_sorted) or len(set(wnids_sorted)) != len(wnids_sorted):
        raise ValueError("wnids_sorted must be sorted and free of duplicates")
    return {w: i for i, w in enumerate(wnids_sorted)}


def _unknown_wnids(unknown: set[str], where: str, n_classes: int) -> DatasetError:
    return DatasetError(
        f"{where}: {len(unknown)} WNID(s) are not among the {n_classes} classes "
        f"({_few(sorted(unknown))}). The class list comes from ROOT/train (or the devkit); it "
        "must hold every class of the validation set."
    )


def _from_devkit(devkit: Path, wnids_sorted: Sequence[str]) -> dict[str, int]:
    ids, id_to_wnid = read_devkit(devkit)
    index = _index_of(wnids_sorted)
    unknown = {id_to_wnid[i] for i in set(ids)} - index.keys()
    if unknown:
        raise _unknown_wnids(unknown, str(devkit), len(index))
    return {f"ILSVRC2012_val_{n:08d}": index[id_to_wnid[i]] for n, i in enumerate(ids, 1)}


def read_label_file(path: _PathLike) -> tuple[dict[str, int], list[str] | None]:
    """Read a label file in Caffe's val.txt format (``NAME INDEX`` per line; ``#`` lines
    are comments) -> ({name without image suffix: index}, classes recorded in a
    ``# classes:`` comment or None)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read label file {path}: {exc}") from exc
    labels: dict[str, int] = {}
    classes: list[str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith(CLASSES_HEADER):
            classes = stripped[len(CLASSES_HEADER):].split()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DatasetError(f"{path}:{number}: expected 'FILENAME INDEX' (Caffe's val.txt), "
                               f"got {stripped[:80]!r}.")
        stem, value = val_stem(parts[0]), int(parts[1])
        if value < 0:
            raise DatasetError(f"{path}:{number}: negative class index {value}.")
        if stem in labels:
            raise DatasetError(f"{path}:{number}: {parts[0]} is listed twice.")
        labels[stem] = value
    if not labels:
        raise DatasetError(f"label file {path} holds no labels.")
    return labels, classes


def _from_val_txt(path: Path, wnids_sorted: Sequence[str]) -> dict[str, int]:
    labels, classes = read_label_file(path)
    if classes is not None and classes != list(wnids_sorted):
        raise DatasetError(f"{path} was written for a different class list than the "
                           f"{len(wnids_sorted)} classes given; regenerate it.")
    too_big = {s: i for s, i in labels.items() if i >= len(wnids_sorted)}
    if too_big:
        stem, value = next(iter(too_big.items()))
        raise DatasetError(f"{path}: {len(too_big)} label(s) are >= the {len(wnids_sorted)} "
                           f"classes (e.g. {stem} {value}); the file is for another class list.")
    return labels


def _from_loc_csv(path: Path, wnids_sorted: Sequence[str]) -> dict[str, int]:
    index = _index_of(wnids_sorted)
    labels: dict[str, int] = {}
    unknown: set[str] = set()
    try:
        with open(path, newline="") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if header is None or [h.strip() for h in header[:2]] != ["ImageId",
                                                                       "PredictionString"]:
                raise DatasetError(f"{path}: expected the header 'ImageId,PredictionString' of "
                                   f"Kaggle's LOC_val_solution.csv, got {header!r}.")
            for number, row in enumerate(rows, 2):
                if not row or not "".join(row).strip():
                    continue
                tokens = row[1].split() if len(row) >= 2 else []
                if not tokens:
                    raise DatasetError(f"{path}:{number}: no WNID in {','.join(row)[:80]!r}.")
                stem = val_stem(row[0].strip())
                if stem in labels:
                    raise DatasetError(f"{path}:{number}: {stem} is listed twice.")
                if tokens[0] not in index:
                    unknown.add(tokens[0])
                    continue
                labels[stem] = index[tokens[0]]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if unknown:
        raise _unknown_wnids(unknown, str(path), len(index))
    if not labels:
        raise DatasetError(f"{path} holds no labels.")
    return labels


def read_val_labels(source: _PathLike | Sequence[_PathLike], wnids_sorted: Sequence[str]
                    ) -> dict[str, int]:
    """Validation labels ``{ILSVRC2012_val_NNNNNNNN: sorted-WNID index}`` from any source:

    * a devkit folder (or its ``data/``), the devkit ``.tar(.gz)``, its ``meta.mat`` or its
      ``ILSVRC2012_validation_ground_truth.txt`` (the other file must lie next to it), or the
      pair (ground truth, meta.mat) as a sequence;
    * a ``.csv`` file: Kaggle's LOC_val_solution.csv;
    * any other text file: Caffe's val.txt (or a label file written by
      :func:`write_label_file`).
    """
    if not isinstance(source, (str, os.PathLike)):
        paths = [Path(p) for p in source]
        names = sorted(p.name for p in paths)
        if len(paths) != 2 or names != sorted([GROUND_TRUTH_NAME, META_NAME]):
            raise ValueError(f"a pair of label sources must be {GROUND_TRUTH_NAME} and "
                             f"{META_NAME}, got {[str(p) for p in paths]}")
        if paths[0].parent != paths[1].parent:
            raise ValueError(f"{GROUND_TRUTH_NAME} and {META_NAME} must lie in the same folder")
        return _from_devkit(paths[0].parent, wnids_sorted)
    path = Path(source)
    if not path.exists():
        raise DatasetError(f"label source {path} does not exist.")
    archive = path.name.lower().endswith((".tar", ".tar.gz", ".tgz"))
    if path.is_dir() or archive or path.name in (META_NAME, GROUND_TRUTH_NAME):
        return _from_devkit(path, wnids_sorted)
    if path.suffix.lower() == ".csv":
        return _from_loc_csv(path, wnids_sorted)
    return _from_val_txt(path, wnids_sorted)


def write_label_file(labels: Mapping[str, int], out_path: _PathLike, *,
                     classes: Sequence[str] | None = None, suffix: str = ".JPEG") -> Path:
    """Write ``labels`` in Caffe's val.txt format, one ``NAME INDEX`` per line sorted by
    name (``suffix`` is appended to names that have no image suffix), after a
    ``# classes: WNID ...`` line when ``classes`` is given. Written atomically."""
    out = Path(out_path)
    lines = []
    if classes is not None:
        lines.append(f"{CLASSES_HEADER} {' '.join(classes)}")
    for name in sorted(labels):
        full = name if val_stem(name) != name else name + suffix
        lines.append(f"{full} {int(labels[name])}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out


def _val_images(val_dir: Path) -> list[str]:
    if not val_dir.is_dir():
        raise DatasetError(f"ImageNet validation folder {val_dir} does not exist. Expected "
                           "ROOT/val/ILSVRC2012_val_*.JPEG.")
    return list_images(val_dir, recursive=False)


def make_label_file(root: _PathLike, *, devkit: _PathLike | None = None,
                    val_txt: _PathLike | None = None, loc_csv: _PathLike | None = None,
                    out: _PathLike) -> Path:
    """Write ROOT's validation label file from exactly one of the three sources and return
    its path. The class list is ROOT/train's WNIDs, or the devkit's when ROOT/train is
    absent. Every image in ROOT/val must get a label (:class:`DatasetError` says how many
    do not); labels of images absent from ROOT/val are kept and counted in a warning."""
    root = Path(root)
    given = [s for s in (devkit, val_txt, loc_csv) if s is not None]
    if len(given) != 1:
        raise ValueError("give exactly one label source: devkit, val_txt or loc_csv "
                         f"(got {len(given)})")
    if (root / "train").is_dir():
        wnids = train_wnids(root)
    elif devkit is not None:
        wnids = devkit_wnids(devkit)
    else:
        raise DatasetError(f"{root / 'train'} not found: the class list (sorted WNIDs) comes "
                           "from ROOT/train or, without it, from the devkit (--devkit DIR).")
    labels = read_val_labels(given[0], wnids)
    images = _val_images(root / "val")
    if not images:
        raise DatasetError(f"{root / 'val'} holds no images.")
    stems = {val_stem(n) for n in images}
    missing = sorted(stems - labels.keys())
    extra = len(labels.keys() - stems)
    if missing:
        raise DatasetError(
            f"{given[0]} has no label for {len(missing)} of the {len(images)} images in "
            f"{root / 'val'} ({_few(missing)}) and {extra} label(s) for images not there: it "
            "is not the label list of this validation set."
        )
    if extra:
        log.warning("%s: %d label(s) for images not in %s (all %d images there are labelled)",
                    given[0], extra, root / "val", len(images))
    return write_label_file(labels, out, classes=wnids)


# --------------------------------------------------------------------------- dataset


class ImageNetDataset(ImageFiles):
    """ILSVRC2012 ``split`` ("train" or "val") of ``root`` as a map-style dataset.

    Labels are sorted-WNID indices (Caffe's, bvlc_alexnet's). ``classes`` are the WNIDs, from
    ROOT/train, or from the label file's ``# classes:`` line when ROOT/train is absent.
    The flat validation folder needs a label file: ``labels_file`` or, by default,
    ``ROOT/val_labels.txt`` (see :func:`make_label_file`). ``train`` turns augmentation
    (random crop + mirror) on; by default it is on for the train split only.
    """

    def __init__(self, root: _PathLike, split: str = "train", *,
                 labels_file: _PathLike | None = None, train: bool | None = None,
                 resize: int = 256, crop: int = 227, preprocess: str = "caffe",
                 seed: int = 0) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        root = Path(root)
        train = split == "train" if train is None else train
        transform = make_transform(preprocess, train=train, resize=resize, crop=crop)
        check_seed(seed)
        if not root.is_dir():
            raise DatasetError(f"ImageNet root {root} does not exist or is not a directory. "
                               "Expected ROOT/train/<WNID>/*.JPEG and ROOT/val/*.JPEG.")
        if split == "train":
            classes, files, targets = scan_class_tree(root / "train", IMAGE_EXTENSIONS,
                                                      "ImageNet training folder")
            _check_wnids(classes, str(root / "train"))
        else:
            classes, files, targets = self._val(root, labels_file)
        super().__init__(root / split, files, targets, classes, transform, seed=seed)
        self.split = split
        self.train = train

    @staticmethod
    def _val(root: Path, labels_file: _PathLike | None
             ) -> tuple[list[str], list[str], list[int]]:
        val_dir = root / "val"
        images = _val_images(val_dir)
        known = train_wnids(root) if (root / "train").is_dir() else None
        if not images and any(p.is_dir() for p in val_dir.iterdir()):
            # val already sorted into WNID folders (valprep.sh): the folders are the labels.
            classes, files, targets = scan_class_tree(val_dir, IMAGE_EXTENSIONS,
                                                      "ImageNet validation folder")
            _check_wnids(classes, str(val_dir))
            if known is not None and classes != known:
                raise DatasetError(
                    f"{val_dir} and {root / 'train'} must have the same WNID folders "
                    f"(missing in val: {_few(sorted(set(known) - set(classes)))}; not in "
                    f"train: {_few(sorted(set(classes) - set(known)))})."
                )
            return classes, files, targets
        if not images:
            raise DatasetError(f"{val_dir} holds no images.")
        path = Path(labels_file) if labels_file is not None else root / DEFAULT_LABELS_NAME
        if not path.is_file():
            raise DatasetError(f"the flat validation folder {val_dir} needs a label file and "
                               f"{path} does not exist. {_labels_hint(root)}")
        labels, recorded = read_label_file(path)
        if known is not None and recorded is not None and recorded != known:
            raise DatasetError(f"{path} was written for a different class list than the "
                               f"{len(known)} WNID folders of {root / 'train'}. "
                               f"{_labels_hint(root)}")
        classes = known if known is not None else recorded
        if classes is None:
            raise DatasetError(f"{root / 'train'} does not exist and {path} does not record "
                               f"the class list, so class names are unknown. {_labels_hint(root)}")
        stems = [val_stem(n) for n in images]
        missing = [n for n, s in zip(images, stems, strict=True) if s not in labels]
        if missing:
            raise DatasetError(f"{path} has no label for {len(missing)} of the {len(images)} "
                               f"images in {val_dir} ({_few(missing)}). {_labels_hint(root)}")
        targets = [labels[s] for s in stems]
        if max(targets) >= len(classes):
            raise DatasetError(f"{path}: class index {max(targets)} but only {len(classes)} "
                               f"classes. {_labels_hint(root)}")
        return classes, images, targets


IMAGENET_DIR_ENV = "ADMMPRUNE_IMAGENET_DIR"


def imagenet_root(data_dir: _PathLike | None) -> Path:
    """data_dir, else $ADMMPRUNE_IMAGENET_DIR, else $ADMMPRUNE_DATA_DIR/imagenet."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(IMAGENET_DIR_ENV):
        return Path(os.environ[IMAGENET_DIR_ENV]).expanduser()
    shared = os.environ.get("ADMMPRUNE_DATA_DIR")
    if shared and (Path(shared) / "imagenet").is_dir():
        return Path(shared) / "imagenet"
    raise DatasetError(
        "ImageNet is not downloadable: point --data-dir (or the environment variable "
        f"{IMAGENET_DIR_ENV}) at ROOT holding train/<WNID>/*.JPEG and val/*.JPEG, then write "
        "the validation labels once with `admmprune imagenet-labels --root ROOT ...`")


@register_dataset("imagenet", "ILSVRC2012: ROOT/train/<WNID>/, flat ROOT/val/ with the label "
                              "file of `admmprune imagenet-labels`; class = sorted WNID "
                              "position (Caffe's); Caffe preprocessing; streamed")
def _imagenet_splits(options, device, splits):
    root = imagenet_root(options.data_dir)
    kwargs = image_options(options)
    train = ImageNetDataset(root, "train", **kwargs) if "train" in splits else None
    test = ImageNetDataset(root, "val", labels_file=options.val_labels, **kwargs) \
        if "test" in splits else None
    return stream_splits(train, test, options, device)

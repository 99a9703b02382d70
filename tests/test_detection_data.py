"""Detection data: letterbox and augmentation keep boxes on their pixels, (seed, epoch, index)
determinism across workers, COCO and VOC readers on generated files, the MNIST digit set."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import real_mnist_dir
from PIL import Image, ImageDraw

from admmprune.data import create_dataset, load_mnist
from admmprune.data.coco import CocoDetection, coco_splits, find_coco_split, read_coco
from admmprune.data.detection import (
    LETTERBOX_FILL,
    DetectionDataset,
    DetectionTransform,
    ImageAnnotation,
    detection_collate,
    letterbox,
    unletterbox_boxes,
)
from admmprune.data.digits import (
    main_make_detection_set,
    make_detection_set,
    render_canvas,
)
from admmprune.data.loader import StreamBatches
from admmprune.data.mnist import MNIST, DatasetError
from admmprune.data.voc import VOC_CLASSES, VOCDetection, find_voc_root, read_voc_xml
from admmprune.runs.config import Config

RED, GREY = (230, 20, 20), (110, 110, 110)


def rect_image(width: int, height: int, rect: tuple[int, int, int, int]) -> Image.Image:
    """Grey image with a red rectangle covering columns x1..x2-1 and rows y1..y2-1 (the
    pixel-edge box ``rect``)."""
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:] = GREY
    x1, y1, x2, y2 = rect
    pixels[y1:y2, x1:x2] = RED
    return Image.fromarray(pixels, "RGB")


def assert_box_on_red(image: torch.Tensor, box, tol: float = 1.0, others=()) -> None:
    """Every clearly red pixel (more than half the contrast) has its centre within ``tol``
    of ``box`` (or of one of ``others``, boxes also drawn in red), and every pixel centred
    more than ``tol`` inside ``box`` is red."""
    red = (image[0] - image[1]) > 0.41
    centres = torch.arange(image.shape[-1], dtype=torch.float64) + 0.5
    near = torch.zeros_like(red)
    for b in (box, *others):
        x1, y1, x2, y2 = (float(v) for v in b)
        near_x = (centres >= x1 - tol) & (centres <= x2 + tol)
        near_y = (centres >= y1 - tol) & (centres <= y2 + tol)
        near |= near_y[:, None] & near_x[None, :]
    stray = red & ~near
    assert not stray.any(), f"red pixels outside box {box}: {stray.nonzero()[:5].tolist()}"
    x1, y1, x2, y2 = (float(v) for v in box)
    core_x = (centres >= x1 + tol) & (centres <= x2 - tol)
    core_y = (centres >= y1 + tol) & (centres <= y2 - tol)
    core = red[core_y][:, core_x]
    assert core.numel() > 0 and core.all(), f"box {box} is not filled with red"


# --------------------------------------------------------------------------- letterbox


@pytest.mark.parametrize("size_wh,rect,out", [((100, 60), (20, 10, 50, 40), 64),
                                              ((45, 90), (3, 70, 44, 88), 96),
                                              ((64, 64), (0, 0, 13, 64), 64)])
def test_letterbox_maps_boxes_onto_their_pixels(size_wh, rect, out):
    image = rect_image(*size_wh, rect)
    tensor, boxes, place = letterbox(image, [rect], out)
    assert tensor.shape == (3, out, out) and tensor.dtype == torch.float32
    assert 0 <= float(tensor.min()) and float(tensor.max()) <= 1
    width, height = size_wh
    # the longer side fills the canvas, the shorter is rounded to whole pixels and the boxes
    # follow the scale actually applied per axis; the padding is grey 0.5, centred
    new_w, new_h = round(width * out / max(size_wh)), round(height * out / max(size_wh))
    assert max(new_w, new_h) == out
    assert (place.scale_x, place.scale_y) == (new_w / width, new_h / height)
    assert (place.pad_x, place.pad_y) == ((out - new_w) // 2, (out - new_h) // 2)
    if place.pad_y:
        assert (tensor[:, :place.pad_y] == LETTERBOX_FILL).all()
    if place.pad_x:
        assert (tensor[:, :, :place.pad_x] == LETTERBOX_FILL).all()
    expected = np.array(rect, dtype=np.float64)
    expected[0::2] = expected[0::2] * place.scale_x + place.pad_x
    expected[1::2] = expected[1::2] * place.scale_y + place.pad_y
    np.testing.assert_allclose(boxes[0], expected, rtol=0, atol=1e-4)
    assert_box_on_red(tensor, boxes[0])
    np.testing.assert_allclose(unletterbox_boxes(boxes, place)[0], rect, atol=1e-4)


def test_letterbox_without_boxes_and_clipping():
    tensor, boxes, _ = letterbox(rect_image(30, 20, (0, 0, 5, 5)), None, 32)
    assert tensor.shape == (3, 32, 32) and boxes.shape == (0, 4)
    # a box reaching past the image is clipped to it first
    _, boxes, place = letterbox(rect_image(30, 20, (0, 0, 5, 5)), [[-4, -2, 40, 25]], 30)
    np.testing.assert_allclose(boxes[0], [0, place.pad_y, 30, place.pad_y + 20])


# --------------------------------------------------------------------------- augmentation


def test_flip_maps_boxes_onto_their_pixels():
    rect = (10, 5, 30, 25)
    image = rect_image(80, 50, rect)
    flipped = DetectionTransform(64, train=True, flip=1.0)
    tensor, boxes, kept = flipped(image, [rect], np.random.default_rng(0))
    assert kept.tolist() == [0]
    assert_box_on_red(tensor, boxes[0])
    # the same as letterboxing the mirrored image, and not the unflipped result
    mirror = rect_image(80, 50, (80 - 30, 5, 80 - 10, 25))
    reference, ref_boxes, _ = letterbox(mirror, [[50, 5, 70, 25]], 64)
    assert torch.equal(tensor, reference)
    np.testing.assert_allclose(boxes, ref_boxes, atol=1e-5)
    plain, plain_boxes, _ = letterbox(image, [rect], 64)
    assert not np.allclose(boxes, plain_boxes)
    # flip=0 never flips
    never = DetectionTransform(64, train=True, flip=0.0)
    for seed in range(5):
        assert torch.equal(never(image, [rect], np.random.default_rng(seed))[0], plain)


def test_scale_jitter_keeps_boxes_on_their_pixels():
    # a red box in the middle, a blue one at the border that crops can cut
    rects = [(30, 20, 50, 40), (0, 44, 14, 60)]
    pixels = np.asarray(rect_image(80, 60, rects[0])).copy()
    pixels[44:60, 0:14] = (20, 20, 230)
    image = Image.fromarray(pixels)
    jitter = DetectionTransform(64, train=True, scale_jitter=0.6, flip=0.5)
    scales, clipped, dropped = set(), 0, 0
    for seed in range(40):
        tensor, boxes, kept = jitter(image, rects, np.random.default_rng(seed))
        assert tensor.shape == (3, 64, 64)
        assert (boxes >= 0).all() and (boxes <= 64).all()
        dropped += 2 - len(kept)
        for box, index in zip(boxes, kept, strict=True):
            w, h = rects[index][2] - rects[index][0], rects[index][3] - rects[index][1]
            clipped += not np.isclose((box[2] - box[0]) / (box[3] - box[1]), w / h, rtol=0.1)
            if index == 0:
                assert_box_on_red(tensor, box)
            else:  # the same check on the blue channel
                assert_box_on_red(tensor[[2, 1, 0]], box)
                scales.add(round(float(box[2] - box[0]), 1))
            assert box[2] - box[0] >= 2 and box[3] - box[1] >= 2
    assert len(scales) > 10  # the scale really varied
    assert clipped > 0 and dropped > 0  # crops clipped boxes and dropped some


def test_hsv_changes_colours_not_boxes_or_other_draws():
    rect = (10, 5, 30, 25)
    image = rect_image(80, 50, rect)
    plain = DetectionTransform(64, train=True, flip=0.5, scale_jitter=0.3)
    coloured = DetectionTransform(64, train=True, flip=0.5, scale_jitter=0.3, hsv=0.5)
    differ = 0
    for seed in range(6):
        a, boxes_a, _ = plain(image, [rect], np.random.default_rng(seed))
        b, boxes_b, _ = coloured(image, [rect], np.random.default_rng(seed))
        np.testing.assert_array_equal(boxes_a, boxes_b)
        differ += not torch.allclose(a, b, atol=2 / 255)
    assert differ >= 5


def test_transform_rejects_bad_settings():
    with pytest.raises(ValueError, match="flip"):
        DetectionTransform(64, train=True, flip=1.5)
    with pytest.raises(ValueError, match="scale_jitter"):
        DetectionTransform(64, train=True, scale_jitter=-0.1)
    with pytest.raises(ValueError, match="image_size"):
        DetectionTransform(0, train=False)
    with pytest.raises(ValueError, match="random generator"):
        DetectionTransform(64, train=True)(rect_image(8, 8, (0, 0, 2, 2)), [])


# --------------------------------------------------------------------------- generated set


@pytest.fixture(scope="module")
def digit_set(tmp_path_factory) -> Path:
    mnist = real_mnist_dir()
    if mnist is None:
        pytest.fail("real MNIST not found: set ADMMPRUNE_DATA_DIR (run through ./test.sh)")
    return make_detection_set(tmp_path_factory.mktemp("digits"), mnist_dir=mnist,
                              train_images=16, val_images=8, seed=3)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_generator_layout_and_readme(digit_set):
    for split, n in (("train", 16), ("val", 8)):
        data = _json(digit_set / "annotations" / f"instances_{split}.json")
        assert len(data["images"]) == n
        assert len(list((digit_set / split).glob("*.jpg"))) == n
        assert [c["name"] for c in data["categories"]] == [str(d) for d in range(10)]
        per_image = np.bincount([a["image_id"] for a in data["annotations"]], minlength=n + 1)
        assert per_image[1:].min() >= 1 and per_image.max() <= 4
        for a in data["annotations"]:
            assert a["mnist_split"] == ("train" if split == "train" else "test")
    readme = (digit_set / "README.txt").read_text()
    assert "seed: 3" in readme and "train: 16 images" in readme and "val: 8 images" in readme


def test_generator_boxes_hold_the_ink_of_the_right_mnist_digit(digit_set):
    mnist = load_mnist(real_mnist_dir(), download=False)
    for split, split_index, source in (("train", 0, mnist.train_x), ("val", 1, mnist.test_x)):
        pool = ((source[:, 0] * MNIST.std + MNIST.mean) * 255).round().to(torch.uint8).numpy()
        data = _json(digit_set / "annotations" / f"instances_{split}.json")
        labels = (mnist.train_y if split == "train" else mnist.test_y).numpy()
        # replay the generator's stream with the MNIST split this split must use
        rng = np.random.default_rng([3, split_index])
        previous = None
        for image in data["images"]:
            pixels, placed = render_canvas(rng, pool, 128)
            written = np.asarray(Image.open(digit_set / split / image["file_name"]), np.float32)
            # the JPEG is this rendering (its noise costs ~3 levels), not any other canvas
            assert np.abs(written - pixels).mean() < 5
            if previous is not None:
                assert np.abs(written - previous).mean() > 20
            previous = pixels
            anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
            assert len(anns) == len(placed)
            ink = np.zeros((128, 128), dtype=bool)
            for ann, digit in zip(anns, placed, strict=True):
                x1, y1, x2, y2 = (int(v) for v in digit["box"])
                assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1]
                assert ann["mnist_index"] == digit["index"]
                assert ann["category_id"] - 1 == labels[digit["index"]]
                rows, cols = np.nonzero(digit["mask"])
                # the box is the tight box of the ink
                assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (x1, y1,
                                                                                    x2, y2)
                assert not (ink & digit["mask"]).any()  # no two digits' ink touches
                ink |= digit["mask"]
            # the ink stands out from the background in the written image
            grey = written.mean(axis=2)
            assert abs(grey[ink].mean() - np.median(grey[~ink])) > 60
            boxes = np.array([d["box"] for d in placed])
            for i in range(len(boxes)):
                for j in range(i):
                    a, b = boxes[i], boxes[j]
                    inter = (max(0, min(a[2], b[2]) - max(a[0], b[0]))
                             * max(0, min(a[3], b[3]) - max(a[1], b[1])))
                    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
                    assert inter / union < 0.3


def test_generator_is_deterministic_and_refuses_to_overwrite(digit_set, tmp_path, mnist_dir):
    again = make_detection_set(tmp_path / "again", mnist_dir=mnist_dir, train_images=16,
                               val_images=8, seed=3)
    for name in ("annotations/instances_train.json", "annotations/instances_val.json",
                 "train/000005.jpg", "val/000008.jpg"):
        assert (again / name).read_bytes() == (digit_set / name).read_bytes()
    other = make_detection_set(tmp_path / "other", mnist_dir=mnist_dir, train_images=2,
                               val_images=1, seed=4)
    assert (other / "train/000001.jpg").read_bytes() != (digit_set / "train/000001.jpg"
                                                         ).read_bytes()
    with pytest.raises(DatasetError, match="already holds"):
        make_detection_set(again, mnist_dir=mnist_dir, train_images=1, val_images=1)
    with pytest.raises(DatasetError, match="digit_scale"):
        make_detection_set(tmp_path / "bad", mnist_dir=mnist_dir, digit_scale=(0.5, 0.2))


def test_generator_command_line(tmp_path, mnist_dir, capsys):
    out = tmp_path / "cli"
    assert main_make_detection_set(["--out", str(out), "--mnist-dir", str(mnist_dir),
                                    "--train-images", "3", "--val-images", "2",
                                    "--canvas", "64", "--digits", "2", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    data = _json(out / "annotations/instances_val.json")
    assert len(data["images"]) == 2 and data["images"][0]["width"] == 64
    assert main_make_detection_set(["--out", str(out), "--mnist-dir", str(mnist_dir)]) == 2
    assert "already holds" in capsys.readouterr().err


# --------------------------------------------------------------------------- COCO


def test_coco_round_trip_after_letterbox(digit_set):
    val = CocoDetection(*find_coco_split(digit_set, "val"), train=False, image_size=96)
    data = _json(digit_set / "annotations/instances_val.json")
    assert val.classes == [str(d) for d in range(10)] and len(val) == 8
    for index in range(len(val)):
        image, target = val[index]
        assert image.shape == (3, 96, 96) and image.dtype == torch.float32
        anns = [a for a in data["annotations"] if a["image_id"] == target["image_id"]]
        expected = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                            dtype=np.float64) * 0.75  # 128 -> 96, square: no padding
        np.testing.assert_allclose(target["boxes"].numpy(), expected, atol=1e-4)
        assert target["boxes"].dtype == torch.float32
        assert target["labels"].dtype == torch.int64
        assert target["labels"].tolist() == [a["category_id"] - 1 for a in anns]
        assert target["difficult"].dtype == torch.bool and not target["difficult"].any()
    assert [val[i][1]["image_id"] for i in range(len(val))] == list(range(1, 9))


def test_coco_registered_dataset_batches(digit_set):
    options = Config(dataset="coco", task="detection", data_dir=str(digit_set), image_size=64,
                     batch_size=5, workers=0, flip=0.5, hsv=0.2, scale_jitter=0.2)
    splits = create_dataset("coco", options, torch.device("cpu"))
    assert splits.num_classes == 10 and splits.info["classes"] == [str(d) for d in range(10)]
    assert splits.info["input_shape"] == (3, 64, 64)
    assert len(splits.train) == 4 and len(splits.test) == 2
    images, targets = next(iter(splits.train))
    assert images.shape == (5, 3, 64, 64) and len(targets) == 5
    assert all(set(t) == {"boxes", "labels", "image_id", "difficult"} for t in targets)
    assert all(t["boxes"].shape == (len(t["labels"]), 4) for t in targets)
    only_test = create_dataset("coco", options, torch.device("cpu"), splits=("test",))
    assert only_test.train is None and len(only_test.test) == 2


def test_augmentation_is_deterministic_per_seed_epoch_index(digit_set):
    kwargs = dict(image_size=64, flip=0.5, hsv=0.3, scale_jitter=0.3, seed=1)
    train, _ = coco_splits(digit_set, **kwargs)
    twin, _ = coco_splits(digit_set, **kwargs)
    train.set_epoch(2)
    twin.set_epoch(2)
    differ = 0
    for index in range(6):
        image, target = train[index]
        again, target2 = twin[index]
        assert torch.equal(image, again) and torch.equal(target["boxes"], target2["boxes"])
        train.set_epoch(3)
        other, _ = train[index]
        differ += not torch.equal(image, other)
        train.set_epoch(2)
    assert differ >= 5
    # evaluation splits never augment
    _, val = coco_splits(digit_set, **kwargs)
    first = val[0][0]
    val.set_epoch(7)
    assert torch.equal(val[0][0], first)


def test_dataloader_workers_give_the_same_batches(digit_set):
    train, _ = coco_splits(digit_set, image_size=48, flip=0.5, hsv=0.3, scale_jitter=0.3)

    def epoch(workers: int) -> list:
        batches = StreamBatches(train, 4, shuffle=True, seed=0, workers=workers, limit=12,
                                collate_fn=detection_collate)
        batches.set_epoch(1)
        return list(batches)

    serial, parallel = epoch(0), epoch(2)
    assert len(serial) == len(parallel) == 3
    for (images_a, targets_a), (images_b, targets_b) in zip(serial, parallel, strict=True):
        assert torch.equal(images_a, images_b)
        for a, b in zip(targets_a, targets_b, strict=True):
            assert a["image_id"] == b["image_id"]
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])


def test_collate_shapes_and_empty_images(tmp_path):
    Image.new("RGB", (40, 30), (9, 9, 9)).save(tmp_path / "a.png")
    Image.new("RGB", (20, 50), (9, 9, 9)).save(tmp_path / "b.png")
    empty = np.zeros((0, 4), np.float32)
    data = DetectionDataset(tmp_path, [
        ImageAnnotation("a.png", 7, np.array([[1, 2, 10, 12]], np.float32), np.array([1]),
                        np.array([True])),
        ImageAnnotation("b.png", 9, empty, np.zeros(0, np.int64), np.zeros(0, bool))],
        ["x", "y"], train=False, image_size=32)
    images, targets = detection_collate([data[0], data[1]])
    assert images.shape == (2, 3, 32, 32)
    assert [t["image_id"] for t in targets] == [7, 9]
    assert targets[0]["difficult"].tolist() == [True] and targets[0]["labels"].tolist() == [1]
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["labels"].dtype == torch.int64
    with pytest.raises(ValueError, match="share a shape"):
        detection_collate([(torch.zeros(3, 8, 8), {}), (torch.zeros(3, 9, 9), {})])


# --------------------------------------------------------------------------- COCO errors


def _coco_file(path: Path, **changes) -> Path:
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10}],
            "annotations": [{"id": 1, "image_id": 1, "bbox": [1, 1, 5, 5], "category_id": 3}],
            "categories": [{"id": 3, "name": "cat"}]}
    data.update(changes)
    path.write_text(json.dumps(data))
    return path


def test_coco_errors_say_what_is_wrong(tmp_path, caplog):
    with pytest.raises(DatasetError, match="does not exist"):
        read_coco(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"images": [')
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_coco(tmp_path / "bad.json")
    with pytest.raises(DatasetError, match="image id 5"):
        read_coco(_coco_file(tmp_path / "a.json", annotations=[
            {"image_id": 5, "bbox": [1, 1, 2, 2], "category_id": 3}]))
    with pytest.raises(DatasetError, match="category id 4"):
        read_coco(_coco_file(tmp_path / "b.json", annotations=[
            {"image_id": 1, "bbox": [1, 1, 2, 2], "category_id": 4}]))
    with pytest.raises(DatasetError, match="no 'categories' list"):
        read_coco(_coco_file(tmp_path / "c.json", categories=None))
    with pytest.raises(DatasetError, match="bbox must be 4 finite numbers"):
        read_coco(_coco_file(tmp_path / "d.json", annotations=[
            {"image_id": 1, "bbox": [1, 1, 2], "category_id": 3}]))
    with caplog.at_level(logging.WARNING):
        classes, ids, images = read_coco(_coco_file(tmp_path / "e.json", annotations=[
            {"image_id": 1, "bbox": [1, 1, 0, 2], "category_id": 3},
            {"image_id": 1, "bbox": [1, 1, 3, 2], "category_id": 3, "iscrowd": 1}]))
    assert "skipped 1 annotation" in caplog.text
    assert classes == ["cat"] and ids == [3] and images[0].difficult.tolist() == [True]
    np.testing.assert_allclose(images[0].boxes, [[1, 1, 4, 3]])
    with pytest.raises(DatasetError, match="no COCO train split"):
        find_coco_split(tmp_path, "train")


def test_coco_image_size_mismatch_is_an_error(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "train").mkdir()
    _coco_file(tmp_path / "annotations/instances_train2017.json")
    Image.new("RGB", (30, 10)).save(tmp_path / "train/a.jpg")  # the JSON says 20x10
    with pytest.raises(DatasetError, match="no 'train2017'|does not exist"):
        CocoDetection(*find_coco_split(tmp_path, "train"), train=False)
    (tmp_path / "train").rename(tmp_path / "train2017")
    data = CocoDetection(*find_coco_split(tmp_path, "train"), train=False, image_size=32)
    with pytest.raises(DatasetError, match="30x10 pixels but its annotation says 20x10"):
        data[0]


# --------------------------------------------------------------------------- VOC


def _voc_xml(path: Path, width: int, height: int, objects: list[tuple]) -> None:
    parts = [f"<annotation><filename>{path.stem}.jpg</filename><size><width>{width}</width>"
             f"<height>{height}</height><depth>3</depth></size>"]
    for name, difficult, (xmin, ymin, xmax, ymax) in objects:
        flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
        parts.append(f"<object><name>{name}</name><pose>Left</pose>{flag}<bndbox>"
                     f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
                     f"<ymax>{ymax}</ymax></bndbox></object>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts) + "</annotation>")


@pytest.fixture
def voc_tree(tmp_path) -> Path:
    """VOCdevkit/VOC2007 with three images: two in trainval, one in test."""
    root = tmp_path / "VOCdevkit" / "VOC2007"
    (root / "JPEGImages").mkdir(parents=True)
    # 1-based inclusive VOC boxes; the red rectangle covers exactly those pixels
    specs = {"000005": (80, 60, [("dog", 0, (11, 21, 40, 50)), ("person", 1, (50, 5, 70, 15))]),
             "000007": (50, 70, [("tvmonitor", None, (2, 3, 30, 60))]),
             "000009": (64, 64, [("aeroplane", 0, (1, 1, 64, 20))])}
    for name, (width, height, objects) in specs.items():
        image = Image.new("RGB", (width, height), GREY)
        draw = ImageDraw.Draw(image)
        for _, _, (xmin, ymin, xmax, ymax) in objects:
            draw.rectangle([xmin - 1, ymin - 1, xmax - 1, ymax - 1], fill=RED)
        image.save(root / "JPEGImages" / f"{name}.jpg", quality=98, subsampling=0)
        _voc_xml(root / "Annotations" / f"{name}.xml", width, height, objects)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets/Main/trainval.txt").write_text("000005\n000007\n")
    (root / "ImageSets/Main/test.txt").write_text("000009\n")
    return tmp_path


def test_voc_reads_boxes_labels_and_difficult(voc_tree):
    root = find_voc_root(voc_tree)
    assert root == voc_tree / "VOCdevkit" / "VOC2007"
    data = VOCDetection(root, "trainval", train=False, image_size=80)
    assert data.classes == list(VOC_CLASSES) and len(data) == 2
    image, target = data[0]
    assert target["image_id"] == 5
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    assert target["difficult"].tolist() == [False, True]
    # 80x60 at 80: no scaling, 10 pixels of padding above
    np.testing.assert_allclose(target["boxes"].numpy(), [[10, 30, 40, 60], [49, 14, 70, 25]])
    boxes = target["boxes"]
    assert_box_on_red(image, boxes[0], tol=0.5, others=boxes[1:])
    assert_box_on_red(image, boxes[1], tol=0.5, others=boxes[:1])
    image, target = data[1]
    assert target["image_id"] == 7 and target["difficult"].tolist() == [False]
    # 50x70 at 80: scale 80/70, the width becomes 57, padded 11 left
    assert_box_on_red(image, target["boxes"][0])


def test_voc_registered_dataset_splits(voc_tree):
    options = Config(dataset="voc", data_dir=str(voc_tree / "VOCdevkit"), image_size=64,
                     batch_size=2, workers=0)
    splits = create_dataset("voc", options, torch.device("cpu"))
    assert splits.num_classes == 20 and len(splits.train) == 1 and len(splits.test) == 1
    images, targets = next(iter(splits.test))
    assert images.shape == (1, 3, 64, 64) and targets[0]["image_id"] == 9
    # without test.txt the evaluation split is val
    root = voc_tree / "VOCdevkit/VOC2007"
    (root / "ImageSets/Main/test.txt").rename(root / "ImageSets/Main/val.txt")
    splits = create_dataset("voc", options, torch.device("cpu"), splits=("test",))
    assert next(iter(splits.test))[1][0]["image_id"] == 9


def test_voc_errors_say_what_is_wrong(voc_tree, tmp_path):
    root = voc_tree / "VOCdevkit/VOC2007"
    (root / "Annotations/000007.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetError, match="000007.xml: not valid XML"):
        VOCDetection(root, "trainval", train=False)
    _voc_xml(root / "Annotations/000007.xml", 50, 70, [("unicorn", 0, (2, 3, 30, 60))])
    with pytest.raises(DatasetError, match="'unicorn', which is not one of the 20"):
        VOCDetection(root, "trainval", train=False)
    (root / "Annotations/000007.xml").unlink()
    with pytest.raises(DatasetError, match="000007.xml does not exist"):
        VOCDetection(root, "trainval", train=False)
    with pytest.raises(DatasetError, match="none of train.txt"):
        VOCDetection(root, "train", train=False)
    with pytest.raises(DatasetError, match="holds no Pascal VOC tree"):
        find_voc_root(tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages")
    with pytest.raises(DatasetError, match="needs data_dir"):
        create_dataset("voc", Config(dataset="voc"), torch.device("cpu"))
    bad = tmp_path / "bad.xml"
    _voc_xml(bad, 10, 10, [("cat", 0, (1, 1, "x", 5))])
    with pytest.raises(DatasetError, match="not a number"):
        read_voc_xml(bad)

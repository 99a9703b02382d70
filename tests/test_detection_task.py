"""The detection task: box maths, NMS, darknet's anchor assignment, the YOLO loss, mAP."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from admmprune.models.darknet import darknet_from_cfg, yolov4_tiny
from admmprune.tasks import create_task, list_tasks
from admmprune.tasks.boxes import (
    batched_nms,
    box_iou,
    cxcywh_to_xyxy,
    nms,
    paired_iou,
    wh_iou,
    xyxy_to_cxcywh,
    xyxy_to_ltwh,
)
from admmprune.tasks.detection import (
    Detection,
    assign_anchors,
    coco_map,
    decode,
    detect,
    yolo_loss,
    yolo_spec,
)

# Two heads: stride 8 (8x8 cells at 64x64) with anchors 0-2, stride 16 (4x4) with anchors 3-5.
TINY_CFG = """
[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=21
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=8,8, 16,16, 24,12, 32,32, 48,48, 64,40
classes=2
num=6
scale_x_y=1.1
ignore_thresh=.7
iou_thresh=IOU_THRESH
iou_normalizer=0.07
iou_loss=ciou

[route]
layers=-3

[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=21
size=1
activation=linear

[yolo]
mask=3,4,5
anchors=8,8, 16,16, 24,12, 32,32, 48,48, 64,40
classes=2
num=6
scale_x_y=1.05
ignore_thresh=.7
iou_thresh=IOU_THRESH
"""


def tiny_model(iou_thresh: float = 1.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return darknet_from_cfg(TINY_CFG.replace("IOU_THRESH", str(iou_thresh)))


def target(boxes: list[list[float]], labels: list[int],
           difficult: list[bool] | None = None) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.long),
            "difficult": torch.tensor(difficult or [False] * len(labels), dtype=torch.bool),
            "image_id": 0}


EMPTY = target([], [])


# ----------------------------------------------------------------------------- box maths


def test_conversions_round_trip():
    xyxy = torch.tensor([[1.0, 2.0, 5.0, 10.0]])
    assert xyxy_to_cxcywh(xyxy).tolist() == [[3.0, 6.0, 4.0, 8.0]]
    assert xyxy_to_ltwh(xyxy).tolist() == [[1.0, 2.0, 4.0, 8.0]]
    assert torch.equal(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy)


def test_iou_variants_by_hand():
    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    b = torch.tensor([1.0, 1.0, 3.0, 3.0])
    # intersection 1, union 7, enclosing [0,0,3,3]: area 9, diagonal^2 18; centres 2^2 apart
    assert paired_iou(a, b).item() == pytest.approx(1 / 7)
    assert paired_iou(a, b, "giou").item() == pytest.approx(1 / 7 - 2 / 9)
    assert paired_iou(a, b, "diou").item() == pytest.approx(1 / 7 - 2 / 18)
    # same aspect ratio: CIoU = DIoU
    assert paired_iou(a, b, "ciou").item() == pytest.approx(1 / 7 - 2 / 18)
    # different aspect: a 2x2 inside c 4x2; IoU 1/2, centres 1 apart, enclosing diagonal^2 20
    c = torch.tensor([0.0, 0.0, 4.0, 2.0])
    v = 4 / math.pi ** 2 * (math.atan(2) - math.atan(1)) ** 2
    alpha = v / (1 - 0.5 + v)
    assert paired_iou(a, c, "ciou").item() == pytest.approx(0.5 - 1 / 20 - alpha * v, rel=1e-5)
    assert paired_iou(c, a, "ciou").item() == pytest.approx(paired_iou(a, c, "ciou").item())
    # same centre, same aspect: every variant is plain IoU (here 2/8)
    d = torch.tensor([1.0, 0.5, 3.0, 1.5])
    for kind in ("iou", "giou", "diou", "ciou"):
        assert paired_iou(c, d, kind).item() == pytest.approx(0.25, rel=1e-6)
        assert paired_iou(c, c, kind).item() == pytest.approx(1.0)
    # disjoint boxes: IoU 0, GIoU and DIoU negative
    far = torch.tensor([10.0, 10.0, 12.0, 12.0])
    assert paired_iou(a, far).item() == 0.0
    assert paired_iou(a, far, "giou").item() < 0
    assert paired_iou(a, far, "diou").item() < 0
    with pytest.raises(ValueError, match="unknown IoU kind"):
        paired_iou(a, b, "xiou")


def test_pairwise_iou_and_wh_iou():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    matrix = box_iou(a, b)
    assert matrix.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert matrix[i, j].item() == pytest.approx(paired_iou(a[i], b[j]).item())
    # width/height only: 2x2 against 4x2 -> 4 / 8; against itself -> 1
    wh = wh_iou(torch.tensor([[2.0, 2.0]]), torch.tensor([[4.0, 2.0], [2.0, 2.0]]))
    assert wh[0].tolist() == pytest.approx([0.5, 1.0])


def test_ciou_gradient_moves_the_box_towards_the_target():
    pred = torch.tensor([0.0, 0.0, 2.0, 6.0], requires_grad=True)
    goal = torch.tensor([3.0, 1.0, 7.0, 4.0])
    loss = 1 - paired_iou(pred, goal, "ciou")
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    with torch.no_grad():
        moved = pred - 0.5 * pred.grad / pred.grad.norm()
    assert paired_iou(moved, goal, "ciou") > paired_iou(pred.detach(), goal, "ciou")


# ----------------------------------------------------------------------------- NMS


def python_iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def brute_nms(boxes, scores, labels, threshold, max_det=None):
    """Greedy NMS spelled out in plain Python."""
    boxes, scores = boxes.tolist(), scores.tolist()
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(labels[j] != labels[i] or python_iou(boxes[i], boxes[j]) <= threshold
               for j in kept):
            kept.append(i)
    return kept[:max_det] if max_det else kept


def random_boxes(n, generator):
    xy = torch.rand(n, 2, generator=generator) * 50
    wh = torch.rand(n, 2, generator=generator) * 20 + 1
    return torch.cat((xy, xy + wh), 1)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_matches_brute_force(threshold):
    g = torch.Generator().manual_seed(int(threshold * 10))
    boxes = random_boxes(150, g)
    scores = torch.rand(150, generator=g)
    scores[10:20] = scores[0]  # ties: lower index first
    labels = torch.randint(0, 3, (150,), generator=g)
    assert nms(boxes, scores, labels, threshold).tolist() == brute_nms(
        boxes, scores, labels.tolist(), threshold)
    agnostic = nms(boxes, scores, None, threshold)
    assert agnostic.tolist() == brute_nms(boxes, scores, [0] * 150, threshold)
    assert len(agnostic) < len(nms(boxes, scores, labels, threshold))
    assert nms(boxes, scores, labels, threshold, max_det=7).tolist() == brute_nms(
        boxes, scores, labels.tolist(), threshold, 7)
    # small chunks: boxes kept in earlier chunks suppress later ones
    for max_det in (None, 20):
        keep, kept = batched_nms(boxes[None], scores[None], labels[None],
                                 iou_threshold=threshold, max_det=max_det, chunk=7)
        assert keep[0][kept[0]].tolist() == brute_nms(boxes, scores, labels.tolist(),
                                                      threshold, max_det)


def test_batched_nms_with_padding_equals_per_image_nms():
    g = torch.Generator().manual_seed(3)
    counts = [40, 0, 25]
    boxes = torch.zeros(3, 40, 4)
    scores = torch.rand(3, 40, generator=g)
    labels = torch.randint(0, 2, (3, 40), generator=g)
    valid = torch.zeros(3, 40, dtype=torch.bool)
    for i, n in enumerate(counts):
        boxes[i, :n] = random_boxes(n, g)
        valid[i, :n] = True
    for chunk, max_det in ((512, None), (8, None), (8, 5)):
        keep, kept = batched_nms(boxes, scores, labels, valid, iou_threshold=0.4,
                                 max_det=max_det, chunk=chunk)
        for i, n in enumerate(counts):
            expected = brute_nms(boxes[i, :n], scores[i, :n], labels[i, :n].tolist(), 0.4,
                                 max_det)
            assert keep[i][kept[i]].tolist() == expected
    assert nms(torch.zeros(0, 4), torch.zeros(0)).tolist() == []


# ----------------------------------------------------------------------------- the model side


def test_registered_and_bound_to_yolo_heads():
    assert "detection" in list_tasks()
    task = create_task("detection")
    assert isinstance(task, Detection)
    assert task.metric == "map50" and task.metrics == ("map50", "map")
    assert task.label("map50") == "mAP@0.5" and task.label("map") == "mAP@0.5:0.95"
    with pytest.raises(ValueError, match="needs a model with YOLO heads, e.g. yolov4-tiny"):
        task.bind(nn.Linear(3, 4))
    with pytest.raises(RuntimeError, match="bind"):
        task.loss([torch.zeros(1, 21, 8, 8)], [EMPTY])
    task.bind(yolov4_tiny(num_classes=3, image_size=64))
    heads = task.spec.heads
    assert [h.stride for h in heads] == [32, 16]
    assert heads[0].anchors.tolist() == [[81, 82], [135, 169], [344, 319]]
    assert heads[1].mask == (1, 2, 3) and heads[1].scale_x_y == 1.05
    assert heads[0].all_anchors.shape == (6, 2)
    assert heads[0].ignore_thresh == 0.7 and heads[0].iou_normalizer == 0.07
    assert heads[0].iou_thresh == 1.0 and heads[0].iou_kind == "ciou"
    assert task.spec.classes == 3


def test_decode_places_boxes_in_input_pixels():
    model = tiny_model()
    spec = yolo_spec(model)
    raw = [torch.zeros(1, 21, 8, 8), torch.zeros(1, 21, 4, 4)]
    # head 0, anchor 1 (16x16), row 2, col 5: tx = 0 -> centre of the cell whatever scale_x_y;
    # tw = log 2 doubles the anchor width
    raw[0][0, 7 * 1 + 2, 2, 5] = math.log(2)
    boxes, obj, cls = decode(raw, spec)
    assert boxes.shape == (1, 3 * 64 + 3 * 16, 4) and cls.shape == (1, 240, 2)
    index = 1 * 64 + 2 * 8 + 5
    cx, cy = (5 + 0.5) * 8, (2 + 0.5) * 8
    assert boxes[0, index].tolist() == pytest.approx([cx - 16, cy - 8, cx + 16, cy + 8])
    assert obj.eq(0.5).all() and cls.eq(0.5).all()
    # scale_x_y stretches the sigmoid beyond the cell: sigmoid -> 1 reaches 1 + (s - 1) / 2
    raw[1][0, 0, 0, 0] = 50.0
    boxes, _, _ = decode(raw, spec)
    assert ((boxes[0, 192, 0] + boxes[0, 192, 2]) / 2).item() == pytest.approx(
        (1.05 - 0.025) * 16)


def test_anchor_assignment_picks_head_anchor_and_cell():
    spec = yolo_spec(tiny_model())
    grids = [(8, 8), (4, 4)]
    # 30x30 centred at (40, 24): best anchor 32x32 = anchor 3, head 1 (stride 16), cell (1, 2)
    # 14x14 centred at (20, 36): best anchor 16x16 = anchor 1, head 0 (stride 8), cell (4, 2)
    boxes = torch.tensor([[25.0, 9.0, 55.0, 39.0], [13.0, 29.0, 27.0, 43.0]])
    (t0, a0, r0, c0), (t1, a1, r1, c1) = assign_anchors(boxes, spec, grids)
    assert (t0.tolist(), a0.tolist(), r0.tolist(), c0.tolist()) == ([1], [1], [4], [2])
    assert (t1.tolist(), a1.tolist(), r1.tolist(), c1.tolist()) == ([0], [0], [1], [2])
    # iou_thresh 0.213 (yolov4.cfg) adds every anchor above it, each in its own head and at
    # the box centre's cell of that head. 30x30: 16x16 (256/900), 24x12 (288/900), 48x48
    # (900/2304), 64x40 (900/2560), not 8x8 (64/900). 14x14: 8x8 (64/196), 24x12 (168/316),
    # not 32x32 (196/1024)
    spec = yolo_spec(tiny_model(iou_thresh=0.213))
    (t0, a0, r0, c0), (t1, a1, r1, c1) = assign_anchors(boxes, spec, grids)
    assert sorted(zip(t0.tolist(), a0.tolist(), r0.tolist(), c0.tolist(),
                         strict=True)) == [
        (0, 1, 3, 5), (0, 2, 3, 5), (1, 0, 4, 2), (1, 1, 4, 2), (1, 2, 4, 2)]
    assert sorted(zip(t1.tolist(), a1.tolist(), strict=True)) == [(0, 0), (0, 1), (0, 2)]
    assert r1.tolist() == [1, 1, 1] and c1.tolist() == [2, 2, 2]
    # centres outside the image are clamped to the border cells
    spec = yolo_spec(tiny_model())
    (_, _, r, c), _ = assign_anchors(torch.tensor([[60.0, 60.0, 76.0, 76.0]]), spec, grids)
    assert r.tolist() == [7] and c.tolist() == [7]


# ----------------------------------------------------------------------------- the loss


def test_loss_is_finite_without_boxes_and_normalised_per_image():
    model = tiny_model()
    task = create_task("detection")
    task.bind(model)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.eval()  # batch statistics would make the two images depend on each other
    loss = task.loss(model(x), [EMPTY, EMPTY])
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # one image with boxes, one without; the loss is a sum over cells divided by the batch
    boxes = target([[8, 10, 22, 30], [30, 30, 62, 60]], [0, 1])
    pair = task.loss(model(x), [boxes, EMPTY])
    alone = [task.loss(model(x[i:i + 1]), [t]) for i, t in enumerate([boxes, EMPTY])]
    assert pair.item() == pytest.approx((alone[0].item() + alone[1].item()) / 2, rel=1e-5)
    with pytest.raises(ValueError, match=r"labels must lie in 0..1 .* got \[2\]"):
        task.loss(model(x), [target([[0, 0, 5, 5]], [2]), EMPTY])
    with pytest.raises(ValueError, match="2 images"):
        task.loss(model(x), [EMPTY])


def test_loss_in_bf16_autocast_is_float32():
    model = tiny_model()
    task = create_task("detection")
    task.bind(model)
    x = torch.rand(1, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(x)
        loss = task.loss(outputs, [target([[8, 10, 22, 30]], [0])])
    assert outputs[0].dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


def test_predictions_over_a_truth_are_not_penalised_as_negatives():
    spec = yolo_spec(tiny_model())
    plain = [target([[13, 29, 27, 43]], [0])]  # responsible: head 0, anchor 1, cell (4, 2)
    difficult = [target([[13, 29, 27, 43]], [0], [True])]

    def loss_with(truth, objectness: float, anchor: int, row: int, col: int,
                  class_logit: float = 0.0) -> dict:
        raw = [torch.zeros(1, 21, 8, 8), torch.zeros(1, 21, 4, 4)]
        raw[0][0, 19:21] = class_logit  # anchor 2's class probabilities
        # anchor 2 (24x12) of the same cell predicts the truth exactly: IoU 1 > ignore_thresh
        # (the centre (20, 36) is the middle of cell (4, 2): t_xy = 0)
        raw[0][0, 14:18, 4, 2] = torch.tensor([0.0, 0.0, math.log(14 / 24), math.log(14 / 12)])
        raw[0][0, 7 * anchor + 4, row, col] = objectness
        return {k: v.item() for k, v in yolo_loss(raw, truth, spec).items()}

    for truth in (plain, difficult):
        assert loss_with(truth, 5.0, 2, 4, 2)["obj"] == pytest.approx(
            loss_with(truth, -5.0, 2, 4, 2)["obj"])
        # a negative far away is penalised
        assert loss_with(truth, 5.0, 2, 0, 0)["obj"] > loss_with(truth, -5.0, 2, 0, 0)["obj"] + 4
    # as in darknet, a prediction is only ignored when it also claims a class (p > 0.25)
    assert loss_with(plain, 5.0, 2, 4, 2, -3.0)["obj"] > loss_with(plain, -5.0, 2, 4, 2, -3.0)[
        "obj"] + 4
    # the responsible prediction is a positive; over a difficult box it is only ignored
    # (its 16x16 box overlaps the 14x14 truth with IoU 196/256 > 0.7)
    assert loss_with(plain, 5.0, 1, 4, 2)["obj"] < loss_with(plain, -5.0, 1, 4, 2)["obj"] - 4
    assert loss_with(difficult, 5.0, 1, 4, 2)["obj"] == pytest.approx(
        loss_with(difficult, -5.0, 1, 4, 2)["obj"])
    assert loss_with(plain, 0.0, 1, 4, 2)["box"] > 0 and loss_with(plain, 0.0, 1, 4, 2)["cls"] > 0
    assert loss_with(difficult, 0.0, 1, 4, 2)["box"] == 0
    assert loss_with(difficult, 0.0, 1, 4, 2)["cls"] == 0


def test_training_on_one_image_lowers_the_loss_and_finds_the_boxes():
    model = tiny_model(seed=0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1  # running statistics settle within the short run
    task = create_task("detection")
    task.bind(model)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 0.2
    image[0, 0, 10:30, 8:22] = 1.0  # a red 14x20 box, class 0
    image[0, 2, 30:60, 30:62] = 1.0  # a blue 32x30 box, class 1
    truth = target([[8, 10, 22, 30], [30, 30, 62, 60]], [0, 1])
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    model.train()
    for _ in range(120):
        loss = task.loss(model(image), [truth])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    found = detect(model, image, conf=0.25)[0]
    for box, label in zip(truth["boxes"], truth["labels"], strict=True):
        mine = found["labels"] == label
        assert mine.any(), f"no detection of class {int(label)}"
        assert box_iou(box[None], found["boxes"][mine]).max() > 0.7
    assert task.evaluate(model, [(image, [truth])], device="cpu")["map50"] == pytest.approx(1)


# ----------------------------------------------------------------------------- mAP


def scenes(seed: int = 0, images: int = 6) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    result = []
    for _ in range(images):
        n = int(torch.randint(1, 5, (1,), generator=g))
        result.append({"boxes": random_boxes(n, g) * 2,
                       "labels": torch.randint(0, 3, (n,), generator=g)})
    return result


def as_detections(truth: list[dict], shift: float = 0.0) -> list[dict]:
    out = []
    for t in truth:
        boxes = t["boxes"].clone()
        width = boxes[:, 2] - boxes[:, 0]
        boxes[:, [0, 2]] += shift * width[:, None]
        out.append({"boxes": boxes, "scores": torch.linspace(0.9, 0.5, len(boxes)),
                    "labels": t["labels"]})
    return out


def test_map_of_perfect_shifted_and_random_predictions():
    truth = scenes()
    perfect = coco_map(truth, as_detections(truth), num_classes=3)
    assert perfect == pytest.approx({"map50": 1.0, "map": 1.0})
    # half a box to the side: IoU 1/3, below every threshold of COCO
    shifted = coco_map(truth, as_detections(truth, 0.5), num_classes=3)
    assert shifted["map50"] < 0.1 and shifted["map"] < 0.1
    # a fifth of a box: IoU 2/3 passes 0.5 but fails the higher thresholds
    slight = coco_map(truth, as_detections(truth, 0.2), num_classes=3)
    assert slight["map50"] == pytest.approx(1.0) and 0.1 < slight["map"] < 0.5
    g = torch.Generator().manual_seed(9)
    noise = [{"boxes": random_boxes(20, g) * 2, "scores": torch.rand(20, generator=g),
              "labels": torch.randint(0, 3, (20,), generator=g)} for _ in truth]
    assert coco_map(truth, noise, num_classes=3)["map50"] < 0.1
    nothing = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                "labels": torch.zeros(0, dtype=torch.long)} for _ in truth]
    assert coco_map(truth, nothing, num_classes=3) == {"map50": 0.0, "map": 0.0}


def test_difficult_boxes_are_neither_misses_nor_false_positives():
    truth = [target([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 0], [False, True])]
    hit = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.9]),
           "labels": torch.tensor([0])}
    assert coco_map(truth, [hit], 1) == pytest.approx({"map50": 1.0, "map": 1.0})
    # a confident detection on the difficult box does not count against the other one
    both = {"boxes": torch.tensor([[20.0, 20, 40, 40], [0, 0, 10, 10]]),
            "scores": torch.tensor([0.95, 0.9]), "labels": torch.tensor([0, 0])}
    assert coco_map(truth, [both], 1) == pytest.approx({"map50": 1.0, "map": 1.0})
    # ...whereas the same box, not difficult and not found, is a miss
    plain = [target([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 0])]
    assert coco_map(plain, [hit], 1)["map50"] < 0.6
    with pytest.raises(ValueError, match="no ground-truth boxes"):
        coco_map([EMPTY], [hit], 1)


def test_evaluate_end_to_end_on_yolov4_tiny():
    torch.manual_seed(0)
    model = yolov4_tiny(num_classes=3, image_size=64)
    task = create_task("detection")
    task.bind(model)
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.rand(2, 3, 64, 64, generator=g),
         [target([[4, 4, 30, 40]], [2]), EMPTY]),
        (torch.rand(3, 3, 64, 64, generator=g),
         [target([[10, 10, 60, 50], [0, 30, 20, 60]], [0, 1], [False, True]), EMPTY,
          target([[30, 2, 62, 20]], [1])]),
    ]
    result = task.evaluate(model, batches, device="cpu")
    assert set(result) == {"loss", "map50", "map"}
    assert math.isfinite(result["loss"]) and result["loss"] > 0
    assert 0.0 <= result["map"] <= result["map50"] <= 1.0
    assert not model.training
    found = detect(model, batches[0][0], conf=0.0)
    assert len(found) == 2 and 0 < len(found[0]["boxes"]) <= 3 * 20 * 3  # anchors x cells x C
    assert (found[0]["scores"][:-1] >= found[0]["scores"][1:]).all()
    assert found[0]["boxes"].min() >= 0 and found[0]["boxes"].max() <= 64
    nothing = detect(model, batches[0][0], conf=0.9999)
    assert [len(d["scores"]) for d in nothing] == [0, 0] and nothing[0]["boxes"].shape == (0, 4)
    with pytest.raises(ValueError, match="no ground-truth boxes"):
        task.evaluate(model, [(torch.rand(1, 3, 64, 64), [EMPTY])], device="cpu")
    with pytest.raises(ValueError, match="empty"):
        task.evaluate(model, [], device="cpu")

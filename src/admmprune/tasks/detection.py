"""Object detection with YOLO heads: the YOLOv4 loss as darknet computes it, decoding, NMS
and mAP through pycocotools' COCOeval.

A batch is ``(images, targets)``: images (B, 3, S, S); targets a list of B dicts with
``boxes`` (n, 4) x1, y1, x2, y2 in input pixels, ``labels`` (n,) int64, optionally
``difficult`` (n,) bool (ignored in evaluation like COCO's iscrowd) and ``image_id``.

The model's ``forward`` returns one raw tensor per ``[yolo]`` head, (B, A * (5 + C), H, W),
channels per anchor ordered (tx, ty, tw, th, objectness, class 0..C-1) as in darknet.

**The loss**, per head, as darknet's ``forward_yolo_layer`` (summed over cells, then divided
by the batch size B, because darknet sums deltas over the batch and divides the learning
rate by the batch):

- decoding: centre = (sigmoid(t_xy) * s - (s - 1) / 2 + cell) * stride with s = scale_x_y,
  size = exp(t_wh) * anchor (pixels);
- assignment: each ground-truth box is matched, by width/height IoU alone, against all the
  cfg's anchors; the best one is responsible in the head whose ``mask`` holds it, in the cell
  holding the box centre; with ``iou_thresh`` < 1 every other anchor whose width/height IoU
  exceeds ``iou_thresh`` is responsible too, in its own head (yolov4.cfg: 0.213);
- box: ``iou_normalizer`` * sum(1 - CIoU) over (ground truth, responsible anchor) pairs
  (``iou_loss`` giou/diou/iou in the cfg select those instead; absent or mse means CIoU);
- objectness: ``obj_normalizer`` * BCE, target 1 on responsible cells, 0 elsewhere, except
  that cells whose predicted box overlaps some ground truth of its image with IoU >
  ``ignore_thresh`` and which give some class a probability > 0.25 are not penalised
  (darknet's ``best_match_iou`` rule);
- ``difficult`` boxes (VOC difficult, COCO crowd) are never responsible for anything, but
  count in the ignore test: as in evaluation, finding them is neither rewarded nor punished;
- classes: ``cls_normalizer`` * BCE against a multi-hot target on responsible cells.

Missing cfg keys take darknet's defaults (ignore_thresh 0.5, iou_thresh 1, normalizers 1),
except ``iou_normalizer``, 0.07, the value the CIoU cfgs use (darknet's 0.75 is for MSE).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .boxes import batched_nms, box_iou, paired_iou, wh_iou, xyxy_to_cxcywh, xyxy_to_ltwh
from .boxes import nms as nms
from .registry import Task, register_task

__all__ = [
    "Detection",
    "YoloHead",
    "YoloSpec",
    "yolo_spec",
    "assign_anchors",
    "yolo_loss",
    "decode",
    "postprocess",
    "detect",
    "nms",
    "coco_map",
]

# exp(t_wh) is capped so that an untrained or diverging head cannot produce inf boxes (and NaN
# IoUs): e^10 is 22026 times the anchor, far beyond any image. The cap acts on the value only;
# the gradient passes as if uncapped, else a head that once overshot would get no gradient to
# come back.
_MAX_LOG_WH = 10.0
_IOU_KINDS = ("iou", "giou", "diou", "ciou")
# darknet's compare_yolo_class: a prediction claims a class when its probability exceeds 0.25
_CLASS_CLAIM_LOGIT = math.log(0.25 / 0.75)


@dataclass(frozen=True)
class YoloHead:
    """What decoding and the loss need from one ``[yolo]`` layer."""

    anchors: torch.Tensor  # (A, 2) masked anchors, input pixels
    all_anchors: torch.Tensor  # (N, 2) every anchor of the cfg; assignment compares to all
    mask: tuple[int, ...]
    stride: int
    scale_x_y: float
    classes: int
    ignore_thresh: float
    iou_thresh: float
    iou_normalizer: float
    obj_normalizer: float
    cls_normalizer: float
    iou_kind: str


@dataclass(frozen=True)
class YoloSpec:
    heads: tuple[YoloHead, ...]

    @property
    def classes(self) -> int:
        return self.heads[0].classes


def _option(layer: nn.Module, key: str, default: float) -> float:
    value = getattr(layer, "options", {}).get(key, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"[yolo] option {key}={value!r} is not a number") from None


def yolo_spec(model: nn.Module) -> YoloSpec:
    """Anchors, strides, classes and loss options of the model's YOLO heads, in output order.

    Reads ``model.yolo_layers`` (a :class:`~admmprune.models.darknet.DarknetModel`), or, for
    a wrapped model (DistributedDataParallel, ...), every submodule that looks like a yolo
    layer, in module order.
    """
    layers = getattr(model, "yolo_layers", None)
    if layers is None:
        layers = [m for m in model.modules()
                  if hasattr(m, "anchors") and hasattr(m, "stride") and hasattr(m, "mask")
                  and hasattr(m, "classes")]
    if not layers:
        raise ValueError("task detection needs a model with YOLO heads, e.g. yolov4-tiny; "
                         f"{type(model).__name__} has none")
    heads = []
    for layer in layers:
        kind = str(getattr(layer, "options", {}).get("iou_loss", "ciou")).lower()
        all_anchors = getattr(layer, "all_anchors", layer.anchors)
        heads.append(YoloHead(
            anchors=layer.anchors.detach().float().cpu(),
            all_anchors=all_anchors.detach().float().cpu(),
            mask=tuple(layer.mask),
            stride=int(layer.stride),
            scale_x_y=float(getattr(layer, "scale_x_y", 1.0)),
            classes=int(layer.classes),
            ignore_thresh=_option(layer, "ignore_thresh", 0.5),
            iou_thresh=_option(layer, "iou_thresh", 1.0),
            iou_normalizer=_option(layer, "iou_normalizer", 0.07),
            obj_normalizer=_option(layer, "obj_normalizer", 1.0),
            cls_normalizer=_option(layer, "cls_normalizer", 1.0),
            iou_kind=kind if kind in _IOU_KINDS else "ciou",
        ))
    if len({h.classes for h in heads}) > 1:
        raise ValueError(f"the YOLO heads disagree on the number of classes: "
                         f"{[h.classes for h in heads]}")
    return YoloSpec(tuple(heads))


# ----------------------------------------------------------------------------- decoding


def _split_head(output: torch.Tensor, head: YoloHead) -> tuple[torch.Tensor, ...]:
    """Raw head (B, A*(5+C), H, W) -> boxes (B, A, H, W, 4) xyxy in input pixels, objectness
    logits (B, A, H, W) and class logits (B, A, H, W, C)."""
    b, channels, h, w = output.shape
    a = len(head.mask)
    if channels != a * (5 + head.classes):
        raise ValueError(f"a YOLO head output has {channels} channels, expected "
                         f"{a}*(5+{head.classes}) = {a * (5 + head.classes)}")
    p = output.view(b, a, 5 + head.classes, h, w).permute(0, 1, 3, 4, 2)
    s = head.scale_x_y
    ys, xs = torch.meshgrid(torch.arange(h, device=output.device, dtype=output.dtype),
                            torch.arange(w, device=output.device, dtype=output.dtype),
                            indexing="ij")
    cx = (p[..., 0].sigmoid() * s - (s - 1) / 2 + xs) * head.stride
    cy = (p[..., 1].sigmoid() * s - (s - 1) / 2 + ys) * head.stride
    anchors = head.anchors.to(output.device, output.dtype).view(1, a, 1, 1, 2)
    t_wh = p[..., 2:4]
    t_wh = t_wh - (t_wh - t_wh.clamp(max=_MAX_LOG_WH)).detach()
    wh = t_wh.exp() * anchors
    boxes = torch.stack((cx - wh[..., 0] / 2, cy - wh[..., 1] / 2,
                         cx + wh[..., 0] / 2, cy + wh[..., 1] / 2), dim=-1)
    return boxes, p[..., 4], p[..., 5:]


def _check_outputs(outputs: Any, spec: YoloSpec) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        outputs = [outputs]
    if len(outputs) != len(spec.heads):
        raise ValueError(f"the model returned {len(outputs)} outputs but has "
                         f"{len(spec.heads)} YOLO heads")
    return list(outputs)


def decode(outputs: Sequence[torch.Tensor], spec: YoloSpec
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All heads' predictions: boxes (B, N, 4) xyxy in input pixels, objectness (B, N) and
    class probabilities (B, N, C), both after the sigmoid. N runs over heads, then anchors,
    rows and columns."""
    outputs = _check_outputs(outputs, spec)
    boxes, obj, cls = [], [], []
    for output, head in zip(outputs, spec.heads, strict=True):
        bx, ob, cl = _split_head(output.float(), head)
        boxes.append(bx.flatten(1, 3))
        obj.append(ob.flatten(1, 3).sigmoid())
        cls.append(cl.flatten(1, 3).sigmoid())
    return torch.cat(boxes, 1), torch.cat(obj, 1), torch.cat(cls, 1)


def postprocess(outputs: Sequence[torch.Tensor], spec: YoloSpec, *, image_size: tuple[int, int],
                conf: float = 0.25, iou: float = 0.45, max_det: int = 300,
                max_candidates: int = 30000) -> list[dict[str, torch.Tensor]]:
    """Raw head outputs -> per image ``{"boxes" (K, 4) xyxy, "scores" (K,), "labels" (K,)}``.

    Score = objectness x class probability; every (box, class) pair above ``conf`` is a
    candidate (a box may be reported for several classes, as darknet does); at most
    ``max_candidates`` best per image go into class-aware greedy NMS at IoU ``iou``, which
    keeps at most ``max_det``. Boxes are clipped to the image (``image_size`` = (H, W)).
    """
    boxes, obj, cls = decode(outputs, spec)
    b, n, c = cls.shape
    scores = (obj.unsqueeze(-1) * cls).view(b, n * c)
    candidates = int((scores > conf).sum(1).max()) if scores.numel() else 0
    if candidates == 0:
        empty = boxes.new_zeros(0, 4)
        return [{"boxes": empty, "scores": empty[:, 0],
                 "labels": torch.zeros(0, dtype=torch.long, device=boxes.device)}
                for _ in range(b)]
    top, index = scores.topk(min(candidates, max_candidates), dim=1)
    labels = index % c
    rows = torch.arange(b, device=boxes.device)[:, None]
    chosen = boxes[rows, index // c]
    h, w = image_size
    chosen = torch.stack((chosen[..., 0].clamp(0, w), chosen[..., 1].clamp(0, h),
                          chosen[..., 2].clamp(0, w), chosen[..., 3].clamp(0, h)), dim=-1)
    keep, kept = batched_nms(chosen, top, labels, valid=top > conf, iou_threshold=iou,
                             max_det=max_det)
    results = []
    for i in range(b):
        k = keep[i][kept[i]]
        results.append({"boxes": chosen[i, k], "scores": top[i, k], "labels": labels[i, k]})
    return results


@torch.no_grad()
def detect(model: nn.Module, images: torch.Tensor, *, conf: float = 0.25, iou: float = 0.45,
           max_det: int = 300, spec: YoloSpec | None = None) -> list[dict[str, torch.Tensor]]:
    """Inference: the model (switched to eval mode) on images (B, 3, H, W) in [0, 1], decoded
    and NMS-filtered; per image ``{"boxes" xyxy input pixels, "scores", "labels"}``."""
    spec = spec or yolo_spec(model)
    model.eval()
    outputs = model(images)
    return postprocess(outputs, spec, image_size=tuple(images.shape[-2:]), conf=conf, iou=iou,
                       max_det=max_det)


# ----------------------------------------------------------------------------- the loss


@dataclass
class _Truth:
    """A batch's ground truth in flat tensors: the boxes that make positives (image index,
    xyxy, label), and every box per image, padded, for the ignore test."""

    image: torch.Tensor  # (n,)
    boxes: torch.Tensor  # (n, 4)
    labels: torch.Tensor  # (n,)
    padded: torch.Tensor  # (B, M, 4)
    valid: torch.Tensor  # (B, M)


def _gather_truth(targets: Sequence[dict], batch: int, classes: int,
                  device: torch.device) -> _Truth:
    if len(targets) != batch:
        raise ValueError(f"got {len(targets)} target dicts for a batch of {batch} images")
    boxes, labels, difficult = [], [], []
    for i, target in enumerate(targets):
        try:
            bx = torch.as_tensor(target["boxes"], dtype=torch.float32, device=device)
            lb = torch.as_tensor(target["labels"], dtype=torch.long, device=device)
        except (KeyError, TypeError):
            raise ValueError("each detection target must be a dict with 'boxes' (n, 4) and "
                             "'labels' (n,)") from None
        bx = bx.reshape(-1, 4) if bx.numel() == 0 else bx
        if bx.dim() != 2 or bx.shape[1] != 4 or lb.shape != bx.shape[:1]:
            raise ValueError(f"target {i}: boxes must be (n, 4) and labels (n,), got "
                             f"{tuple(bx.shape)} and {tuple(lb.shape)}")
        hard = target.get("difficult")
        hard = (torch.zeros_like(lb, dtype=torch.bool) if hard is None
                else torch.as_tensor(hard, dtype=torch.bool, device=device).reshape(-1))
        if hard.shape != lb.shape:
            raise ValueError(f"target {i}: {len(hard)} difficult flags for {len(lb)} boxes")
        boxes.append(bx)
        labels.append(lb)
        difficult.append(hard)
    counts = [len(b) for b in boxes]
    image = torch.repeat_interleave(torch.arange(batch, device=device),
                                    torch.tensor(counts, device=device))
    boxes_, labels_, difficult_ = torch.cat(boxes), torch.cat(labels), torch.cat(difficult)
    if labels_.numel() and bool(((labels_ < 0) | (labels_ >= classes)).any()):
        bad = sorted({int(v) for v in labels_.tolist() if not 0 <= v < classes})
        raise ValueError(f"labels must lie in 0..{classes - 1} for a model with {classes} "
                         f"classes, got {bad}; check the dataset's classes against the "
                         "model's num_classes")
    # darknet stops at empty truths; boxes cropped to nothing carry no signal
    ok = (boxes_[:, 2] > boxes_[:, 0]) & (boxes_[:, 3] > boxes_[:, 1])
    starts = torch.tensor([0, *counts[:-1]], device=device).cumsum(0)
    slot = torch.arange(len(boxes_), device=device) - starts[image]
    padded = torch.zeros(batch, max(counts), 4, device=device)
    valid = torch.zeros(batch, max(counts), dtype=torch.bool, device=device)
    padded[image, slot] = boxes_
    valid[image, slot] = ok
    # difficult (crowd) boxes make no positives, but predictions on them are not negatives
    positive = ok & ~difficult_
    return _Truth(image[positive], boxes_[positive], labels_[positive], padded, valid)


def assign_anchors(boxes: torch.Tensor, spec: YoloSpec, grids: Sequence[tuple[int, int]]
                   ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Darknet's anchor assignment for ground-truth boxes (n, 4) xyxy in input pixels.

    Returns, per head (grid sizes ``grids`` = [(H, W), ...]), ``(truth, anchor, row, col)``
    index tensors of the responsible predictions: the best anchor by width/height IoU among
    all the cfg's anchors, where this head holds it, plus (``iou_thresh`` < 1) this head's
    other anchors with width/height IoU > ``iou_thresh``; the cell is the one holding the
    box centre (clamped to the grid).
    """
    cxcywh = xyxy_to_cxcywh(boxes)
    result = []
    for head, (h, w) in zip(spec.heads, grids, strict=True):
        all_anchors = head.all_anchors.to(boxes.device)
        ious = wh_iou(cxcywh[:, 2:], all_anchors)  # (n, N)
        best = ious.argmax(1) if len(boxes) else ious.new_zeros(0, dtype=torch.long)
        mask = torch.tensor(head.mask, device=boxes.device)
        chosen = best.unsqueeze(1) == mask  # (n, A)
        if head.iou_thresh < 1:
            chosen |= ious[:, mask] > head.iou_thresh
        truth, anchor = chosen.nonzero(as_tuple=True)
        col = (cxcywh[truth, 0] / head.stride).long().clamp(0, w - 1)
        row = (cxcywh[truth, 1] / head.stride).long().clamp(0, h - 1)
        result.append((truth, anchor, row, col))
    return result


def yolo_loss(outputs: Sequence[torch.Tensor], targets: Sequence[dict], spec: YoloSpec
              ) -> dict[str, torch.Tensor]:
    """The YOLO loss (see the module docstring) and its parts, each summed over cells and
    heads and divided by the batch size: ``{"loss", "box", "obj", "cls"}``. Computed in
    float32 whatever the autocast state."""
    outputs = _check_outputs(outputs, spec)
    device = outputs[0].device
    batch = outputs[0].shape[0]
    with torch.autocast(device.type, enabled=False):
        outputs = [o.float() for o in outputs]
        truth = _gather_truth(targets, batch, spec.classes, device)
        grids = [tuple(o.shape[-2:]) for o in outputs]
        assignments = assign_anchors(truth.boxes, spec, grids)
        box_sum = obj_sum = cls_sum = outputs[0].new_zeros(())
        for output, head, (t, a, r, c) in zip(outputs, spec.heads, assignments, strict=True):
            boxes, obj_logit, cls_logit = _split_head(output, head)
            img = truth.image[t]
            obj_target = torch.zeros_like(obj_logit)
            with torch.no_grad():
                if truth.valid.shape[1]:
                    overlap = box_iou(boxes.flatten(1, 3), truth.padded)
                    overlap = overlap.masked_fill(~truth.valid.unsqueeze(1), 0).amax(-1)
                    # darknet only ignores predictions that also claim some class
                    claims = cls_logit.amax(-1) > _CLASS_CLAIM_LOGIT
                    ignored = (overlap.view_as(obj_logit) > head.ignore_thresh) & claims
                    weight = (~ignored).float()
                else:
                    weight = torch.ones_like(obj_logit)
                weight[img, a, r, c] = 1.0
            obj_target[img, a, r, c] = 1.0
            obj_sum = obj_sum + head.obj_normalizer * (F.binary_cross_entropy_with_logits(
                obj_logit, obj_target, reduction="none") * weight).sum()
            if len(t):
                iou = paired_iou(boxes[img, a, r, c], truth.boxes[t], head.iou_kind)
                box_sum = box_sum + head.iou_normalizer * (1 - iou).sum()
                cls_target = torch.zeros_like(cls_logit)
                cls_target[img, a, r, c, truth.labels[t]] = 1.0
                positive = obj_target.bool()
                cls_sum = cls_sum + head.cls_normalizer * F.binary_cross_entropy_with_logits(
                    cls_logit[positive], cls_target[positive], reduction="sum")
        parts = {"box": box_sum / batch, "obj": obj_sum / batch, "cls": cls_sum / batch}
        parts["loss"] = parts["box"] + parts["obj"] + parts["cls"]
    return parts


# ----------------------------------------------------------------------------- mAP


def coco_map(ground_truth: Sequence[dict], detections: Sequence[dict], num_classes: int
             ) -> dict[str, float]:
    """mAP@0.5 (``map50``) and mAP@0.5:0.95 (``map``) by pycocotools' COCOeval ('bbox').

    ``ground_truth[i]`` holds image i's ``boxes`` (xyxy), ``labels`` and optionally
    ``difficult`` (evaluated as COCO iscrowd: a detection on it is neither a hit nor a false
    positive); ``detections[i]`` its ``boxes``, ``scores``, ``labels``. COCO's standard
    settings: at most 100 detections per image count, 101-point interpolated precision,
    classes without ground truth left out of the mean.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError("mAP needs pycocotools: pip install 'admmprune[detection]'") from None
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth entries but {len(detections)} "
                         "detection entries; one of each per image")
    images, gt_anns, dt_anns = [], [], []
    for image_id, (gt, dt) in enumerate(zip(ground_truth, detections, strict=True), start=1):
        images.append({"id": image_id})
        boxes = torch.as_tensor(gt["boxes"], dtype=torch.float64).reshape(-1, 4)
        labels = torch.as_tensor(gt["labels"]).reshape(-1)
        difficult = gt.get("difficult")
        difficult = (torch.zeros(len(boxes), dtype=torch.bool) if difficult is None
                     else torch.as_tensor(difficult, dtype=torch.bool).reshape(-1))
        for box, label, hard in zip(xyxy_to_ltwh(boxes).tolist(), labels.tolist(),
                                    difficult.tolist(), strict=True):
            # COCOeval takes annotation id 0 for "unmatched": ids start at 1
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": image_id, "bbox": box,
                            "area": box[2] * box[3], "category_id": int(label) + 1,
                            "iscrowd": int(hard)})
        boxes = torch.as_tensor(dt["boxes"], dtype=torch.float64).reshape(-1, 4)
        for box, score, label in zip(xyxy_to_ltwh(boxes).tolist(),
                                     torch.as_tensor(dt["scores"]).reshape(-1).tolist(),
                                     torch.as_tensor(dt["labels"]).reshape(-1).tolist(),
                                     strict=True):
            dt_anns.append({"id": len(dt_anns) + 1, "image_id": image_id, "bbox": box,
                            "area": box[2] * box[3], "category_id": int(label) + 1,
                            "score": float(score), "iscrowd": 0})
    if not gt_anns:
        raise ValueError("the evaluation data has no ground-truth boxes, so mAP is undefined; "
                         "evaluate on images with annotated objects")
    categories = [{"id": c + 1} for c in range(num_classes)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": categories}
        coco_dt.dataset = {"images": images, "annotations": dt_anns, "categories": categories}
        coco_gt.createIndex()
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # -1 means "no class had any scorable ground truth" (all difficult): nothing was found
    return {"map50": max(float(evaluator.stats[1]), 0.0),
            "map": max(float(evaluator.stats[0]), 0.0)}


# ----------------------------------------------------------------------------- the task


@register_task("detection")
class Detection(Task):
    """YOLO detection: darknet's YOLOv4 loss, mAP@0.5 and mAP@0.5:0.95 via COCOeval.

    ``conf``, ``iou`` and ``max_det`` are the evaluation's score threshold, NMS IoU and
    detections kept per image (0.001 / 0.6 / 300, the usual settings for measuring mAP).
    """

    metric = "map50"
    metrics = ("map50", "map")
    labels = {"map50": "mAP@0.5", "map": "mAP@0.5:0.95", "loss": "loss"}

    def __init__(self, conf: float = 0.001, iou: float = 0.6, max_det: int = 300) -> None:
        if not 0 <= conf < 1 or not 0 < iou <= 1 or max_det < 1:
            raise ValueError(f"detection needs 0 <= conf < 1, 0 < iou <= 1 and max_det >= 1, "
                             f"got conf={conf}, iou={iou}, max_det={max_det}")
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.spec: YoloSpec | None = None

    def bind(self, model: nn.Module) -> None:
        self.spec = yolo_spec(model)

    def _bound(self) -> YoloSpec:
        if self.spec is None:
            raise RuntimeError("the detection task is not bound to a model: call "
                               "task.bind(model) first (it reads the YOLO heads' anchors)")
        return self.spec

    def loss(self, output: Sequence[torch.Tensor], target: Sequence[dict]) -> torch.Tensor:
        return yolo_loss(output, target, self._bound())["loss"]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable, *, device: torch.device | str,
                 autocast: Callable[[], Any] | None = None) -> dict[str, float]:
        """Mean loss per image, ``map50`` and ``map`` over ``batches``."""
        if self.spec is None:
            self.bind(model)
        spec = self._bound()
        model.eval()
        loss_sum, seen = 0.0, 0
        ground_truth: list[dict] = []
        detections: list[dict] = []
        for images, targets in batches:
            images = images.to(device, non_blocking=True)
            with (autocast or nullcontext)():
                outputs = model(images)
            outputs = [o.float() for o in _check_outputs(outputs, spec)]
            loss_sum += float(yolo_loss(outputs, targets, spec)["loss"]) * len(images)
            seen += len(images)
            found = postprocess(outputs, spec, image_size=tuple(images.shape[-2:]),
                                conf=self.conf, iou=self.iou, max_det=self.max_det)
            for target, det in zip(targets, found, strict=True):
                ground_truth.append({k: torch.as_tensor(target[k]).cpu()
                                     for k in ("boxes", "labels", "difficult") if k in target})
                detections.append({k: v.cpu() for k, v in det.items()})
        if seen == 0:
            raise ValueError("evaluation data is empty")
        return {"loss": loss_sum / seen, **coco_map(ground_truth, detections, spec.classes)}

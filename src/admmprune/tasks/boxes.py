"""Box maths for detection: conversions, IoU and its CIoU/GIoU/DIoU variants, greedy NMS.

Boxes are float tensors whose last dimension holds 4 numbers: ``xyxy`` is (x1, y1, x2, y2),
``cxcywh`` is (centre x, centre y, width, height), ``ltwh`` is COCO's (left, top, width,
height). Pure functions of tensors, no model and no task in here.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "xyxy_to_cxcywh",
    "cxcywh_to_xyxy",
    "xyxy_to_ltwh",
    "box_area",
    "box_iou",
    "paired_iou",
    "wh_iou",
    "nms",
    "batched_nms",
]

_EPS = 1e-9


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def xyxy_to_ltwh(boxes: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of xyxy boxes; inverted boxes count as empty."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(
        min=0)


def _intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    return w * h


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes ``a`` (..., N, 4) and ``b`` (..., M, 4): (..., N, M)."""
    a, b = a.unsqueeze(-2), b.unsqueeze(-3)
    inter = _intersection(a, b)
    return inter / (box_area(a) + box_area(b) - inter + _EPS)


def paired_iou(a: torch.Tensor, b: torch.Tensor, kind: str = "iou") -> torch.Tensor:
    """IoU of corresponding xyxy boxes (shapes broadcast; last dim 4), or one of its variants:

    - ``giou``: IoU - (C - U) / C, with C the area of the smallest enclosing box, U the union;
    - ``diou``: IoU - rho^2 / c^2, rho the distance of the centres, c the enclosing diagonal;
    - ``ciou``: DIoU - alpha * v, v = 4/pi^2 (atan(w_b/h_b) - atan(w_a/h_a))^2 the aspect
      mismatch and alpha = v / (1 - IoU + v) its weight; alpha is held constant under autograd,
      as in the CIoU paper and darknet.

    All are symmetric in ``a`` and ``b`` and equal 1 for identical boxes.
    """
    if kind not in ("iou", "giou", "diou", "ciou"):
        raise ValueError(f"unknown IoU kind {kind!r}; choose iou, giou, diou or ciou")
    inter = _intersection(a, b)
    area_a, area_b = box_area(a), box_area(b)
    union = area_a + area_b - inter + _EPS
    iou = inter / union
    if kind == "iou":
        return iou
    cw = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    ch = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    if kind == "giou":
        enclosing = cw * ch + _EPS
        return iou - (enclosing - union) / enclosing
    diagonal = cw ** 2 + ch ** 2 + _EPS
    rho2 = ((a[..., 0] + a[..., 2] - b[..., 0] - b[..., 2]) ** 2
            + (a[..., 1] + a[..., 3] - b[..., 1] - b[..., 3]) ** 2) / 4
    diou = iou - rho2 / diagonal
    if kind == "diou":
        return diou
    wa, ha = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    wb, hb = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    v = (4 / math.pi ** 2) * (torch.atan(wb / (hb + _EPS)) - torch.atan(wa / (ha + _EPS))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + _EPS)
    return diou - alpha * v


def wh_iou(wh_a: torch.Tensor, wh_b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of boxes given by width and height alone, as if they shared one centre:
    (N, 2) x (M, 2) -> (N, M). Darknet matches ground truth to anchors this way."""
    a, b = wh_a.unsqueeze(1), wh_b.unsqueeze(0)
    inter = torch.minimum(a[..., 0], b[..., 0]) * torch.minimum(a[..., 1], b[..., 1])
    return inter / (a[..., 0] * a[..., 1] + b[..., 0] * b[..., 1] - inter + _EPS)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor | None = None,
                valid: torch.Tensor | None = None, iou_threshold: float = 0.5,
                max_det: int | None = None, chunk: int = 512
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy NMS on a batch of padded candidate sets at once.

    ``boxes`` (B, N, 4) xyxy, ``scores`` (B, N), ``labels`` (B, N) (class-aware: a box only
    suppresses boxes of its own label; None: all one class), ``valid`` (B, N) marks real
    candidates (padding is False). In each row, boxes are visited by decreasing score (ties:
    lower index first); a box is kept unless a kept box of the same label overlaps it with
    IoU > ``iou_threshold``. Returns ``(keep, kept)``: (B, K) indices into N in decreasing
    score, and a (B, K) mask of which entries are real (K = max kept in a row, at most
    ``max_det``).

    Candidates are taken ``chunk`` at a time in score order: a chunk is first filtered by
    every box kept so far (one IoU matrix), then resolved greedily inside itself, one kept box
    per pass; the work stops once every row holds ``max_det`` boxes. So the sequential part
    runs on ``chunk`` columns rather than on all N, and boxes far down the order are never
    looked at when enough were kept before them.
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:2]:
        raise ValueError(f"batched_nms needs boxes (B, N, 4) and scores (B, N), got "
                         f"{tuple(boxes.shape)} and {tuple(scores.shape)}")
    b, n = scores.shape
    device = boxes.device
    limit = n if max_det is None else min(max_det, n)
    valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid
    order = scores.masked_fill(~valid, float("-inf")).sort(dim=1, descending=True,
                                                           stable=True).indices
    boxes = boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4))
    valid = valid.gather(1, order)
    labels = (torch.zeros_like(order) if labels is None else labels.gather(1, order))
    keep = torch.zeros(b, max(limit, 1), dtype=torch.long, device=device)  # sorted positions
    count = torch.zeros(b, dtype=torch.long, device=device)
    rows = torch.arange(b, device=device)
    for start in range(0, n, chunk):
        alive = valid[:, start:start + chunk] & (count < limit).unsqueeze(1)
        if not bool(alive.any()):
            break  # valid entries sort first, so every later chunk is empty too
        part, part_labels = boxes[:, start:start + chunk], labels[:, start:start + chunk]
        most = int(count.max())
        if most:
            held = keep[:, :most]
            overlap = box_iou(boxes.gather(1, held.unsqueeze(-1).expand(-1, -1, 4)), part)
            hit = (overlap > iou_threshold) & (labels.gather(1, held).unsqueeze(2)
                                               == part_labels.unsqueeze(1))
            hit &= (torch.arange(most, device=device) < count.unsqueeze(1)).unsqueeze(2)
            alive &= ~hit.any(dim=1)
        while True:
            has = alive.any(dim=1)
            if not bool(has.any()):
                break
            # after sorting, the first alive entry of a row is its best remaining box
            best = alive.to(torch.uint8).argmax(dim=1)
            keep[rows[has], count[has]] = start + best[has]
            count += has
            suppress = box_iou(part[rows, best].unsqueeze(1), part).squeeze(1) > iou_threshold
            suppress &= part_labels == part_labels[rows, best].unsqueeze(1)
            suppress[rows, best] = True
            alive &= ~suppress
            alive &= (count < limit).unsqueeze(1)
    width = int(count.max())
    kept = torch.arange(width, device=device) < count.unsqueeze(1)
    keep = order.gather(1, keep[:, :width])
    return keep.masked_fill(~kept, 0), kept


def nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor | None = None,
        iou_threshold: float = 0.5, max_det: int | None = None) -> torch.Tensor:
    """Greedy (class-aware when ``labels`` is given) NMS of one image's boxes (N, 4) xyxy and
    scores (N,): indices of the kept boxes in decreasing score, at most ``max_det``."""
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms needs boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} "
                         f"and {tuple(scores.shape)}")
    keep, kept = batched_nms(boxes[None], scores[None],
                             None if labels is None else labels[None],
                             iou_threshold=iou_threshold, max_det=max_det)
    return keep[0][kept[0]]

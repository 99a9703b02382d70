"""Knowledge distillation from the run's own dense model (Hinton et al. 2015).

During the ADMM W-steps and the masked retraining the student (the model being pruned)
may also learn from the dense model's softened outputs:

    loss = (1 - w) · task_loss + w · T² · KL(softmax(teacher / T) ‖ softmax(student / T))

The T² keeps the soft term's gradients on the scale of the task loss's as T changes
(the gradient of the KL term shrinks like 1/T²). The teacher is a frozen copy of the model
taken when the dense phase ends; :mod:`admmprune.runs.pipeline` owns its life cycle, the training
loop only calls :meth:`Distillation.loss`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["distillation_loss", "combined_loss", "frozen_copy", "Distillation"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``, averaged over the batch (rows),
    computed in float32. Gradients flow into ``student_logits`` only."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape: the teacher must be "
                         "the same architecture with the same classes")
    t = float(temperature)
    student = F.log_softmax(student_logits.float() / t, dim=1)
    teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * (t * t)


def combined_loss(task_loss: torch.Tensor, soft_loss: torch.Tensor | None,
                  weight: float) -> torch.Tensor:
    """``(1 - weight) · task_loss + weight · soft_loss``; with ``weight == 0`` it is
    ``task_loss`` itself (the same tensor, no arithmetic: bit-for-bit the plain loss)."""
    if weight == 0:
        return task_loss
    if soft_loss is None:
        raise ValueError("a distillation weight > 0 needs the soft loss")
    return (1.0 - weight) * task_loss + weight * soft_loss


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for a teacher: eval mode (no dropout, BatchNorm's running
    statistics), no gradients, same device. Copying draws no random numbers, so taking a
    teacher leaves the run's random streams (and a bitwise resume) untouched."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


@dataclass(frozen=True)
class Distillation:
    """What the training loop needs to distil: the frozen ``teacher``, the weight ``w`` of
    the soft term in [0, 1) and the temperature ``T`` > 0."""

    teacher: nn.Module
    weight: float
    temperature: float

    def __post_init__(self) -> None:
        if not 0 <= self.weight < 1:
            raise ValueError(f"distillation weight must be in [0, 1), got {self.weight!r}")
        if not self.temperature > 0:
            raise ValueError(f"distillation temperature must be > 0, got {self.temperature!r}")

    def loss(self, x: torch.Tensor, task_loss: torch.Tensor,
             student_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the combined loss of a batch ``x``, the soft term alone, detached)."""
        # eval() again: a caller may have put the teacher back in training mode
        if self.teacher.training:
            self.teacher.eval()
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        soft = distillation_loss(student_logits, teacher_logits, self.temperature)
        return combined_loss(task_loss, soft, self.weight), soft.detach()

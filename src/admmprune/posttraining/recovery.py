"""A short recovery fine-tune after post-training pruning: next-token cross-entropy on
training windows, pruned weights held at zero (:class:`~admmprune.masks.MaskEnforcer`), so
that one-shot methods can be compared after the same small budget of training."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn
from tqdm import tqdm

from ..masks import MaskEnforcer
from .errors import OneShotError
from .sensitivity import next_token_loss

__all__ = ["recover"]


def recover(model: nn.Module, batches: Sequence[torch.Tensor], *, learning_rate: float = 1e-4,
            masked: Sequence[str] = (), progress: bool = True) -> list[float]:
    """Trains ``model`` in place, one AdamW step per batch of token windows ``[B, T]``.

    Args:
        model: a causal LM (a Hugging Face one, or any module returning logits).
        batches: the training batches, one step each.
        learning_rate: AdamW's, constant (no weight decay).
        masked: names of parameters whose zeros must stay zero (the pruned weights).
        progress: a progress bar over the steps.

    Returns:
        The loss of every step.

    Raises:
        OneShotError: a loss that is not finite (the model is then handed back as it was
            before the fine-tune), a frozen model, or a masked name it lacks.
    """
    if not batches:
        return []
    parameters = dict(model.named_parameters())
    if not any(p.requires_grad for p in parameters.values()):
        raise OneShotError("the recovery fine-tune has nothing to train: no parameter of the "
                           "model requires grad (set requires_grad_(True) on what may change)")
    unknown = [name for name in masked if name not in parameters]
    if unknown:
        raise OneShotError(f"masked names unknown parameters: {unknown[:3]}")
    before = copy.deepcopy(model.state_dict())
    enforcer = MaskEnforcer([parameters[n] for n in masked],
                            [parameters[n].detach() != 0 for n in masked]) if masked else None
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=learning_rate, weight_decay=0.0)
    was_training = model.training
    model.train()
    losses: list[float] = []
    try:
        for step, x in enumerate(tqdm(batches, desc="recovery", unit="step",
                                      disable=not progress)):
            loss = next_token_loss(model(x), x)
            value = float(loss.detach())
            if not math.isfinite(value):
                model.load_state_dict(before)
                raise OneShotError(f"the recovery fine-tune's loss is {value} at step "
                                   f"{step}: the model is left as pruned, before the "
                                   "fine-tune; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if enforcer is not None:
                enforcer.enforce(optimizer)
            losses.append(value)
    finally:
        if enforcer is not None:
            enforcer.remove()
        model.train(was_training)
    return losses

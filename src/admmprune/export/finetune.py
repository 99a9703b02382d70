"""Trained quantization (Deep Compression, Han et al. 2016, section 3.1): after k-means every
surviving weight of a quantized tensor is tied to its centroid, and fine-tuning moves only the
centroids. The gradient of a centroid is the sum of the gradients of the weights assigned to
it; assignments stay fixed and pruned entries stay exactly zero, so the file keeps at most
2**bits distinct values per tensor and the same sparsity pattern.

    quantized = quantize_weights(model, bits=4)            # weights := their centroids
    history = finetune_centroids(model, quantized, data.train, epochs=2, lr=1e-4)

Only the centroids move: biases, norm layers and unquantized tensors are frozen, and batch
norm layers use their running statistics during fine-tuning (they would otherwise drift with
the fine-tuning batches), so the model that is evaluated is the model that is stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import encoding

__all__ = ["QuantizedTensor", "centroid_gradient", "quantize_weights", "write_centroids",
           "finetune_centroids"]


@dataclass
class QuantizedTensor:
    """One quantized tensor: its survivors' flat positions, each survivor's code, and the
    codebook (float32, on the tensor's device)."""

    positions: torch.Tensor  # int64, sorted flat indices of the survivors
    codes: torch.Tensor  # int64, one per survivor, < len(centroids)
    centroids: torch.Tensor  # float32 codebook


def centroid_gradient(weight_grad: torch.Tensor, positions: torch.Tensor, codes: torch.Tensor,
                      size: int) -> torch.Tensor:
    """Gradient of the loss with respect to each of ``size`` centroids: the sum of the
    gradients of the survivors (flat ``positions`` of ``weight_grad``) assigned to it by
    ``codes``. Pruned entries contribute nothing."""
    member = weight_grad.reshape(-1)[positions].float()
    return torch.zeros(size, dtype=torch.float32, device=weight_grad.device) \
        .index_add_(0, codes, member)


def write_centroids(weight: torch.Tensor, quantized: QuantizedTensor) -> None:
    """Set every survivor of ``weight`` (in place) to its centroid; pruned entries untouched."""
    with torch.no_grad():
        values = quantized.centroids[quantized.codes].to(weight.dtype)
        weight.view(-1).index_copy_(0, quantized.positions, values)


def quantize_weights(model: nn.Module, bits: int, include: Sequence[str] = (),
                     exclude: Sequence[str] = ()) -> dict[str, QuantizedTensor]:
    """Replace the prunable weights' survivors by their k-means centroids in place, with the
    codebooks :func:`~admmprune.export.save_compressed` would write (the same tensors, the same
    :func:`~admmprune.export.encoding.quantize`); returns {parameter name: QuantizedTensor}."""
    from .formats import BITS, ExportError, sparse_names

    if bits not in BITS or bits == 32:
        raise ExportError(f"quantization needs bits in {', '.join(map(str, BITS[1:]))}, "
                          f"got {bits!r}")
    params = dict(model.named_parameters())
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out: dict[str, QuantizedTensor] = {}
    for name, support in sparse_names(model, state, None, include, exclude).items():
        weight = params.get(name)
        if weight is None or not weight.is_floating_point():
            continue  # a buffer: saved quantized, but there is nothing to train
        positions = torch.nonzero(support.reshape(-1)).view(-1)
        if len(positions) == 0:
            continue
        values = state[name].reshape(-1)[positions].float().numpy()
        codebook, codes = encoding.quantize(values, bits)
        device = weight.device
        q = QuantizedTensor(positions=positions.to(device),
                            codes=torch.from_numpy(codes).to(device),
                            centroids=torch.from_numpy(codebook).to(device))
        write_centroids(weight.data, q)
        out[name] = q
    return out


class _FrozenNorms(nn.Module):
    """The model in training mode (dropout on) with its batch norm layers in eval mode: their
    running statistics and affine parameters are not the centroids, so they must not move."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> _FrozenNorms:
        super().train(mode)
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


def finetune_centroids(model: nn.Module, quantized: dict[str, QuantizedTensor],
                       batches: Iterable, *, epochs: int, lr: float = 1e-4,
                       task=None, device: torch.device | str = "cpu",
                       max_steps: int | None = None, amp: str = "off", accumulate: int = 1,
                       progress: bool = False) -> list[dict]:
    """Train only the centroids of ``quantized`` (from :func:`quantize_weights` on ``model``)
    for ``epochs`` passes over ``batches`` with Adam at ``lr``; afterwards the weights of
    ``model`` and each ``QuantizedTensor.centroids`` hold the fine-tuned centroids (the codes
    and positions are unchanged). ``task``, ``device``, ``max_steps`` (per epoch), ``amp`` and
    ``accumulate`` are :func:`~admmprune.train.train_epoch`'s. Returns its statistics per
    epoch.

    Each quantized weight keeps its gradient only long enough for the centroids' gradients
    (:func:`centroid_gradient`) to be taken from it; after each optimizer step the centroids
    are written back into the weights."""
    from ..train import train_epoch

    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if not lr > 0:
        raise ValueError(f"the fine-tuning learning rate must be > 0, got {lr}")
    params = dict(model.named_parameters())
    missing = sorted(set(quantized) - set(params))
    if missing:
        raise ValueError(f"quantized tensors {missing} are not parameters of the model")
    centroids = {name: q.centroids.detach().clone().requires_grad_(True)
                 for name, q in quantized.items()}
    for name, q in quantized.items():
        q.centroids = centroids[name]
    saved_flags = {name: p.requires_grad for name, p in params.items()}
    hooks = []

    def take_gradient(name: str):
        q = quantized[name]

        def hook(weight: torch.Tensor) -> None:
            grad = centroid_gradient(weight.grad, q.positions, q.codes, len(q.centroids))
            c = q.centroids
            c.grad = grad if c.grad is None else c.grad + grad
            weight.grad = None  # the weight itself never steps

        return hook

    def write_back() -> None:
        for name, q in quantized.items():
            write_centroids(params[name].data, q)

    history: list[dict] = []
    try:
        for name, p in params.items():
            p.requires_grad_(name in quantized)
        hooks = [params[name].register_post_accumulate_grad_hook(take_gradient(name))
                 for name in quantized]
        optimizer = torch.optim.Adam(list(centroids.values()), lr=lr)
        wrapped = _FrozenNorms(model)
        for epoch in range(epochs):
            if hasattr(batches, "set_epoch"):
                batches.set_epoch(epoch)
            history.append(train_epoch(wrapped, batches, optimizer, task=task, device=device,
                                       after_step=write_back, max_steps=max_steps, amp=amp,
                                       accumulate=accumulate,
                                       desc=f"centroids {epoch + 1}/{epochs}",
                                       progress=progress))
    finally:
        for handle in hooks:
            handle.remove()
        for name, p in params.items():
            p.requires_grad_(saved_flags[name])
            if name in quantized:
                p.grad = None
        for q in quantized.values():
            q.centroids = q.centroids.detach()
        model.eval()
    return history

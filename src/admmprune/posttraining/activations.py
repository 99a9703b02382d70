"""Input statistics of layers over calibration batches, gathered with forward hooks.

:func:`input_norms` gives ``‖X_j‖₂`` per input feature j of each layer: the norm of that
feature over every token of every calibration example (what Wanda scores with);
:func:`input_grams` gives ``XᵀX`` (what SparseGPT reconstructs with).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import islice

import torch
from torch import nn

from ..selection import prunable_parameters

__all__ = ["CalibrationError", "check_weight_and_gram", "calibrated_layers", "calibrate",
           "input_feature_dim", "input_norms", "input_grams"]


def input_feature_dim(module: nn.Module) -> int | None:
    """The input axis of ``module.weight``: 1 for ``nn.Linear`` ``[out, in]``, 0 for
    Hugging Face's ``Conv1D`` ``[in, out]`` (GPT-2); None for other layers."""
    if isinstance(module, nn.Linear):
        return 1
    # recognised by name: transformers need not be importable for other models
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") \
            and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return 0
    return None


class CalibrationError(ValueError):
    """A calibration method (Wanda, SparseGPT) cannot score these layers."""


def check_weight_and_gram(weight: torch.Tensor, gram: torch.Tensor, input_dim: int,
                          method: str, error: type[CalibrationError] = CalibrationError
                          ) -> None:
    """The one layout rule of the methods that reconstruct a layer from ``XᵀX``: a 2-D
    weight with its inputs on dim 0 or 1 and a square Gram matrix of that many inputs.

    Raises:
        CalibrationError: (of class ``error``) naming ``method`` and what does not fit.
    """
    if weight.dim() != 2 or input_dim not in (0, 1):
        raise error(f"{method} takes 2-D weights with inputs on dim 0 or 1, got shape "
                    f"{tuple(weight.shape)} and input_dim {input_dim!r}")
    n_in = weight.shape[input_dim]
    if gram.shape != (n_in, n_in):
        raise error(f"a {tuple(gram.shape)} Gram matrix for a weight of shape "
                    f"{tuple(weight.shape)} with {n_in} inputs (input_dim {input_dim})")


def calibrated_layers(model: nn.Module, include: Sequence[str] | None,
                      exclude: Sequence[str] | None, method: str,
                      error: type[CalibrationError] = CalibrationError
                      ) -> list[tuple[str, nn.Module, nn.Parameter, int]]:
    """The pruned tensors of ``model`` as ``(name, layer, weight, input_dim)``, in
    :func:`prunable_parameters` order.

    Raises:
        CalibrationError: (of class ``error``) a pruned tensor that is not the weight of an
        ``nn.Linear`` or HF ``Conv1D`` (``method`` names who refuses it).
    """
    layers = []
    for name, weight in prunable_parameters(model, include, exclude):
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        dim = input_feature_dim(module)
        if attr != "weight" or dim is None:
            raise error(f"{name}: {method} scores the weights of nn.Linear and HF Conv1D "
                        f"layers, not a {type(module).__name__}'s {attr!r}; exclude it")
        layers.append((name, module, weight, dim))
    return layers


@torch.no_grad()
def _gather(model: nn.Module, modules: Sequence[nn.Module], batches: Iterable,
            statistic: Callable[[torch.Tensor], torch.Tensor], max_batches: int | None,
            device: torch.device | str | None) -> list[torch.Tensor]:
    """Sum of ``statistic(inputs as [tokens, features])`` over every call of each module on
    the calibration batches (eval mode; hooks removed even on error)."""
    if device is None:
        device = next(model.parameters()).device
    sums: list[torch.Tensor | None] = [None] * len(modules)

    def hook_for(index: int):
        def hook(module: nn.Module, inputs: tuple) -> None:
            x = inputs[0].detach()
            value = statistic(x.reshape(-1, x.shape[-1]))
            previous = sums[index]
            sums[index] = value if previous is None else previous + value
        return hook

    handles = [m.register_forward_pre_hook(hook_for(i)) for i, m in enumerate(modules)]
    was_training = model.training
    seen = 0
    try:
        model.eval()
        for step, (x, _) in enumerate(batches):
            if max_batches is not None and step >= max_batches:
                break
            model(x.to(device))
            seen += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("no calibration batch: the batches are empty")
    found = [s for s in sums if s is not None]
    if len(found) < len(sums):
        missing = [i for i, s in enumerate(sums) if s is None]
        raise ValueError(f"modules {missing} were never called on the calibration batches")
    return found


def input_norms(model: nn.Module, modules: Sequence[nn.Module], batches: Iterable, *,
                max_batches: int | None = None, device: torch.device | str | None = None
                ) -> list[torch.Tensor]:
    """``‖X_j‖₂`` per input feature of each of ``modules`` over the calibration batches.

    The model runs in eval mode (no dropout) and returns to its previous mode; hooks are
    removed even on error. A module called several times per forward pass counts every
    call's inputs.

    Args:
        model: the model the batches are fed to.
        modules: layers of ``model`` whose first input is ``[..., features]``.
        batches: ``(x, y)`` pairs; ``y`` is ignored.
        max_batches: at most this many batches (None: all).
        device: where ``x`` goes (default: the device of the model's first parameter).

    Returns:
        One float32 vector per module, on the module's device.

    Raises:
        ValueError: no batch was seen, or a module was never called.
    """
    sums = _gather(model, modules, batches, lambda x: x.float().pow(2).sum(0), max_batches,
                   device)
    return [s.sqrt() for s in sums]


def input_grams(model: nn.Module, modules: Sequence[nn.Module], batches: Iterable, *,
                max_batches: int | None = None, device: torch.device | str | None = None
                ) -> list[torch.Tensor]:
    """``XᵀX`` (features x features, float64) of each of ``modules``' inputs over every
    calibration token: SparseGPT's Hessian up to a factor of 2. Same arguments, modes and
    errors as :func:`input_norms`."""
    return _gather(model, modules, batches, lambda x: x.double().t() @ x.double(),
                   max_batches, device)


def calibrate(model: nn.Module, modules: Sequence[nn.Module], batches: Iterable,
              gather: Callable[..., list[torch.Tensor]],
              prune_layer: Callable[[int, torch.Tensor], None], *, sequential: bool = False,
              max_batches: int | None = None, device: torch.device | str | None = None
              ) -> None:
    """Prune ``modules`` one by one from statistics of their calibration inputs.

    Args:
        model: the model the batches are fed to.
        modules: its layers to prune, in forward order.
        batches: ``(x, y)`` calibration pairs.
        gather: :func:`input_norms` or :func:`input_grams`.
        prune_layer: ``prune_layer(i, statistic)`` prunes ``modules[i]`` in place.
        sequential: False: every layer's statistic from the dense model, in one pass;
            True: layer i's from the model with layers 0..i-1 already pruned, one pass per
            layer over the same cached batches (as the reference implementations of Wanda
            and SparseGPT do per transformer block).
        max_batches: at most this many batches.
        device: where ``x`` goes.
    """
    if not sequential:
        statistics = gather(model, modules, batches, max_batches=max_batches, device=device)
        for i, statistic in enumerate(statistics):
            prune_layer(i, statistic)
        return
    cached = list(islice(batches, max_batches))  # the same batches for every layer
    for i, module in enumerate(modules):
        (statistic,) = gather(model, [module], cached, device=device)
        prune_layer(i, statistic)

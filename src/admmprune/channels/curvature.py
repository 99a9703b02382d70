"""Optimal Brain Damage saliency: how far removing one weight alone moves the model's outputs
(the ``obd`` score of the projection).

Removing weight ``w`` (setting it to 0) moves the outputs ``f(x)`` by about ``-w · ∂f/∂w``;
summed over a batch, the squared move is ``w² · Σ_b ‖∂f(x_b)/∂w‖²``, the weight's square
times the diagonal of the output Gauss-Newton matrix ``Σ_b J_bᵀ J_b`` (LeCun, Denker and
Solla 1990, with the Gauss-Newton curvature of a squared output error). Unlike the
``folded`` and ``share`` scores (:mod:`.norms`, :mod:`.shares`) it also weighs what a
layer's outputs are worth downstream: a classifier's weights move the logits directly, a
convolution's only through everything after it. Scaling a layer by ``c`` with a BatchNorm
after it divides its gradients by ``c``, so ``w² · g²`` does not move.

The diagonal is estimated without per-example gradients: for random signs ``r`` on every
output element, ``E[(∂(r·f)/∂w)²] = Σ_b ‖∂f(x_b)/∂w‖²`` (the cross terms have mean 0; eval
mode keeps the examples independent). Each probe is one backward pass of the same forward
pass; the probes come from a fixed seed, so the same model and inputs give the same scores
(and a resumed run the same masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .graph import as_args, output_tensors

__all__ = ["DEFAULT_PROBES", "CurvatureError", "obd_saliency", "output_curvature"]

#: backward passes per estimate: the estimate's relative spread per weight is about
#: sqrt(2 / probes), small beside the orders of magnitude the saliencies span
DEFAULT_PROBES = 16


class CurvatureError(RuntimeError):
    """The output curvature cannot be measured; the message says what to do."""


def output_curvature(model: nn.Module, names: Sequence[str], example_inputs: Any,
                     probes: int = DEFAULT_PROBES, seed: int = 0) -> list[torch.Tensor]:
    """The diagonal of ``Σ_b J_bᵀ J_b`` for every named weight (its own shape), where ``J_b``
    is the Jacobian of all of the model's floating-point outputs on example ``b``, estimated
    with ``probes`` Rademacher probes. Eval mode; the model's mode, BatchNorm statistics,
    ``requires_grad`` flags, ``.grad`` fields and the global random state are left as they
    were.

    Raises:
        CurvatureError: ``probes`` < 1, a forward pass that fails, an output with no
            gradient path, or a named weight the outputs do not depend on.
    """
    if not isinstance(probes, int) or probes < 1:
        raise CurvatureError(f"probes must be a positive integer, got {probes!r}")
    params = [model.get_parameter(name) for name in names]
    frozen = [p for p in params if not p.requires_grad]
    was_training = model.training
    try:
        for p in frozen:
            p.requires_grad_(True)
        model.eval()
        with torch.enable_grad():
            try:
                outputs = [t for t in output_tensors(model(*as_args(example_inputs)))
                           if t.is_floating_point() and t.requires_grad]
            except Exception as err:  # noqa: BLE001 - any failure of the user's forward pass
                raise CurvatureError(f"the obd score differentiates the model's outputs on "
                                     f"the example inputs, and the forward pass failed: "
                                     f"{type(err).__name__}: {err}") from None
            if not outputs:
                raise CurvatureError("the obd score needs model outputs that depend on the "
                                     "weights (floating-point tensors with a gradient); this "
                                     "model's forward returned none: use another score")
            generator = torch.Generator(device="cpu").manual_seed(seed)
            sums = [torch.zeros_like(p, dtype=torch.float64) for p in params]
            for probe in range(probes):
                signs = [(torch.randint(0, 2, t.shape, generator=generator) * 2 - 1)
                         .to(device=t.device, dtype=t.dtype) for t in outputs]
                projected = torch.stack([(t * s).sum() for t, s in
                                         zip(outputs, signs, strict=True)]).sum()
                grads = torch.autograd.grad(projected, params, retain_graph=probe < probes - 1,
                                            allow_unused=True)
                for name, total, grad in zip(names, sums, grads, strict=True):
                    if grad is None:
                        raise CurvatureError(f"{name}: the model's outputs do not depend on "
                                             "it on the example inputs; exclude it or use "
                                             "another score")
                    total += grad.detach().double().square()
    finally:
        for p in frozen:
            p.requires_grad_(False)
        model.train(was_training)
    return [(total / probes).to(p.dtype) for total, p in zip(sums, params, strict=True)]


def obd_saliency(values: Sequence[torch.Tensor], curvature: Sequence[torch.Tensor]
                 ) -> list[torch.Tensor]:
    """``v² · h``: the squared output move of removing each entry alone."""
    return [v.detach().square() * h.to(device=v.device, dtype=v.dtype)
            for v, h in zip(values, curvature, strict=True)]

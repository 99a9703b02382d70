"""The block-by-block calibration engine: prune a model one transformer block at a time.

The first block's inputs are captured once on the calibration batches
(:func:`capture_block_inputs`); then for every block in order:

1. its prunable layers' input statistics (``XᵀX`` or ``‖X_j‖₂``, as the method asks) are
   summed with forward pre-hooks over the block run on its cached inputs;
2. the method prunes each layer from its statistic and budget;
3. the pruned block runs on the cached inputs, and its outputs become the next block's
   inputs (the keyword inputs — masks, rotary embeddings — stay).

``order="block"`` gathers every layer's statistic of a block in one pass (SparseGPT's
reference code); ``order="sequential"`` gathers them group by group in forward order (layers
reading the same tensor form a group: q/k/v, then o, then gate/up, then down), re-running the
block after each group is pruned so later groups see the pruned earlier ones. Each block runs
over the calibration set a constant number of times (2, or 1 + its groups), and a pass stops
after the last layer it gathers for: the forward cost grows linearly with depth, and memory
holds one block's statistics plus the calibration activations.

Where block weights live is a :class:`BlockStore`'s business: in memory (nothing to do), or
on disk (:mod:`admmprune.posttraining.checkpoint` loads each block just before it is pruned and
writes it out after).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

from .activations import calibrated_layers
from .blocks import find_blocks
from .budgets import Budget, layer_budgets
from .errors import OneShotError
from .inputs import BlockInput, capture_block_inputs, run_block
from .methods import LayerMethod, layer_method
from .statistics import forward_groups, gather_statistics

__all__ = ["ORDERS", "LayerRecord", "BlockStore", "BlockCallback", "prune_blocks",
           "block_layers"]

ORDERS = ("block", "sequential")


@dataclass(frozen=True)
class LayerRecord:
    """What the engine did to one layer.

    Attributes:
        name: the weight's name in the model.
        block: the name of the block holding it.
        kept: weights kept (the mask's count).
        total: the layer's weights.
        seconds: time of the method's ``prune`` call on it.
        mask: the boolean mask in the weight's layout, on the CPU (only with
            ``keep_masks``).
    """

    name: str
    block: str
    kept: int
    total: int
    seconds: float
    mask: torch.Tensor | None = None


class BlockStore(Protocol):
    """Where block weights come from and go: ``load`` before a block is pruned, ``release``
    after it has been pruned and run (its outputs computed)."""

    def load(self, name: str, block: nn.Module) -> None: ...

    def release(self, name: str, block: nn.Module) -> None: ...


class _InMemory:
    def load(self, name: str, block: nn.Module) -> None:
        pass

    def release(self, name: str, block: nn.Module) -> None:
        pass


# callback(block index, block name, block) after the block is pruned, before its release
BlockCallback = Callable[[int, str, nn.Module], None]


@dataclass(frozen=True)
class _Layer:
    name: str
    module: nn.Module
    input_dim: int


def block_layers(model: nn.Module, blocks: Sequence[tuple[str, nn.Module]],
                 include: Sequence[str] | None, exclude: Sequence[str] | None,
                 method_name: str) -> list[list[tuple[str, nn.Module, int]]]:
    """The pruned layers of every block as ``(weight name, layer, input axis)``, in
    :func:`prunable_parameters` order.

    Raises:
        OneShotError: a pruned tensor that is not an ``nn.Linear`` / HF ``Conv1D`` weight,
            or one outside every block.
    """
    per_block: list[list[tuple[str, nn.Module, int]]] = [[] for _ in blocks]
    outside = []
    for name, module, _, dim in calibrated_layers(model, include, exclude, method_name,
                                                  OneShotError):
        for i, (block_name, _) in enumerate(blocks):
            if name.startswith(block_name + "."):
                per_block[i].append((name, module, dim))
                break
        else:
            outside.append(name)
    if outside:
        raise OneShotError(f"{outside[:5]} lie outside the blocks "
                           f"({blocks[0][0]} ... {blocks[-1][0]}): the block engine prunes "
                           "layers inside blocks; exclude them (exclude=[...]) or name blocks "
                           "that hold them (pattern=)")
    return per_block


def _default_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight  # looked up each time: a store may have replaced the Parameter
    assert isinstance(weight, torch.Tensor)
    return weight


@torch.no_grad()
def _prune_layer(layer: _Layer, block: str, method: LayerMethod,
                 statistic: torch.Tensor | None, budget: Budget, keep_masks: bool
                 ) -> LayerRecord:
    weight = _weight(layer.module)
    rows = weight.detach() if layer.input_dim == 1 else weight.detach().t()  # [out, in]
    start = time.perf_counter()
    new, mask = method.prune(layer.name, rows, statistic, budget)
    seconds = time.perf_counter() - start
    if tuple(new.shape) != tuple(rows.shape) or tuple(mask.shape) != tuple(rows.shape) \
            or mask.dtype != torch.bool:
        raise OneShotError(f"{method.name} returned a {tuple(new.shape)} weight and a "
                           f"{tuple(mask.shape)} {mask.dtype} mask for {layer.name} "
                           f"{tuple(rows.shape)}: it must return both as [out, in], the mask "
                           "boolean")
    if layer.input_dim == 0:
        new, mask = new.t(), mask.t()
    if new.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr():
        new = new.clone()  # a method may hand back (a view of) the weight it was given
    weight.copy_(new)
    return LayerRecord(layer.name, block, int(mask.sum()), mask.numel(), seconds,
                       mask.detach().to("cpu", copy=True) if keep_masks else None)


def _prune_block(block_name: str, block: nn.Module, layers: Sequence[_Layer],
                 inputs: Sequence[BlockInput] | None, method: LayerMethod,
                 budgets: Mapping[str, Budget], order: str, keep_masks: bool
                 ) -> list[LayerRecord]:
    def prune(layer: _Layer, statistic: torch.Tensor | None) -> LayerRecord:
        return _prune_layer(layer, block_name, method, statistic, budgets[layer.name],
                            keep_masks)

    if method.statistic is None or inputs is None:
        return [prune(layer, None) for layer in layers]
    modules = [layer.module for layer in layers]
    calls: list[int] | None = None
    if order == "block":
        groups = [list(range(len(layers)))]
    else:
        groups, calls = forward_groups(block, modules, inputs[0])
    records = []
    for group in groups:
        # a sequential pass stops once the group's layers have seen the input
        per_input = None if calls is None else sum(calls[i] for i in group)
        statistics = gather_statistics(block, [modules[i] for i in group], inputs,
                                       method.statistic, per_input)
        for i, statistic in zip(group, statistics, strict=True):
            records.append(prune(layers[i], statistic))
        del statistics
    order_of = {layer.name: k for k, layer in enumerate(layers)}
    return sorted(records, key=lambda r: order_of[r.name])


@torch.no_grad()
def prune_blocks(model: nn.Module, batches: Iterable, method: str | LayerMethod = "sparsegpt",
                 *, all_percent: float | Mapping[str, float] | None = None,
                 nm: tuple[int, int] | None = None, include: Sequence[str] | None = None,
                 exclude: Sequence[str] | None = None, pattern: str | None = None,
                 order: str = "block", max_batches: int | None = None,
                 device: torch.device | str | None = None, progress: bool = True,
                 keep_masks: bool = False, callback: BlockCallback | None = None,
                 store: BlockStore | None = None) -> list[LayerRecord]:
    """Prune ``model``'s layers in place, block by block, from calibration batches.

    Args:
        model: the model (eval mode while it runs; its mode is restored).
        batches: calibration batches: token tensors ``[B, T]``, ``(x, y)`` pairs (``y``
            ignored) or dicts of keyword inputs.
        method: ``"magnitude"``, ``"wanda"``, ``"sparsegpt"`` or a :class:`LayerMethod`.
        all_percent: share removed from every layer (percent), or ``{layer name:
            percent}`` covering every pruned layer (weight or module names), or
        nm: ``(N, M)``: keep N of every M consecutive inputs of a row; exactly one.
        include, exclude: the selection patterns of :func:`prunable_parameters`; every
            pruned layer must lie inside a block.
        pattern: names the blocks (see :func:`find_blocks`); None: recognised.
        order: ``"block"`` (one statistics pass per block) or ``"sequential"`` (one per
            group of layers in forward order).
        max_batches: use at most this many batches.
        device: where batches and activations go (default: the model's first parameter's).
        progress: show a progress bar over the blocks.
        keep_masks: keep every layer's mask in its record.
        callback: ``callback(index, name, block)`` after each block is pruned and run.
        store: loads and releases block weights (default: they are in memory).

    Returns:
        One :class:`LayerRecord` per pruned layer, in model order.

    Raises:
        OneShotError: bad options, layers outside the blocks or of an unknown kind, a method
            that returns the wrong shapes. BlockError: no blocks, or blocks that cannot be
            run on cached inputs.
    """
    method = layer_method(method)
    if order not in ORDERS:
        raise OneShotError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    blocks = find_blocks(model, pattern)
    per_block = [[_Layer(*entry) for entry in entries]
                 for entries in block_layers(model, blocks, include, exclude, method.name)]
    layers = [layer for entries in per_block for layer in entries]
    sizes = [(layer.name, _weight(layer.module).numel()) for layer in layers]
    budgets = layer_budgets(sizes, all_percent, nm)
    store = store or _InMemory()
    device = _default_device(model) if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    records: list[LayerRecord] = []
    bar = tqdm(total=len(blocks), desc=f"oneshot {method.name}", disable=not progress,
               leave=False, dynamic_ncols=True, unit="block")
    try:
        inputs: list[BlockInput] | None = None
        if method.statistic is not None:
            inputs = capture_block_inputs(model, blocks[0][1], batches, device=device,
                                          max_batches=max_batches)
        for index, (name, block) in enumerate(blocks):
            bar.set_postfix_str(name)
            store.load(name, block)
            records += _prune_block(name, block, per_block[index], inputs, method, budgets,
                                    order, keep_masks)
            if inputs is not None and index + 1 < len(blocks):
                for k, block_input in enumerate(inputs):  # in place: one copy held at a time
                    inputs[k] = block_input.with_hidden(run_block(block, block_input))
            if callback is not None:
                callback(index, name, block)
            store.release(name, block)
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    return records

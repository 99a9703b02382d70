"""The channel dependency graph of a model, from torch-pruning, with the fixes admmprune needs.

Shared by :mod:`admmprune.channels.shrink` (which channels can be removed together) and
:mod:`admmprune.channels.liveness` (which units no kept weight reads). torch-pruning builds the
graph by tracing one forward pass; two of its guesses are replaced by what the forward pass
actually did: the sizes and argument order of each concatenation's parts, and the places
where a channel-mixing module (LocalResponseNorm, Softmax, ...) sits, which block removal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["CHANNEL_MIXING", "as_args", "observed_forward", "output_tensors", "build_graph",
           "map_concat"]

# Modules that mix channels: removing a zero channel changes the others' values.
CHANNEL_MIXING = (nn.LocalResponseNorm, nn.CrossMapLRN2d, nn.Softmax, nn.Softmin,
                  nn.LogSoftmax, nn.Softmax2d, nn.ChannelShuffle, nn.PixelShuffle,
                  nn.PixelUnshuffle)


def as_args(example_inputs) -> tuple:
    """The example inputs as positional arguments of the model's forward."""
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) \
        else (example_inputs,)


def observed_forward(model: nn.Module, example_inputs: Any, handles: list) -> None:
    """One forward pass for the hooks in ``handles`` to watch: eval mode (BatchNorm's running
    statistics must not move while they look), no gradients; afterwards the hooks are removed
    and the model's mode restored, whether the pass ran or raised (its error propagates)."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*as_args(example_inputs))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def output_tensors(out) -> list[torch.Tensor]:
    """Every tensor in a model's output (a tensor, or nested tuples, lists and dicts)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in output_tensors(o)]
    return []


def build_graph(model: nn.Module, example_inputs) -> tuple[Any, dict]:
    """(torch-pruning DependencyGraph, {node: why its channels must stay}) for ``model``."""
    import torch_pruning as tp

    cat_sizes: dict[Any, list[int] | None] = {}

    class RecordCat(torch.overrides.TorchFunctionMode):
        # torch-pruning infers the sizes of a concatenation's parts from the graph and
        # silently maps indices wrongly when that fails; the forward pass knows them.
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func in (torch.cat, torch.concat, torch.concatenate) and \
                    isinstance(out, torch.Tensor) and out.grad_fn is not None:
                parts = args[0] if args else kwargs.get("tensors", kwargs.get("inputs"))
                dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
                dim = dim % out.dim()
                if dim == 1 and all(t.requires_grad for t in parts):
                    cat_sizes[out.grad_fn] = [t.shape[1] for t in parts]
                else:
                    cat_sizes[out.grad_fn] = None
            return out

    # torch-pruning traces through a channel-mixing module's functional parts as if they
    # were element-wise; the grad_fn of the module's output marks where it sits
    mixing: dict[Any, str] = {}

    def record_mixing(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            mixing[output.grad_fn] = type(module).__name__

    def forward(m, inputs):
        hooks = [mod.register_forward_hook(record_mixing) for mod in m.modules()
                 if isinstance(mod, CHANNEL_MIXING)]
        try:
            with RecordCat():
                return m(*as_args(inputs))
        finally:
            for h in hooks:
                h.remove()

    graph = tp.DependencyGraph()
    with torch.enable_grad():
        graph.build_dependency(model, example_inputs=example_inputs, forward_fn=forward,
                               verbose=False)
    bad_cats = set()
    for node in graph.module2node.values():
        if node.type == tp.ops.OPTYPE.CONCAT:
            # torch-pruning lays the parts out in the order it met them while tracing,
            # not in the order of torch.cat's arguments: put them in argument order
            sizes = cat_sizes.get(node.grad_fn)
            fns = [f for f, _ in node.grad_fn.next_functions]
            ordered = [next((n for n in node.inputs if n.grad_fn is f), None) for f in fns]
            if sizes is not None and len(sizes) == len(node.inputs) == len(ordered) and \
                    None not in ordered and len(set(map(id, ordered))) == len(ordered):
                node.inputs[:] = ordered
                node.module.concat_sizes = list(sizes)
                map_concat(node, sizes)
            else:
                bad_cats.add(node)
    tp.dependency.index_mapping.update_index_mapping(graph)
    blocked = {}
    for node in graph.module2node.values():
        if node.type == tp.ops.OPTYPE.CONCAT and getattr(node.module, "offsets", None) is None:
            blocked[node] = "concatenation whose part sizes are unknown"
        if node.grad_fn in mixing:
            blocked[node] = f"passes through {mixing[node.grad_fn]}"
    blocked.update({n: "concatenation whose part sizes are unknown" for n in bad_cats})
    return graph, blocked


def map_concat(node, sizes: list[int]) -> None:
    """Index mappings between a concatenation and its parts from the recorded sizes
    (torch-pruning leaves them out when its own size inference disagrees, e.g. when the
    concatenation is pooled and flattened into a Linear)."""
    from torch_pruning.dependency.index_mapping import _ConcatIndexMapping

    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    node.module.offsets = offsets
    for i, part in enumerate(node.inputs):
        for dep in node.dependencies:  # concatenation -> part
            if dep.target is part:
                dep.index_mapping[1] = _ConcatIndexMapping(offsets[i:i + 2], reverse=True)
        for dep in part.dependencies:  # part -> concatenation
            if dep.target is node:
                dep.index_mapping[1] = _ConcatIndexMapping(offsets[i:i + 2], reverse=False)

"""Which tensors of a model are pruned: Conv/Linear weights by default, or any weight tensor
named by an include pattern; every tensor at most once.

Rules (``prunable_parameters`` and ``describe_selection`` share them):

- Candidates are parameters with at least 2 dimensions (weight matrices and kernels);
  biases and norm-layer scales are never pruned.
- Without ``include``, the candidates selected are the ``weight`` of every Conv/Linear
  module; Hugging Face's ``transformers.pytorch_utils.Conv1D`` (GPT-2's projections, a
  Linear whose weight is stored transposed, [in, out]) counts as a Linear. ``include`` /
  ``exclude`` are shell-style patterns (``fnmatch``) matched against module names
  (``"features.*"``, ``"fc2"``) and full parameter names (``"lstm.weight_ih_l0"``,
  ``"*.in_proj_weight"``, ``"emb.weight"``): a parameter is
  reached by a pattern that matches its own name or the name of the module holding it, so
  naming them reaches RNN, Embedding and MultiheadAttention weights too. A wildcard
  pattern reaches every candidate it matches (``"encoder.*"`` includes an LSTM under
  ``encoder``); ``describe_selection`` shows the result. Exclusion wins over inclusion.
- A Parameter shared by several modules (weight tying) is one tensor: it is pruned once,
  under the first name it has in ``named_modules`` order; the other names are reported as
  shared. It is selected if any of its names is selected, and excluded if any is excluded.
- Frozen weights (``requires_grad=False``) are skipped, even when a wildcard pattern
  matches them: ADMM cannot move them. Naming one exactly in ``include`` (its full
  parameter name, or its module's name) prunes it anyway (hard prune and masks apply).
- Tensors behind a weight_norm / spectral_norm (or any other) parametrization are skipped
  the same way: the module's effective ``weight`` is computed, not a Parameter; name the
  underlying tensor exactly to prune it anyway.
- Embeddings and the language-model head are left dense by default: a weight held by an
  ``nn.Embedding``, by a module named ``lm_head`` or by the module the model's
  ``get_output_embeddings()`` returns (Hugging Face), and so a Linear head tied to the
  input embedding, is listed with that reason. Any include pattern that reaches it
  prunes it (``include=["lm_head", "transformer.h.*"]``).
- A model may name modules it advises against pruning in an attribute
  ``prune_exclude_default`` (detectors: the first convolution and the convolutions that
  feed the YOLO heads, as YOLObile does); they are skipped like frozen weights: naming one
  exactly in ``include`` prunes it anyway.
- A pattern that matches no module holding a candidate and no candidate raises
  ``SelectionError`` naming the pattern.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "format_selection",
    "is_transposed_linear",
    "linear_weight",
    "PRUNABLE_TYPES",
    "SelectionError",
    "SelectedTensor",
    "SkippedTensor",
    "prunable_parameters",
    "describe_selection",
]

# Weights of these modules are pruned by default; biases and norm layers never are.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)

# Hugging Face's Conv1D, recognised by name so that this module never imports transformers
_TRANSPOSED_LINEARS = (("transformers.pytorch_utils", "Conv1D"),
                       ("transformers.modeling_utils", "Conv1D"))
_HEAD_NAME = "lm_head"

_LISTED = 40  # names listed in an error message before "... and N more"


def is_transposed_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a Linear layer whose ``weight`` is stored transposed, [in, out]:
    Hugging Face's ``transformers.pytorch_utils.Conv1D`` (GPT-2) or a subclass of it.
    Decided from the class names, so transformers is never imported here."""
    return any((cls.__module__, cls.__name__) in _TRANSPOSED_LINEARS
               for cls in type(module).__mro__)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """A Linear layer's weight as ``F.linear`` takes it, [out, in], detached (a view: a
    Conv1D's stored [in, out] weight is transposed, not copied)."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach().t() if is_transposed_linear(module) else weight.detach()


def _is_prunable_module(module: nn.Module) -> bool:
    return isinstance(module, PRUNABLE_TYPES) or is_transposed_linear(module)


class SelectionError(ValueError):
    """The include/exclude patterns leave nothing to prune, or name nothing."""


class SelectedTensor(NamedTuple):
    name: str
    shape: tuple[int, ...]
    numel: int


class SkippedTensor(NamedTuple):
    name: str
    shape: tuple[int, ...]
    reason: str


@dataclass
class _Tensor:
    """One unique Parameter with every name it has in the model."""

    param: nn.Parameter
    names: list[str] = field(default_factory=list)  # full names, the first one wins
    owners: list[str] = field(default_factory=list)  # modules holding it directly
    conv_linear: bool = False  # the ``weight`` of some Conv/Linear module
    embedding: bool = False  # the ``weight`` of some nn.Embedding
    parametrized: str | None = None  # why its module's weight is computed from it


def _old_style_parametrizations(module: nn.Module) -> dict[str, str]:
    """{parameter name: kind} for torch.nn.utils.weight_norm / spectral_norm (hook based)."""
    found = {}
    for hook in module._forward_pre_hooks.values():
        kind = type(hook).__name__
        name = getattr(hook, "name", None)
        if kind == "WeightNorm" and isinstance(name, str):
            found[f"{name}_g"] = found[f"{name}_v"] = "weight_norm"
        elif kind == "SpectralNorm" and isinstance(name, str):
            found[f"{name}_orig"] = "spectral_norm"
    return found


def _walk(model: nn.Module) -> tuple[list[_Tensor], list[str]]:
    """(unique parameters in model order, names of Conv/Linear modules)."""
    seen: dict[int, _Tensor] = {}
    order: list[_Tensor] = []
    conv_linear: list[str] = []
    for module_name, module in model.named_modules():
        is_conv_linear = _is_prunable_module(module)
        is_embedding = isinstance(module, nn.Embedding)
        if is_conv_linear:
            conv_linear.append(module_name)
        old_style = _old_style_parametrizations(module)
        if isinstance(module, parametrize.ParametrizationList):
            kinds = sorted({type(p).__name__.lstrip("_") for p in module})
            new_style = "parametrized by " + ", ".join(kinds)
        else:
            new_style = None
        for local, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{local}" if module_name else local
            entry = seen.get(id(param))
            if entry is None:
                entry = seen[id(param)] = _Tensor(param)
                order.append(entry)
            entry.names.append(full)
            entry.owners.append(module_name)
            if is_conv_linear and local == "weight":
                entry.conv_linear = True
            if is_embedding and local == "weight":
                entry.embedding = True
            if local in old_style:
                entry.parametrized = f"parametrized by {old_style[local]}"
            elif new_style is not None:
                entry.parametrized = new_style
    return order, conv_linear


def _output_heads(model: nn.Module) -> set[str]:
    """Names of the modules that map features to the vocabulary: any module named
    ``lm_head`` and the one ``get_output_embeddings()`` returns (Hugging Face models)."""
    heads = {name for name, _ in model.named_modules()
             if name.rpartition(".")[2] == _HEAD_NAME}
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        try:
            head = getter()
        except (NotImplementedError, AttributeError, TypeError):
            head = None  # the model has no output embedding
        if isinstance(head, nn.Module):
            heads.update(name for name, m in model.named_modules() if m is head)
    return heads


def _dense_by_default(entry: _Tensor, heads: set[str]) -> str | None:
    """Why an embedding or LM-head weight is left dense unless include names it."""
    head = next((o for o in entry.owners if o in heads), None)
    if head is not None:
        tied = [n for n in entry.names if not n.startswith(f"{head}.")]
        kind = "language-model head (output embedding" + \
            (f", tied to {tied[0]})" if tied else ")")
        return f"{kind}: left dense by default; name {head!r} in include to prune it"
    if entry.embedding:
        return (f"not a Conv/Linear weight (an embedding: left dense by default); name "
                f"{entry.names[0]!r} in include to prune it")
    return None


def _first_match(entry: _Tensor, patterns: Sequence[str]) -> str | None:
    for pattern in patterns:
        if any(fnmatchcase(n, pattern) for n in entry.names + entry.owners):
            return pattern
    return None


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    more = len(names) - _LISTED
    return shown + (f" ... and {more} more" if more > 0 else "") if names else "none"


def _decide(model: nn.Module, include: Sequence[str], exclude: Sequence[str]
            ) -> tuple[list[_Tensor], list[tuple[_Tensor, str]], list[str]]:
    """(selected, [(candidate not selected, reason)], Conv/Linear module names)."""
    entries, conv_linear = _walk(model)
    candidates = [e for e in entries if e.param.dim() >= 2]
    # every pattern must reach something: a candidate or a module holding one (or any
    # Conv/Linear module, whose weight may be parametrized away)
    known = {n for e in candidates for n in e.names + e.owners} | set(conv_linear)
    for kind, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns:
            if not any(fnmatchcase(n, pattern) for n in known):
                raise SelectionError(
                    f"{kind} pattern {pattern!r} matches no module holding a weight tensor and "
                    f"no weight tensor (parameter with >= 2 dimensions); they are: "
                    + _listing([e.names[0] for e in candidates])
                )
    exact = set(include)
    advised = set(getattr(model, "prune_exclude_default", ()))
    heads = _output_heads(model)
    selected: list[_Tensor] = []
    skipped: list[tuple[_Tensor, str]] = []
    for e in candidates:
        named_exactly = any(n in exact for n in e.names) or (
            e.conv_linear and any(o in exact for o in e.owners))
        excluded_by = _first_match(e, exclude)
        if excluded_by is not None:
            skipped.append((e, f"excluded by pattern {excluded_by!r}"))
        elif e.parametrized and not named_exactly:
            skipped.append((e, f"{e.parametrized}: the module's weight is computed from it; "
                               f"name {e.names[0]!r} in include to prune it anyway"))
        elif not e.param.requires_grad and not named_exactly:
            skipped.append((e, f"frozen (requires_grad=False); name {e.names[0]!r} in "
                               "include to prune it anyway"))
        elif advised.intersection(e.owners) and not named_exactly:
            skipped.append((e, f"left dense by the model's own advice (its "
                               f"prune_exclude_default); name {e.owners[0]!r} in include to "
                               "prune it"))
        elif not include and _dense_by_default(e, heads) is not None:
            skipped.append((e, _dense_by_default(e, heads)))
        elif include:
            if _first_match(e, include) is not None:
                selected.append(e)
            elif e.conv_linear:
                skipped.append((e, "not matched by any include pattern"))
            else:
                skipped.append((e, f"not a Conv/Linear weight: name {e.names[0]!r} in include "
                                   "to prune it"))
        elif e.conv_linear:
            selected.append(e)
        else:
            skipped.append((e, f"not a Conv/Linear weight: name {e.names[0]!r} in include to "
                               "prune it"))
    return selected, skipped, conv_linear


def prunable_parameters(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[tuple[str, nn.Parameter]]:
    """(name, tensor) of every pruned tensor, in model order, each Parameter once.

    See the module docstring for the rules. Raises ``SelectionError`` when a pattern
    matches nothing or nothing is left to prune.
    """
    include = list(include or [])
    exclude = list(exclude or [])
    selected, skipped, conv_linear = _decide(model, include, exclude)
    if not selected:
        reasons = "; ".join(f"{e.names[0]}: {why}" for e, why in skipped[:_LISTED])
        raise SelectionError(
            "no prunable tensor: the model has no Conv/Linear weight left after "
            f"include={include} exclude={exclude} (Conv/Linear modules found: "
            f"{_listing(conv_linear)})" + (f"; skipped: {reasons}" if reasons else "")
        )
    return [(e.names[0], e.param) for e in selected]


def describe_selection(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> tuple[list[SelectedTensor], list[SkippedTensor]]:
    """(pruned, skipped): every weight tensor (parameter with >= 2 dimensions) of the model,
    either pruned or skipped with the reason, in model order; other names of a shared
    Parameter are listed as skipped ("shared with ...").

    Raises ``SelectionError`` when a pattern matches nothing; an empty selection is
    returned as is (``pruned == []``), so the reasons can be shown.
    """
    selected, skipped, _ = _decide(model, list(include or []), list(exclude or []))
    reasons: dict[int, str | None] = {id(e.param): None for e in selected}
    reasons.update({id(e.param): why for e, why in skipped})
    pruned: list[SelectedTensor] = []
    others: list[SkippedTensor] = []
    for e in _walk(model)[0]:  # model order
        if id(e.param) not in reasons:
            continue  # not a weight tensor
        why, shape = reasons[id(e.param)], tuple(e.param.shape)
        if why is None:
            pruned.append(SelectedTensor(e.names[0], shape, e.param.numel()))
        else:
            others.append(SkippedTensor(e.names[0], shape, why))
        state = "pruned once" if why is None else "not pruned"
        for alias in e.names[1:]:
            others.append(SkippedTensor(alias, shape, f"shared with {e.names[0]} (the same "
                                                      f"Parameter, {state} under that name)"))
    return pruned, others


def format_selection(pruned: Sequence[SelectedTensor], skipped: Sequence[SkippedTensor]) -> str:
    """What a run prunes and what it leaves alone (with the reason), as text."""
    def rows(items: Sequence, last: str) -> list[str]:
        cells = [(t.name, "x".join(map(str, t.shape)), str(getattr(t, last))) for t in items]
        widths = [max(len(c[i]) for c in cells) for i in range(3)]
        return ["  " + "  ".join(c[i].ljust(widths[i]) for i in range(3)).rstrip()
                for c in cells]

    lines = [f"pruned: {len(pruned)} tensors, {sum(t.numel for t in pruned):,} weights"]
    lines += rows(pruned, "numel") if pruned else []
    if skipped:
        lines += [f"not pruned: {len(skipped)} weight tensors (name them in include to prune "
                  "them)", *rows(skipped, "reason")]
    return "\n".join(lines)

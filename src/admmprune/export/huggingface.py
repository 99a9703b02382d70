"""A Hugging Face model directory (``config.json`` + ``model.safetensors``) from a model built
on a Hugging Face config (the registered ``gpt`` and ``llama``, or any module that keeps its
``PretrainedConfig`` as ``.config`` and whose state dict is its causal-LM class's).

The directory loads with ``transformers.AutoModelForCausalLM.from_pretrained`` as it is, and
as ``pretrained:`` of a recipe. Pruned weights are stored as the zeros they are.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["CausalLMLogits", "HuggingFaceExportError", "hf_causal_lm", "load_huggingface",
           "save_causal_lm_onnx", "save_huggingface"]


class HuggingFaceExportError(ValueError):
    """A model that is not built on a Hugging Face config, or a directory that cannot be
    written; the message says which."""


def hf_causal_lm(model: nn.Module) -> Any:
    """``model`` as the Hugging Face causal LM its ``.config`` names, holding its weights
    (copied, so the caller's module is left as it is).

    Raises:
        HuggingFaceExportError: no Hugging Face config, or a state dict that does not fit.
    """
    try:
        import transformers
    except ImportError:
        raise HuggingFaceExportError("writing a Hugging Face directory needs transformers "
                                     "(pip install transformers)") from None
    config = getattr(model, "config", None)
    if not isinstance(config, transformers.PretrainedConfig):
        raise HuggingFaceExportError(
            f"{type(model).__name__} keeps no Hugging Face config as .config: only models "
            "built on one (gpt, llama, a transformers model) export to a Hugging Face "
            "directory; use --format dense or onnx")
    hf = _from_config(config)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    # a tied head may be stored once, by the embedding it shares (transformers ties it again)
    tied = set(getattr(hf, "_tied_weights_keys", None) or ()) \
        if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise HuggingFaceExportError(
            f"{type(model).__name__}'s state dict is not {type(hf).__name__}'s: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}")
    return hf.eval()


def _from_config(config: Any) -> Any:
    """A causal LM built from ``config``, cut to the per-block widths a structured prune
    recorded there (``admmprune_widths``), so that the pruned state dict fits it."""
    import transformers

    from ..posttraining.units import WIDTHS_KEY, shrink_to_widths

    try:
        hf = transformers.AutoModelForCausalLM.from_config(config)
    except ValueError as err:
        raise HuggingFaceExportError(f"transformers has no causal-LM class for "
                                     f"{type(config).__name__}: {err}") from None
    widths = getattr(config, WIDTHS_KEY, None)
    if widths:
        shrink_to_widths(hf, widths)
    return hf


def load_huggingface(directory: str | Path) -> nn.Module:
    """The causal LM of a Hugging Face directory in float32 and eval mode, nothing
    downloaded. A structurally pruned model (its config records ``admmprune_widths``; its
    blocks differ in width, which ``from_pretrained`` cannot build) is built from its config,
    cut to those widths, and given the directory's weights.

    Raises:
        HuggingFaceExportError: no config.json, or weights that do not fit.
    """
    import transformers

    from ..posttraining.units import WIDTHS_KEY

    path = Path(directory)
    if not (path / "config.json").is_file():
        raise HuggingFaceExportError(f"{path} is no Hugging Face model directory (it needs "
                                     "config.json and model.safetensors)")
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    if not getattr(config, WIDTHS_KEY, None):
        plain: nn.Module = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, local_files_only=True)
        return plain.eval()
    from safetensors.torch import load_file

    model = _from_config(config)
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ()) \
        if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise HuggingFaceExportError(f"{path}: the weights do not fit the recorded widths: "
                                     f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    if tied:
        model.tie_weights()
    return model.float().eval()


class CausalLMLogits(nn.Module):
    """``forward(ids [B, T]) -> logits [B, T, V]`` of a Hugging Face causal LM, with an
    explicit all-ones attention mask (without one, transformers looks for packed sequences
    with torch.diff, which torch.onnx cannot export) and no cache: the form ONNX takes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        return self.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                          use_cache=False).logits


def save_causal_lm_onnx(model: nn.Module, path: str | Path, example: torch.Tensor) -> dict:
    """Writes ``model``'s logits as ONNX (see :class:`CausalLMLogits`) and checks
    onnxruntime's outputs on ``example`` against PyTorch's (``save_onnx``'s record).

    Raises:
        ExportError: the exporter or the check failed.
    """
    from .formats import save_onnx

    return save_onnx(CausalLMLogits(model).eval(), path, example)


def save_huggingface(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model`` as a Hugging Face model directory and check that it reads back.

    The directory is written next to its final place and renamed into it once complete, so
    a failed write leaves no half directory; an existing directory is refused.

    Args:
        model: a module built on a Hugging Face config (see :func:`hf_causal_lm`).
        directory: the directory to create.

    Returns:
        The directory.

    Raises:
        HuggingFaceExportError: the model has no Hugging Face form, ``directory`` exists,
            or the written weights do not read back equal.
    """
    directory = Path(directory)
    if directory.exists():
        raise HuggingFaceExportError(f"{directory} already exists: choose another --out or "
                                     "remove it")
    hf = hf_causal_lm(model)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        theirs = load_huggingface(tmp).state_dict()
        for name, tensor in hf.state_dict().items():
            if not torch.equal(theirs[name], tensor):
                raise HuggingFaceExportError(f"{name} did not read back equal from {tmp}")
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory

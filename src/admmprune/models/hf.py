"""What the models built on Hugging Face configs share: transformers imported on use
(:func:`hf_transformers`), and whether a directory's ``config.json`` describes the model its
weights are loaded into (:func:`config_differences`).

Weights are loaded into the model the recipe builds, so the settings saved next to them
(an activation function, a norm's epsilon...) are not what computes with them: a difference
that changes the computation makes the loaded model another function than the saved one.
Every key that differs counts unless it is known to be harmless (:data:`HARMLESS_KEYS`, or a
generation default), so a key added by a new transformers release is refused by default.
transformers is never imported here unless the model already carries a transformers config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["HARMLESS_KEYS", "config_differences", "hf_transformers"]


def hf_transformers(model: str, config_class: str) -> Any:
    """The ``transformers`` module, or an ImportError that says which model needs it.

    Args:
        model: the registered model's name (for the message).
        config_class: the Hugging Face config it is built from (for the message).
    """
    try:
        import transformers
    except ImportError:
        raise ImportError(f"model {model} is built from Hugging Face's {config_class}: install "
                          "transformers (pip install transformers)") from None
    return transformers

# Keys that change nothing the loaded weights compute.
HARMLESS_KEYS = frozenset({
    # names and bookkeeping
    "_name_or_path", "architectures", "transformers_version", "tokenizer_class", "prefix",
    "finetuning_task", "id2label", "label2id",  # label names; their count is a weight shape
    # the file's storage dtype: weights are cast to the model's own on loading
    "dtype", "torch_dtype",
    # how fresh weights are drawn: the loaded ones replace them
    "initializer_range",
    # dropout acts in training only, at the rate of the recipe's model: the weights compute
    # the same function in evaluation whatever rate they were trained with
    "attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_first_dropout", "dropout",
    "attention_dropout", "activation_dropout", "hidden_dropout", "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    # generation defaults (more are taken from transformers' GenerationConfig)
    "task_specific_params", "use_cache",
    # GPT-2's old name of n_positions, read by no current transformers code
    "n_ctx",
})


def _hf_config(model: nn.Module):
    """The model's transformers config (``model.config``, a ``PretrainedConfig``), or None."""
    config = getattr(model, "config", None)
    if callable(getattr(config, "to_dict", None)) and \
            callable(getattr(type(config), "from_dict", None)):
        return config
    return None


def _generation_keys() -> frozenset[str]:
    from transformers import GenerationConfig

    return frozenset(GenerationConfig().to_dict())


def config_differences(model: nn.Module, config_path: str | Path) -> list[str]:
    """How the Hugging Face ``config.json`` at ``config_path`` differs from ``model``'s own
    config in keys that change what the model computes, as ``"key: saved X, here Y"``.

    Both are compared as the model's config class fills them (a key a file leaves out has
    that class's default); keys in :data:`HARMLESS_KEYS` and generation defaults are left
    out. A model without a transformers config (``model.config``) has nothing to compare:
    the result is empty.

    Raises:
        ValueError: ``config_path`` is not a JSON object the model's config class reads.
    """
    own = _hf_config(model)
    if own is None:
        return []
    try:
        raw = json.loads(Path(config_path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {config_path}: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{config_path} holds a {type(raw).__name__}, not a JSON object")
    try:
        saved = type(own).from_dict(raw).to_dict()
    except Exception as err:  # noqa: BLE001 - whatever the config class refuses
        raise ValueError(f"{config_path} is no {type(own).__name__}: {err}") from None
    # to_dict writes the class's own model_type: the file's must be compared as written
    saved["model_type"] = raw.get("model_type", saved.get("model_type"))
    here = own.to_dict()
    ignored = HARMLESS_KEYS | _generation_keys()
    return [f"{key}: saved {saved.get(key)!r}, here {here.get(key)!r}"
            for key in sorted(set(saved) | set(here))
            if key not in ignored and saved.get(key) != here.get(key)]

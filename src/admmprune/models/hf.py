"""What the models built from Hugging Face configs share: transformers, imported on use."""

from __future__ import annotations

from typing import Any

__all__ = ["hf_transformers"]


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

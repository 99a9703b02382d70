"""A small Llama built from a Hugging Face ``LlamaConfig`` (nothing is downloaded).

The architecture of most current LLMs: RMSNorm, SwiGLU MLPs, rotary positions, grouped-query
attention, plain ``nn.Linear`` layers without biases. The module tree is Hugging Face's
``LlamaForCausalLM``'s (``model.layers.0.self_attn.q_proj``, ``lm_head``...), so its state
dict loads into that class as it is; ``forward`` returns the logits tensor ``[B, T, V]``.
The LM head is its own tensor (Llama does not tie it), left dense by default like the
embedding (``admmprune.selection``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .hf import hf_transformers
from .registry import register_model

__all__ = ["Llama", "llama_config"]


def llama_config(n_layer: int = 4, n_embd: int = 256, n_head: int = 4, n_kv_head: int = 2,
                 intermediate: int = 704, context: int = 256, vocab_size: int = 256,
                 rope_theta: float = 10000.0) -> Any:
    """The ``LlamaConfig`` of a model of this size.

    Args:
        n_layer: decoder blocks.
        n_embd: width (``hidden_size``, a multiple of ``n_head``).
        n_head: query heads.
        n_kv_head: key/value heads (grouped-query attention; ``n_head`` must be a multiple).
        intermediate: the SwiGLU MLP's width.
        context: the longest input (tokens).
        vocab_size: tokens (256: bytes).
        rope_theta: the rotary embedding's base.

    Raises:
        ValueError: a size that cannot be built.
        ImportError: transformers is not installed.
    """
    for key, value in (("n_layer", n_layer), ("n_embd", n_embd), ("n_head", n_head),
                       ("n_kv_head", n_kv_head), ("intermediate", intermediate),
                       ("context", context), ("vocab_size", vocab_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"llama: {key} must be a positive int, got {value!r}")
    if n_embd % n_head:
        raise ValueError(f"llama: n_embd {n_embd} must be a multiple of n_head {n_head}")
    if n_head % n_kv_head:
        raise ValueError(f"llama: n_head {n_head} must be a multiple of n_kv_head {n_kv_head}")
    if not rope_theta > 0:
        raise ValueError(f"llama: rope_theta must be positive, got {rope_theta!r}")
    return hf_transformers("llama", "LlamaConfig").LlamaConfig(
        vocab_size=vocab_size, hidden_size=n_embd, intermediate_size=intermediate,
        num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_kv_head,
        max_position_embeddings=context, rope_parameters={"rope_theta": float(rope_theta),
                                                          "rope_type": "default"},
        tie_word_embeddings=False, use_cache=False,
        # no token is special in a byte vocabulary; nothing here generates
        bos_token_id=None, eos_token_id=None, pad_token_id=None)


class Llama(nn.Module):
    """Llama decoder blocks and an LM head; ``forward(tokens [B, T]) -> logits [B, T, V]``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        transformers = hf_transformers("llama", "LlamaConfig")
        self.model = transformers.LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # Hugging Face's own initialisation of the head (normal, initializer_range)
        nn.init.normal_(self.lm_head.weight, std=config.initializer_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"llama takes token windows [B, T] with T <= context "
                             f"{self.config.max_position_embeddings}, got {tuple(x.shape)}")
        ids = x.long()
        hidden = self.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                            use_cache=False).last_hidden_state
        return self.lm_head(hidden)


@register_model("llama")
def llama(n_layer: int = 4, n_embd: int = 256, n_head: int = 4, n_kv_head: int = 2,
          intermediate: int = 704, context: int = 256, vocab_size: int = 256,
          rope_theta: float = 10000.0) -> Llama:
    """A Llama-architecture language model of the given size (see :func:`llama_config`)."""
    return Llama(llama_config(n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                              n_kv_head=n_kv_head, intermediate=intermediate, context=context,
                              vocab_size=vocab_size, rope_theta=rope_theta))

"""A small GPT built from a Hugging Face ``GPT2Config`` (nothing is downloaded).

The module tree is Hugging Face's ``GPT2LMHeadModel``'s (``transformer.h.0.attn.c_attn``,
``lm_head``...), so its state dict is that model's; ``forward`` returns the logits tensor
``[B, T, V]`` itself, which the training loop, the tasks and ONNX export take as they are.
The LM head shares the token embedding's Parameter (tied: one tensor, counted once); like
every embedding it is left dense by default (``admmprune.selection``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .hf import hf_transformers
from .registry import register_model

__all__ = ["GPT", "gpt2_config"]


def _transformers() -> Any:
    return hf_transformers("gpt", "GPT2Config")


def gpt2_config(n_layer: int = 4, n_embd: int = 256, n_head: int = 4, context: int = 256,
                vocab_size: int = 256, dropout: float = 0.0,
                n_positions: int | None = None) -> Any:
    """The ``GPT2Config`` of a model of this size.

    Args:
        n_layer: transformer blocks.
        n_embd: width (a multiple of ``n_head``).
        n_head: attention heads.
        context: the longest input (tokens); the position table's size unless
            ``n_positions`` is given.
        vocab_size: tokens (256: bytes).
        dropout: residual, embedding and attention dropout.
        n_positions: the position table's size (>= ``context``).

    Raises:
        ValueError: a size that cannot be built.
        ImportError: transformers is not installed.
    """
    n_positions = context if n_positions is None else n_positions
    for key, value in (("n_layer", n_layer), ("n_embd", n_embd), ("n_head", n_head),
                       ("context", context), ("vocab_size", vocab_size),
                       ("n_positions", n_positions)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"gpt: {key} must be a positive int, got {value!r}")
    if n_embd % n_head:
        raise ValueError(f"gpt: n_embd {n_embd} must be a multiple of n_head {n_head}")
    if n_positions < context:
        raise ValueError(f"gpt: n_positions {n_positions} is shorter than context {context}")
    if not 0 <= dropout < 1:
        raise ValueError(f"gpt: dropout must be in [0, 1), got {dropout!r}")
    return _transformers().GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        tie_word_embeddings=True, use_cache=False,
        # GPT-2's own ids (50256) lie outside a byte vocabulary; nothing here generates
        bos_token_id=None, eos_token_id=None)


class GPT(nn.Module):
    """GPT-2 blocks and a tied LM head; ``forward(tokens [B, T]) -> logits [B, T, V]``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.transformer = _transformers().GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] > self.config.n_positions:
            raise ValueError(f"gpt takes token windows [B, T] with T <= n_positions "
                             f"{self.config.n_positions}, got {tuple(x.shape)}")
        ids = x.long()
        # an explicit all-ones mask: without one, transformers looks for packed sequences
        # with torch.diff, which torch.onnx cannot export
        hidden = self.transformer(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  use_cache=False).last_hidden_state
        return self.lm_head(hidden)


@register_model("gpt")
def gpt(n_layer: int = 4, n_embd: int = 256, n_head: int = 4, context: int = 256,
        vocab_size: int = 256, dropout: float = 0.0, n_positions: int | None = None) -> GPT:
    """A GPT-2-style language model of the given size (see :func:`gpt2_config`)."""
    return GPT(gpt2_config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, context=context,
                           vocab_size=vocab_size, dropout=dropout, n_positions=n_positions))

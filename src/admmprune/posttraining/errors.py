"""The errors of the block-by-block engine: each says what to change."""

from __future__ import annotations

from .activations import CalibrationError

__all__ = ["OneShotError", "BlockError"]


class OneShotError(CalibrationError):
    """The engine cannot prune this model as asked (bad options, a layer it cannot reach, a
    method that returns the wrong shapes, a checkpoint that does not fit the model)."""


class BlockError(OneShotError):
    """The model's sequence of blocks cannot be found, or a block cannot be run on its
    cached inputs."""

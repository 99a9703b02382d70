"""The data layer's error: every dataset module raises it, so commands can report it."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A data set is missing, corrupt or could not be downloaded."""

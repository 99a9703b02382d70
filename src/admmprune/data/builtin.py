"""Importing this module registers every built-in dataset: add a new dataset's module here."""

from . import mnist, synthetic  # noqa: F401

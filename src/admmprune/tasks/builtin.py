"""Importing this module registers every built-in task: add a new task's module here."""

from . import classification, detection  # noqa: F401

"""Importing this module registers every built-in task: add a new task's module here."""

from . import classification, detection, language_modeling  # noqa: F401

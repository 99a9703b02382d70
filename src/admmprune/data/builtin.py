"""Importing this module registers every built-in dataset: add a new dataset's module here."""

from . import imagefolder, imagenet, mnist, synthetic  # noqa: F401

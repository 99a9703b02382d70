"""Importing this module registers every built-in dataset: add a new dataset's module here."""

from . import coco, imagefolder, imagenet, mnist, synthetic, text, voc  # noqa: F401

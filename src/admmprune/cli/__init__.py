"""The ``admmprune`` command line. One module per command family: :mod:`.prune` (prune,
train, eval), :mod:`.compare` (compare, tradeoff), :mod:`.report`, :mod:`.export`,
:mod:`.shrink`, :mod:`.draw`, :mod:`.info` (models, datasets, keys, inspect, data
preparation); :mod:`.parser` builds the argument parser."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ..runs.config import ConfigError
from .compare import cmd_compare, cmd_tradeoff
from .draw import cmd_draw
from .export import cmd_export
from .info import (
    cmd_datasets,
    cmd_imagenet_labels,
    cmd_inspect,
    cmd_keys,
    cmd_make_detection_set,
    cmd_models,
)
from .parser import build_parser
from .prune import cmd_eval, cmd_prune, cmd_train
from .report import cmd_report
from .shrink import cmd_shrink

__all__ = ["main", "build_parser", "COMMANDS"]


COMMANDS = {"prune": cmd_prune, "train": cmd_train, "eval": cmd_eval, "compare": cmd_compare,
            "report": cmd_report, "models": cmd_models, "datasets": cmd_datasets,
            "imagenet-labels": cmd_imagenet_labels, "inspect": cmd_inspect,
            "make-detection-set": cmd_make_detection_set,
            "draw": cmd_draw,
            "export": cmd_export,
            "shrink": cmd_shrink,
            "tradeoff": cmd_tradeoff,
            "keys": cmd_keys}


# Commands that run data-parallel under torchrun; the others are one-process jobs.
DISTRIBUTED_COMMANDS = ("prune", "train")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..data import DatasetError
    from ..distributed import DistributedError, env_world_size
    from ..imports import ImportSpecError, import_files
    from ..models import UnknownModelError
    from ..pruner import PrunerError
    from ..runs.rundir import RunError
    from ..selection import SelectionError
    from ..train import NonFiniteLossError

    try:
        if args.command not in DISTRIBUTED_COMMANDS and env_world_size() > 1:
            raise ConfigError(f"`admmprune {args.command}` runs in one process; only "
                              f"{' and '.join(DISTRIBUTED_COMMANDS)} run under torchrun")
        # a user's files first: their registrations count for everything the command reads
        import_files(getattr(args, "imports", None))
        return COMMANDS[args.command](args)
    except (ConfigError, DatasetError, RunError, PrunerError, SelectionError,
            NonFiniteLossError, FileNotFoundError, UnknownModelError, DistributedError,
            ImportSpecError) as err:
        # every rank reports (an error may be one rank's own); rank > 0 says which it is
        rank = os.environ.get("RANK", "0") if os.environ.get("WORLD_SIZE", "1") != "1" \
            else "0"
        where = "" if rank == "0" else f" (rank {rank})"
        print(f"admmprune {args.command}{where}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

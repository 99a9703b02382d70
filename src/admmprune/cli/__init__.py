"""The ``admmprune`` command line. One module per command family: :mod:`.prune` (prune,
train, eval), :mod:`.compare` (compare, tradeoff), :mod:`.report`, :mod:`.export`,
:mod:`.shrink`, :mod:`.draw`, :mod:`.info` (models, datasets, keys, inspect, data
preparation); :mod:`.parser` builds the argument parser."""

from __future__ import annotations

import errno
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
from .oneshot import cmd_oneshot
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
            "oneshot": cmd_oneshot,
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
        return _report(args.command, str(err))
    except OSError as err:  # a full disk, a permission, a path that is no directory...
        return _report(args.command, os_error_message(err))


def os_error_message(err: OSError) -> str:
    """What went wrong with a file, in words (no traceback): a full disk says "no space
    left on device"."""
    where = f" ({err.filename})" if err.filename else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on device{where}; the files being written were removed "
                "(what was saved before stays intact): free some space and run the command "
                "again")
    if err.errno is not None and err.strerror:
        return f"{err.strerror}{where}"
    return str(err)


def _report(command: str, message: str) -> int:
    # every rank reports (an error may be one rank's own); rank > 0 says which it is
    rank = os.environ.get("RANK", "0") if os.environ.get("WORLD_SIZE", "1") != "1" else "0"
    where = "" if rank == "0" else f" (rank {rank})"
    print(f"admmprune {command}{where}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""``admmprune prune``, ``train`` and ``eval``: the pipeline's jobs and a run's test metrics."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..runs.config import Config, ConfigError, load_config
from .parser import recipe_overrides

__all__ = ["cmd_prune", "cmd_train", "cmd_eval"]


def _interrupted_advice(run_dir: Path, then: str = "") -> str:
    """What to run after a Ctrl-C in ``run_dir``: ``--resume`` where it continues the run
    (a checkpoint, or the config of a run stopped before its first one, which starts over),
    else the same command again (nothing of the run was written)."""
    from ..runs.rundir import RunDirectory

    if not RunDirectory(run_dir).resumable():
        return "\ninterrupted before anything was saved; run the same command again"
    return (f"\ninterrupted: the last finished epoch/iteration is saved; continue with\n"
            f"  admmprune prune --resume {run_dir}{then}")


@contextmanager
def _process_group(config: Config) -> Iterator[bool]:
    """Under torchrun (WORLD_SIZE > 1): join its process group for the command (gloo on the
    CPU, nccl on CUDA) and leave it after; yields whether this process prints (rank 0)."""
    from .. import distributed

    owned = distributed.init_from_env(config.device)
    try:
        yield distributed.is_main()
    finally:
        distributed.shutdown(owned)


def cmd_prune(args: argparse.Namespace) -> int:
    from ..runs.pipeline import run_pipeline
    from ..runs.report import format_summary
    from ..runs.rundir import load_run_config

    overrides = recipe_overrides(args)
    run_dir = args.resume or args.run_dir
    if args.resume or args.stage == "retrain":
        if run_dir is None:
            raise ConfigError("--stage retrain needs --run-dir RUN_DIR of an ADMM stage")
        config = load_run_config(run_dir, overrides)
    else:
        config = load_config(args.recipe, overrides)
    with _process_group(config) as main_rank:
        if run_dir is None:
            from .. import distributed
            from ..runs.rundir import new_run_dir

            # named here, so that an interrupt can say which directory to resume
            run_dir = distributed.broadcast_object(new_run_dir(config))
        try:
            summary = run_pipeline(config, stage=args.stage, run_dir=run_dir,
                                   resume=args.resume is not None)
        except KeyboardInterrupt:
            if main_rank:
                print(_interrupted_advice(run_dir), file=sys.stderr)
            return 130
    if main_rank:
        print(format_summary(summary))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..runs.pipeline import Run, new_run_dir

    config = load_config(args.recipe, recipe_overrides(args))
    with _process_group(config) as main_rank:
        from .. import distributed

        run = Run(config, args.run_dir or distributed.broadcast_object(new_run_dir(config)),
                  resume=False)
        try:
            run.dense()
        except KeyboardInterrupt:
            if main_rank:
                print(_interrupted_advice(run.run_dir, " --stage admm   (or start again)"),
                      file=sys.stderr)
            return 130
        finally:
            run.close()
    if not main_rank:
        return 0
    from ..runs.report import format_metrics

    dense = {k.removeprefix("dense_"): v for k, v in run.progress.results.items()
             if k.startswith("dense_")}
    shown = format_metrics(dense, run.task.labels, run.task.percent_keys())
    print(f"dense: {shown}  ->  {run.run_dir / 'dense.pt'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..masks import global_sparsity, sparsity_report
    from ..runs.build import load_run
    from ..runs.report import format_metrics
    from ..selection import prunable_parameters
    from ..tables import format_table
    from ..tasks import create_task
    from ..train import evaluate as evaluate_model

    run = load_run(args.run_dir, overrides={"data_dir": args.data_dir} if args.data_dir else {},
                   weights=args.weights,  # test split only: no training files needed
                   trust_pickle=args.trust_pickle,
                   allow_changed_sources=args.allow_changed_sources)
    config, model = run.config, run.model
    task = create_task(config.task)
    task.bind(model)
    result = evaluate_model(model, run.data.test, device=run.device, task=task, amp=config.amp)
    named = prunable_parameters(model, config.include, config.exclude)
    report = sparsity_report([n for n, _ in named], [p.detach() for _, p in named])
    totals = global_sparsity(report)
    shown = format_metrics(result, task.labels, task.percent_keys())
    print(f"{run.weights}: {shown}  sparsity "
          f"{totals['sparsity_percent']:.3f}%  compression {totals['compression']:.1f}x")
    print(format_table(["layer", "weights", "kept", "kept %"],
                       [(r.name, r.total, r.kept, f"{100 * r.kept_fraction:.2f}%")
                        for r in report]))
    return 0

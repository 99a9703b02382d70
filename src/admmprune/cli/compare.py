"""``admmprune compare`` and ``tradeoff``: methods side by side, accuracy against compression."""

from __future__ import annotations

import argparse
import sys

from ..runs.config import ConfigError, load_config
from .parser import recipe_overrides

__all__ = ["cmd_compare", "cmd_tradeoff"]


def _number_list(value, what: str) -> list[float]:
    """[90, 95], "90,95" or 90 -> [90.0, 95.0]."""
    items = value if isinstance(value, list) else str(value).split(",")
    try:
        return [float(v) for v in items if str(v).strip()]
    except ValueError:
        raise ConfigError(f"{what} must be numbers separated by commas, got {value!r}") from None


def cmd_compare(args: argparse.Namespace) -> int:
    from ..runs.compare import (
        format_rows,
        markdown_table,
        merged_rows,
        plot_compare,
        run_compare,
        single_stage,
    )

    overrides = recipe_overrides(args)
    flag = overrides.pop("all_percent", None)
    recipe = load_config(args.recipe, overrides)
    if flag is None:  # the recipe's own ratio (a progressive recipe: its final stage's)
        percents = [recipe.final_percent()]
    else:  # 0 is a ratio like any other, not "missing"
        percents = _number_list(flag, "--all-percent")
        if not percents:
            raise ConfigError("--all-percent needs at least one number, e.g. 90,95,98.6")
    config = single_stage(recipe, percents[-1]).validate()
    seeds = [int(s) for s in _number_list(args.seeds, "--seeds")]
    if not seeds:
        raise ConfigError(f"--seeds lists no seed (got {args.seeds!r}); give e.g. --seeds 0 "
                          "or --seeds 0,1,2")
    variants = None
    if args.depths:
        variants = [{"depth": int(d)} for d in _number_list(args.depths, "--depths")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        from ..runs.compare import METHODS

        raise ConfigError(f"--methods lists no method (got {args.methods!r}); choose from "
                          f"{', '.join(METHODS)}")
    rows = run_compare(config, methods, percents, args.out, seeds=seeds, variants=variants)
    print(format_rows(rows))
    rows = merged_rows(rows, args.out)  # tables and plots cover earlier invocations too
    print()
    print(markdown_table(rows))
    for path in plot_compare(rows, args.out, layers_at=args.layers_at):
        print(f"wrote {path}")
    print(f"wrote {args.out / 'results.json'}, results.csv, results.md")
    return 0


def _name_label(item: str) -> tuple[str, str]:
    name, sep, label = item.partition("=")
    if not sep or not name or not label:
        raise ValueError(f"--rename {item!r}: expected NAME=LABEL")
    return name, label


def cmd_tradeoff(args: argparse.Namespace) -> int:
    from ..runs.records import (
        PUBLISHED,
        check_published,
        format_tradeoff,
        plot_tradeoff,
        pool_results,
        read_results,
        run_results,
        write_results,
    )
    from ..runs.report import check_picture_path
    from ..runs.rundir import check_output_path

    check_picture_path(check_output_path(args.out))
    if args.save_results is not None:
        check_output_path(args.save_results, "--save-results")
    try:
        if not args.run_dirs and not args.results:
            raise ValueError("nothing to plot: give finished run directories or --results CSV")
        renames = dict(_name_label(item) for item in args.rename)
        results = [r for path in args.results for r in read_results(path)]
        results += run_results(args.run_dirs)
        points = pool_results(results, model=args.published, renames=renames)
        published = PUBLISHED.get(args.published, ())
        check_published(points, published)
    except ValueError as err:
        print(f"admmprune tradeoff: error: {err}", file=sys.stderr)
        return 2
    print(format_tradeoff(points, published))
    if args.save_results is not None:
        print(f"wrote {write_results(results, args.save_results)}")
    print(f"wrote {plot_tradeoff(points, args.out, published, args.title)}")
    return 0

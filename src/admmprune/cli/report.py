"""``admmprune report``: a finished run's summary table and plots."""

from __future__ import annotations

import argparse
import sys

__all__ = ["cmd_report"]


def cmd_report(args: argparse.Namespace) -> int:
    from ..jsonfile import dumps
    from ..runs.report import format_summary, plot_run, read_summary

    summary = read_summary(args.run_dir)
    if args.json:
        print(dumps(summary, indent=2))
    else:
        print(format_summary(summary))
        if args.by_block:
            from ..runs.allocation import format_allocation, run_allocation

            names = [r["name"] for r in summary.get("layers") or []]
            try:
                groups = run_allocation(args.run_dir, names)
            except (FileNotFoundError, KeyError, ValueError) as err:
                print(f"admmprune report: error: {err}", file=sys.stderr)
                return 2
            print("\nkept weights per block and kind:")
            print(format_allocation(groups))
        for exported in sorted(args.run_dir.glob("model*.apz")):
            from ..export import format_size_report, size_report

            print(f"\n{exported.name}:")
            print(format_size_report(size_report(exported,
                                                 reference=args.run_dir / "model.pt")))
    if not args.no_plots:
        for path in plot_run(args.run_dir):
            print(f"wrote {path}")
    return 0

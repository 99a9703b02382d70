"""``admmprune report``: a finished run's summary table and plots."""

from __future__ import annotations

import argparse
import json

__all__ = ["cmd_report"]


def cmd_report(args: argparse.Namespace) -> int:
    from ..runs.report import format_summary, plot_run, read_summary

    summary = read_summary(args.run_dir)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
        for exported in sorted(args.run_dir.glob("model*.apz")):
            from ..export import format_size_report, size_report

            print(f"\n{exported.name}:")
            print(format_size_report(size_report(exported,
                                                 reference=args.run_dir / "model.pt")))
    if not args.no_plots:
        for path in plot_run(args.run_dir):
            print(f"wrote {path}")
    return 0

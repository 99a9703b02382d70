"""Timing shared by the benchmarks: functions timed alternately (so a load that drifts
during a run hits all of them alike) and the plain-step / W-step comparison and its table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

from admmprune.tables import format_table

W_STEP_TARGET = 1.10


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(fns: Sequence[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Times of each function, run in the order 0,1,1,0,0,1,... so drifting load hits all."""
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            times[i].append(timed(fns[i]))
    return times


def plain_vs_wstep(step: Callable[[bool], object], steps: int) -> list[list[float]]:
    """Times of ``step(False)`` (plain) and ``step(True)`` (with the ADMM penalty), after one
    warm-up of each (momentum buffers, allocator)."""
    step(True)
    step(False)
    return alternate([lambda: step(False), lambda: step(True)], steps)


def print_wstep_table(plain: Sequence[float], wstep: Sequence[float]) -> float:
    """The two steps' medians, best and runs, and the ratio against the target; returns the
    plain step's median."""
    p_med, w_med = statistics.median(plain), statistics.median(wstep)
    print(format_table(
        ["step", "median s", "best s", "runs"],
        [["plain", f"{p_med:.3f}", f"{min(plain):.3f}", " ".join(f"{t:.2f}" for t in plain)],
         ["W-step (plain + penalty)", f"{w_med:.3f}", f"{min(wstep):.3f}",
          " ".join(f"{t:.2f}" for t in wstep)]]))
    ratio = w_med / p_med
    verdict = "meets" if ratio <= W_STEP_TARGET else "MISSES"
    print(f"W-step / plain = {ratio:.3f} (medians; best/best {min(wstep) / min(plain):.3f})"
          f" {verdict} the target <= {W_STEP_TARGET:.2f}")
    return p_med

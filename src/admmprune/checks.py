"""Value rules shared by the pruner and the recipe validation, so that each rule is written
once: what counts as a number, and what makes a valid rho schedule."""

from __future__ import annotations

import math
import numbers

__all__ = ["NM_PERCENT_TOLERANCE", "is_int", "is_number", "rho_schedule_problem"]

# N:M fixes the removed share; layers whose input width is not a multiple of M remove a
# little less, so a recipe's all_percent may differ from M-N/M by this much (in points).
NM_PERCENT_TOLERANCE = 0.5


def is_int(value: object) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object, finite: bool = True) -> bool:
    """A real number that is not a bool (nor NaN; nor infinite when ``finite``)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    return math.isfinite(value) if finite else not math.isnan(value)


def rho_schedule_problem(rho: object, rho_growth: object, rho_max: object,
                         max_may_be_infinite: bool = True) -> tuple[str, str] | None:
    """(key, what is wrong) for an invalid schedule rho <- min(rho_max, rho·rho_growth),
    else None. rho must be > 0, rho_growth >= 1, rho_max >= rho (infinite: no cap, when
    ``max_may_be_infinite``)."""
    if not (is_number(rho) and rho > 0):
        return "rho", f"must be a positive number, got {rho!r}"
    if not (is_number(rho_growth) and rho_growth >= 1):
        return "rho_growth", f"must be >= 1 and finite, got {rho_growth!r}"
    if not (is_number(rho_max, finite=not max_may_be_infinite) and rho_max >= rho):
        hint = "; use math.inf for no cap" if max_may_be_infinite else ""
        return "rho_max", f"must be a number >= rho ({rho}), got {rho_max!r}{hint}"
    return None

"""Checks of numeric settings shared by every config (ZestConfig, SparseZOConfig, the contribution budget, the
selection): one rule each, so the same setting is refused with the same words everywhere.

Python's ``bool`` is an ``int``; a ``True`` given where a count or a rate is expected is always a mistake, so every
check here refuses it.
"""

from __future__ import annotations

import math
import numbers

from .errors import SelectionError

__all__ = ["check_int", "check_real", "check_size", "check_cost_weight"]


def _is_bool(value) -> bool:
    return isinstance(value, bool)


def check_int(name: str, value, *, minimum: int = 1, optional: bool = False, error: type[Exception] = ValueError,
              hint: str = "") -> int | None:
    """Refuse ``value`` unless it is an integer >= ``minimum`` (or ``None`` when ``optional``); return it as a plain
    ``int``, since a numpy or torch integer passes the check but does not serialise to JSON."""
    if value is None and optional:
        return None
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be an integer >= {minimum}, got {value!r}{hint}")
    if value < minimum:
        raise error(f"{name} must be >= {minimum}, got {value!r}{hint}")
    return int(value)


def check_real(name: str, value, *, low: float | None = None, high: float | None = None, low_open: bool = False,
               high_open: bool = False, optional: bool = False, error: type[Exception] = ValueError,
               hint: str = "", kind: str | None = None) -> int | float | None:
    """Refuse ``value`` unless it is a finite real number in the interval given by ``low``/``high``; return it as a
    plain ``int`` or ``float`` (see :func:`check_int`).

    ``low_open``/``high_open`` exclude the end points: ``check_real("eps", x, low=0, low_open=True)`` asks for x > 0.
    ``kind`` names what the number is in the message ("a fraction"); by default "a number" for a one-sided bound.
    """
    if value is None and optional:
        return None
    ok = not _is_bool(value) and isinstance(value, numbers.Real) and math.isfinite(float(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if kind is None:
            kind = "" if low is not None and high is not None else "a number"
        rule = f"{kind} {_interval(low, high, low_open, high_open)}".strip() if (low, high) != (None, None) else (
            "a finite number")
        raise error(f"{name} must be {rule}, got {value!r}{hint}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _interval(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""


def check_size(top_k: int | None = None, budget: float | None = None,
               num_candidates: int | None = None) -> tuple[int | None, float | None]:
    """Validate the requested selection size; with ``num_candidates``, also that ``top_k`` fits. Returns
    ``(top_k, budget)`` as plain Python numbers.

    Raises:
        SelectionError: ``top_k`` not an integer >= 1 (or more than the candidates), ``budget`` outside (0, 1], both
            or neither given.
    """
    if top_k is not None and budget is not None:
        raise SelectionError(f"give either top_k ({top_k}) or budget ({budget}), not both")
    if top_k is None and budget is None:
        raise SelectionError("give top_k=<number of layers> or budget=<fraction of the candidates' parameters>")
    if top_k is not None:
        top_k = check_int("top_k", top_k, error=SelectionError,
                          hint=": ZEST trains at least one layer besides the head")
        if num_candidates is not None and top_k > num_candidates:
            raise SelectionError(
                f"top_k={top_k} but the model has only {num_candidates} candidate layers; lower top_k, or widen the "
                "candidates (ZestConfig(candidates=...))."
            )
    if budget is not None:
        budget = check_real("budget", budget, low=0, high=1, low_open=True, error=SelectionError, kind="a fraction",
                            hint=" (a fraction of the candidate layers' parameters: budget=0.05 trains the best layers "
                                 "that together hold at most 5% of them)")
    return top_k, budget


def check_cost_weight(cost_weight, error: type[Exception] = SelectionError) -> int | float:
    """Refuse a ``cost_weight`` that is not a number >= 0 (0 is plain top-k); return it as a plain number."""
    return check_real("cost_weight", cost_weight, low=0, error=error, hint=" (0: plain top-k)")

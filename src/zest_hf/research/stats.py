"""Paired comparisons of two fine-tuning methods: the mean difference over matched runs and its bootstrap interval.

Two methods are compared on the same (task, seed) cells: same data, same data order, same head initialisation, so
the difference in a cell holds no noise from those. The interval resamples the cells (task x seed) with
replacement, which is what the benchmark's claims quantify over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PairedDifference", "paired_bootstrap", "verdict"]


@dataclass(frozen=True)
class PairedDifference:
    """A paired comparison ``a - b``.

    Attributes:
        mean: Mean of the per-cell differences.
        low: Lower end of the percentile bootstrap interval.
        high: Upper end.
        n: Number of cells (paired runs).
        confidence: The interval's coverage (0.95 for a 95 % interval).
        resamples: Bootstrap resamples drawn.
        seed: Seed of the resampling (recorded so the interval can be reproduced).
    """

    mean: float
    low: float
    high: float
    n: int
    confidence: float
    resamples: int
    seed: int


def paired_bootstrap(diffs: Sequence[float], confidence: float = 0.95, resamples: int = 10_000,
                     seed: int = 0) -> PairedDifference:
    """The mean of ``diffs`` (one per paired cell) with its percentile bootstrap interval over the cells."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"need a non-empty list of paired differences, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("a paired difference is NaN or infinite: a run failed or was not scored")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedDifference(float(d.mean()), float(low), float(high), int(d.size), confidence, resamples, seed)


def verdict(diff: PairedDifference) -> str:
    """``win`` when the interval lies above 0, ``loss`` when below, else ``tie`` (the data cannot tell)."""
    if diff.low > 0:
        return "win"
    if diff.high < 0:
        return "loss"
    return "tie"

"""Selection baselines a ZEST selection is judged against (besides Spectrum, which users can pick directly as
``predictor="spectrum"``, and LISA, :class:`zest_hf.train.LisaCallback`).

* :func:`random_matched`: random projections holding as many parameters as a given selection (at most as many, or
  as close as the sizes allow). Random@k draws k
  layers of any size, so it trains fewer weights than a ZEST@k that favours the big MLP matrices (1.3 % against
  3.3 % of SmolLM2's projections at k = 5); matching the parameter count compares the choice, not the budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..selection.rules import fill

__all__ = ["random_matched"]


def random_matched(candidates: Sequence[dict], num_params: int, seed: int, *, closest: bool = False) -> list[str]:
    """Random candidates whose parameters add up to ``num_params`` as closely as the sizes allow.

    ``candidates``: dicts with ``name`` and ``num_params`` (``Target.to_dict()``, a ranking's rows). The candidates
    are visited in a random order (``seed``) and each one that still fits is taken, so the total falls short of
    ``num_params`` by less than the smallest candidate not taken. Deterministic per seed.

    ``closest=True``: then one more candidate is taken where that lands nearer ``num_params`` than the shortfall
    does (the one landing nearest; the first in the random order among equals), so a draw may hold slightly more
    than ``num_params``. Without it, sizes that differ only by their biases can leave a whole layer out: on MiniLM,
    seven attention projections hold 1,152 parameters more than a ZEST selection of a down projection and three
    attention ones, so the "at most" draw stops at six, 14 % short.
    """
    if num_params < min(int(c["num_params"]) for c in candidates):
        raise ValueError(f"num_params={num_params} is smaller than every candidate; nothing can be chosen")
    order = np.random.default_rng(seed).permutation(len(candidates))
    visited = [candidates[i] for i in order]
    chosen = [c["name"] for c in fill(visited, num_params)]
    if closest:
        taken = set(chosen)
        short = num_params - sum(int(c["num_params"]) for c in visited if c["name"] in taken)
        rest = [c for c in visited if c["name"] not in taken]
        if rest and short > 0:
            best = min(rest, key=lambda c: abs(short - int(c["num_params"])))  # min keeps the first among equals
            if abs(short - int(best["num_params"])) < short:
                chosen.append(best["name"])
    return chosen

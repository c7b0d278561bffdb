"""Selection baselines a ZEST selection is judged against (besides Spectrum, which users can pick directly as
``predictor="spectrum"``, and LISA, :class:`zest_hf.train.LisaCallback`).

* :func:`random_matched`: random projections holding as many parameters as a given selection. Random@k draws k
  layers of any size, so it trains fewer weights than a ZEST@k that favours the big MLP matrices (1.3 % against
  3.3 % of SmolLM2's projections at k = 5); matching the parameter count compares the choice, not the budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..selection.rules import fill

__all__ = ["random_matched"]


def random_matched(candidates: Sequence[dict], num_params: int, seed: int) -> list[str]:
    """Random candidates whose parameters add up to at most ``num_params``, as close to it as the sizes allow.

    ``candidates``: dicts with ``name`` and ``num_params`` (``Target.to_dict()``, a ranking's rows). The candidates
    are visited in a random order (``seed``) and each one that still fits is taken, so the total falls short of
    ``num_params`` by less than the smallest candidate not taken. Deterministic per seed.
    """
    if num_params < min(int(c["num_params"]) for c in candidates):
        raise ValueError(f"num_params={num_params} is smaller than every candidate; nothing can be chosen")
    order = np.random.default_rng(seed).permutation(len(candidates))
    return [c["name"] for c in fill([candidates[i] for i in order], num_params)]

"""Random selection matched on parameter count."""

import pytest
from helpers import tiny_llama

from zest_hf import find_targets
from zest_hf.research.baselines import random_matched


def test_random_matched_holds_the_budget_up_to_the_smallest_layer_left_and_varies_with_the_seed():
    cands = [t.to_dict() for t in find_targets(tiny_llama(num_hidden_layers=4))]
    sizes = {c["name"]: c["num_params"] for c in cands}
    budget = 5 * max(sizes.values())  # what five of the largest layers hold
    draws = [random_matched(cands, budget, seed) for seed in range(5)]
    for chosen in draws:
        total = sum(sizes[n] for n in chosen)
        left = [sizes[n] for n in sizes if n not in chosen]
        assert total <= budget and budget - total < min(left)
        assert len(set(chosen)) == len(chosen)
    assert len({tuple(sorted(d)) for d in draws}) > 1  # a fresh draw per seed
    assert random_matched(cands, budget, 0) == draws[0]
    with pytest.raises(ValueError, match="smaller than every candidate"):
        random_matched(cands, 1, 0)

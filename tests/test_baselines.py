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


def test_closest_takes_one_more_layer_where_that_lands_nearer_the_count():
    # sizes that differ by their biases only: seven small ones hold a little more than one large plus three small,
    # so the "at most" draw stops at six small ones, a whole layer short
    cands = [{"name": f"s{i}", "num_params": 100 + 1} for i in range(12)] + [
        {"name": f"L{i}", "num_params": 400} for i in range(4)]
    target = 400 + 3 * 101  # 703
    for seed in range(6):
        at_most = random_matched(cands, target, seed)
        near = random_matched(cands, target, seed, closest=True)
        size = {c["name"]: c["num_params"] for c in cands}
        below, total = sum(size[n] for n in at_most), sum(size[n] for n in near)
        assert below <= target and near[: len(at_most)] == at_most
        assert abs(total - target) <= abs(below - target) and abs(total - target) < 101
    # already exact: nothing is added
    exact = [{"name": f"e{i}", "num_params": 10} for i in range(6)]
    assert len(random_matched(exact, 30, 0, closest=True)) == 3


def test_paired_bootstrap_matches_scipys_percentile_interval_and_refuses_what_it_cannot_use():
    import numpy as np
    from scipy.stats import bootstrap

    from zest_hf.research.stats import paired_bootstrap, verdict

    d = np.random.default_rng(3).normal(1.0, 2.0, size=40)
    ours = paired_bootstrap(d, resamples=20_000, seed=1)
    ref = bootstrap((d,), np.mean, method="percentile", n_resamples=20_000, random_state=7).confidence_interval
    assert abs(ours.mean - d.mean()) < 1e-12 and ours.n == 40
    # two independent Monte Carlo estimates of the same quantiles: agree to a small share of the interval's width
    width = ref.high - ref.low
    assert abs(ours.low - ref.low) < 0.05 * width and abs(ours.high - ref.high) < 0.05 * width
    assert paired_bootstrap(d, seed=1) == paired_bootstrap(d, seed=1)  # reproducible from its recorded seed
    const = paired_bootstrap([2.0] * 10)
    assert const.low == const.high == 2.0 and verdict(const) == "win"
    assert verdict(paired_bootstrap([-1.0, -2.0, -1.5])) == "loss" and verdict(paired_bootstrap([-1.0, 1.0])) == "tie"
    for bad, msg in (([], "non-empty"), ([1.0, float("nan")], "NaN")):
        with pytest.raises(ValueError, match=msg):
            paired_bootstrap(bad)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], confidence=1.0)

"""The step cost model's arithmetic on a small config, against counts written out by hand."""

import pytest

from zest_hf.research.cost import Arch, Method, fit_memory, fit_rate, step_cost

ARCH = Arch(blocks=4, hidden=8, intermediate=16, heads=2, kv_heads=1, vocab=50)
EVERY = tuple((b, t) for b in range(4) for t in ARCH.types)


def test_shapes_and_parameter_counts():
    assert ARCH.shape("k") == (8, 4) and ARCH.shape("down") == (16, 8)
    assert ARCH.block_params == 64 + 32 + 32 + 64 + 128 + 128 + 128
    assert ARCH.params == 4 * ARCH.block_params + 50 * 8


def test_backward_stops_at_the_lowest_trained_block_and_weight_gradients_follow_the_selection():
    batch, seq = 2, 3
    tokens = batch * seq
    fwd = tokens * (4 * (2 * ARCH.block_params + 4 * seq * 8) + 2 * 8 * 50)
    deep = step_cost(ARCH, Method("a", trained=((0, "up"),)), batch, seq)
    shallow = step_cost(ARCH, Method("b", trained=((3, "up"),)), batch, seq)
    assert deep["fwd_flops"] == shallow["fwd_flops"] == fwd
    per_block_bwd = tokens * (2 * ARCH.block_params + 2 * 4 * seq * 8)
    head_bwd = tokens * 2 * 8 * 50
    assert deep["bwd_flops"] == 4 * per_block_bwd + head_bwd + tokens * 2 * 128
    assert shallow["bwd_flops"] == 1 * per_block_bwd + head_bwd + tokens * 2 * 128
    assert deep["trainable"] == shallow["trainable"] == 128 and deep["lowest_block"] == 0
    assert shallow["act_bytes"] < deep["act_bytes"]  # activations are kept from the backward depth up only


def test_memory_terms_lora_sparse_zo_and_sharding():
    full = step_cost(ARCH, Method("full", full=True), 1, 4)
    assert full["trainable"] == ARCH.params and full["state_bytes"] == 12 * ARCH.params
    lora = step_cost(ARCH, Method("lora", lora=EVERY, lora_rank=2), 1, 4)
    assert lora["trainable"] == 2 * sum(sum(ARCH.shape(t)) for _, t in EVERY)
    zo = step_cost(ARCH, Method("zo", sparse_zo=0.01, base_bytes=0.52), 1, 4)
    assert zo["bwd_flops"] == 0 and zo["act_bytes"] == 0 and zo["fwd_flops"] == 2 * full["fwd_flops"]
    sharded = step_cost(ARCH, Method("full", full=True), 1, 4, shards=8)
    assert sharded["state_bytes"] == pytest.approx(full["state_bytes"] / 8)
    assert sharded["act_bytes"] == full["act_bytes"]  # sharding splits weights and state, not activations
    q = step_cost(ARCH, Method("q", lora=EVERY, lora_rank=2, base_bytes=0.52), 1, 4)
    assert q["weight_bytes"] == pytest.approx(0.52 * ARCH.params + 4 * lora["trainable"])


def test_fits_recover_the_constants_they_were_built_with():
    a, b = 2e-9, 5e-9
    pts = [(1e9, 0.0, a * 1e9), (3e9, 4e9, a * 3e9 + b * 4e9), (2e9, 1e9, a * 2e9 + b * 1e9)]
    assert fit_rate(pts) == pytest.approx((a, b))
    mem = [(s, act, 100.0 + s + 1.5 * act) for s, act in ((0.0, 10.0), (50.0, 40.0), (10.0, 0.0))]
    assert fit_memory(mem) == pytest.approx((100.0, 1.5))

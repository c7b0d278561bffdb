"""Cost-aware selection: importance against the backward depth a step must reach."""

import pytest

from zest_hf import ZestConfig
from zest_hf.selection import SelectionError, backward_cost, choose, cost_aware


def _rows(blocks):
    # best first: layer i has rank i; names say where they sit
    return [{"name": f"b{b}.l{i}", "score": float(len(blocks) - i), "block": b, "num_params": 10}
            for i, b in enumerate(blocks)]


def test_backward_cost_is_the_fraction_of_blocks_down_to_the_lowest_selected():
    assert backward_cost([3, 5], 6) == pytest.approx(3 / 6)
    assert backward_cost([0], 6) == 1.0


def test_zero_weight_is_plain_top_k_and_a_large_weight_stays_in_the_top_blocks():
    # the two best layers sit low (block 0); the next ones high (blocks 4, 5)
    rows = _rows([0, 0, 5, 4, 5, 1, 2, 3])
    plain = [n for n, _ in choose(rows, top_k=2)]
    assert plain == ["b0.l0", "b0.l1"]
    assert [n for n, _ in choose(rows, top_k=2, cost_weight=0.0)] == plain
    high = [n for n, _ in choose(rows, top_k=2, cost_weight=10.0)]
    assert high == ["b5.l2", "b5.l4"]  # the best two among the top block only: the cheapest possible step
    mid = [n for n, _ in choose(rows, top_k=3, cost_weight=0.4)]
    # floor 0: utility (1 + 6/7 + 5/7)/3 = 0.857, cost 1 -> 0.457; floor 4: (5/7 + 4/7 + 3/7)/3 = 0.571,
    # cost 2/6 -> 0.438; floor 5: needs 3 layers in block 5, has 2 -> skipped. Floor 0 wins, barely.
    assert mid == ["b0.l0", "b0.l1", "b5.l2"]
    assert [n for n, _ in choose(rows, top_k=3, cost_weight=0.5)] == ["b5.l2", "b4.l3", "b5.l4"]


def test_cost_aware_with_a_budget_and_bad_values():
    rows = _rows([0, 5, 5, 4])
    # budget 0.5 of 40 params = 2 layers; with a high weight, floor 4 or 5 wins over floor 0
    assert [n for n, _ in cost_aware(rows, budget=0.5, cost_weight=5.0)] == ["b5.l1", "b5.l2"]
    with pytest.raises(SelectionError, match="cost_weight"):
        choose(rows, top_k=1, cost_weight=-1)
    with pytest.raises(ValueError, match="cost_weight"):
        ZestConfig(top_k=2, cost_weight=-0.5)
    with pytest.raises(SelectionError, match="block"):
        choose([{"name": "a", "score": 1.0, "num_params": 1}], top_k=1, cost_weight=1.0)


def test_spectrum_keeps_each_types_best_by_a_naive_svd_snr_and_uses_no_data():
    import numpy as np
    import torch
    from helpers import tiny_llama, token_batch

    import zest_hf
    from zest_hf import find_targets
    from zest_hf.selection.rank import rank

    torch.manual_seed(0)
    model = tiny_llama(num_hidden_layers=4)
    targets = find_targets(model)
    with torch.no_grad():  # give some layers structure beyond noise, so the SNRs differ clearly
        for t in targets[::3]:
            u, v = torch.randn(t.out_features, 2), torch.randn(2, t.in_features)
            t.weight.add_(0.5 * u @ v)

    def naive_snr(w):  # Spectrum's compute_snr, in float64 numpy
        s = np.linalg.svd(w.detach().double().numpy(), compute_uv=False)
        sigma = (np.quantile(s, 0.75) - np.quantile(s, 0.25)) / 1.349
        edge = sigma * (1 + np.sqrt(min(w.shape) / max(w.shape)))
        return s[s > edge].sum() / s[s <= edge].sum() / s[0]

    want = {}
    for kind in {t.type for t in targets}:
        of_type = sorted((t for t in targets if t.type == kind), key=lambda t: -naive_snr(t.weight))
        want[kind] = [t.name for t in of_type[:2]]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = token_batch()
    batch["input_ids"][:] = 999  # data-free: what the batch holds cannot matter
    ranking = rank(model, batch, predictor="spectrum")
    top = ranking.top(2 * len(want))
    assert sorted(top) == sorted(n for names in want.values() for n in names)
    assert ranking.predictor == "spectrum"
    cfg = zest_hf.select(model, token_batch(seed=3), ZestConfig(top_k=2 * len(want), predictor="spectrum"))
    assert sorted(cfg.selected_modules) == sorted(top)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_spectrum_ranking_with_a_noiseless_layer_ranks_it_first_and_saves(tmp_path):
    import torch
    from helpers import tiny_llama, token_batch

    from zest_hf.selection.rank import Ranking, rank

    model = tiny_llama()
    q = model.model.layers[1].self_attn.q_proj
    with torch.no_grad():
        q.weight.copy_(torch.eye(q.weight.shape[0]))  # all singular values alike: no noise, an infinite SNR
    ranking = rank(model, token_batch(), predictor="spectrum")
    assert ranking.layers[0]["name"] == "model.layers.1.self_attn.q_proj"
    ranking.to_json(tmp_path / "r.json")  # JSON has no infinity: written as text
    back = Ranking.from_json(tmp_path / "r.json")
    assert back.layers[0]["spectral_snr"] == "inf" and back.top(1) == ranking.top(1)


def test_auto_resolves_each_family_to_its_bundled_predictor_and_records_which():
    """The default predictor is "auto": a model with a gated MLP (Llama-style, or a fused gate_up) is ranked by
    zest-decoder, any other by the pooled zest-universal; the selection records the predictor actually used, and
    its scores are exactly what that predictor, named outright, gives."""
    import torch
    from helpers import tiny_bert_cls, tiny_gpt2, tiny_llama, token_batch

    import zest_hf
    from zest_hf.defaults import DEFAULT_PREDICTOR
    from zest_hf.predictor.family import DECODER_PREDICTOR, POOLED_PREDICTOR, family_of
    from zest_hf.predictor.hub import bundled_predictors, load_predictor
    from zest_hf.selection.rank import rank

    assert DEFAULT_PREDICTOR == "auto" and ZestConfig(top_k=1).predictor == "auto"
    assert {DECODER_PREDICTOR, POOLED_PREDICTOR} <= set(bundled_predictors())
    assert family_of(["q", "k", "gate_up", "down"]) == "decoder" and family_of(["qkv", "o", "up", "down"]) == "other"
    # without candidates to look at, "auto" is the predictor that serves any model
    assert load_predictor().trained_on == load_predictor(POOLED_PREDICTOR).trained_on
    assert load_predictor("auto", layers=["gate"]).trained_on == load_predictor(DECODER_PREDICTOR).trained_on
    assert load_predictor(DECODER_PREDICTOR).trained_on != load_predictor(POOLED_PREDICTOR).trained_on

    torch.manual_seed(0)
    batch = token_batch(batch=2, length=8, vocab=100)
    for model, want, labels in ((tiny_llama(num_hidden_layers=2), DECODER_PREDICTOR, None),
                                (tiny_bert_cls(), POOLED_PREDICTOR, torch.tensor([0, 1])),
                                (tiny_gpt2(), POOLED_PREDICTOR, None)):
        b = batch if labels is None else dict(batch, labels=labels)
        auto = rank(model, b)
        named = rank(model, b, predictor=want)
        assert auto.predictor == want and auto.layers == named.layers
        cfg = zest_hf.select(model, b, ZestConfig(top_k=2))
        assert cfg.selection_info["predictor"] == want and cfg.selected_modules == named.top(2)


def test_backward_cost_counts_the_models_blocks_when_only_some_are_candidates():
    import zest_hf
    from helpers import tiny_llama, token_batch

    model = tiny_llama(num_hidden_layers=4)
    batch = token_batch()
    for pattern, floor in ((r"model\.layers\.1\..*", 1), (r"model\.layers\.(2|3)\..*", None)):
        cfg = zest_hf.select(model, batch, ZestConfig(top_k=1, predictor="metric:grad_norm", candidates=pattern))
        lowest = min(int(n.split(".")[2]) for n in cfg.selected_modules)
        assert floor is None or lowest == floor
        assert cfg.selection_info["backward_cost"] == pytest.approx((4 - lowest) / 4)
    from zest_hf.selection.rules import num_blocks_of

    # six blocks in the model (depth = block / 5), candidates in the top two only
    rows = [{"name": f"b{b}", "score": 1.0, "block": b, "depth": b / 5, "num_params": 1} for b in (4, 5)]
    assert num_blocks_of(rows) == 6
    assert num_blocks_of([{"name": "a", "block": 0, "depth": 0.0}]) == 1


def test_a_head_the_model_lacks_is_refused_before_the_probe():
    import zest_hf
    from helpers import tiny_bert_cls, token_batch

    model = tiny_bert_cls()
    batch = token_batch()
    batch["labels"] = batch["input_ids"][:, 0] % 3
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(SelectionError, match=r"modules_to_save names \['clasifier'\]"):
        zest_hf.select(model, batch, ZestConfig(top_k=2, predictor="metric:grad_norm", modules_to_save=["clasifier"]))
    assert not calls  # refused before any forward pass

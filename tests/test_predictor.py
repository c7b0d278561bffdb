"""The ZEST predictor on synthetic model-tasks whose right answer is known; shipping and safe loading."""

import json

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from zest_hf import ProbeResult
from zest_hf.predictor import ModelTask, PredictorError, ZestPredictor, layer_features, top_k_precision, train_predictor

TYPES = ["q", "k", "v", "o", "gate", "up", "down"]


def synthetic(seed, n_blocks=6, scale=1.0):
    """A model-task where the truth is a hidden combination of two metrics (at a task-specific scale) plus noise."""
    rng = np.random.default_rng(seed)
    layers, a, b = [], [], []
    for blk in range(n_blocks):
        for t in TYPES:
            layers.append({"name": f"m.layers.{blk}.{t}_proj", "type": t, "block": blk,
                           "depth": blk / (n_blocks - 1), "num_params": 4096 * (3 if t in ("gate", "up", "down") else 1)})
            a.append(rng.lognormal())
            b.append(rng.normal())
    a, b = np.array(a) * scale, np.array(b)
    truth = np.log(a) - 0.5 * b + 0.1 * rng.normal(size=len(a))
    values = {"snip": list(a), "plain": list(b), "noise": list(rng.normal(size=len(a)))}
    return ModelTask(model=f"toy{seed}", task="t", layers=layers, values=values, scores=truth)


def test_predictor_learns_a_combination_no_single_metric_has():
    train = [synthetic(s, scale=10.0 ** s) for s in range(4)]
    test = synthetic(99, scale=1e-3)
    taus = {}
    for arch in ("linear", "mlp"):
        p = train_predictor(train, ["snip", "plain", "noise"], arch=arch, steps=1500, seed=0)
        pr = ProbeResult(layers=test.layers, values=test.values, metrics=["toy"])
        taus[arch] = kendalltau(p.score(pr), test.scores).statistic
    best_single = max(abs(kendalltau(test.values[m], test.scores).statistic) for m in ("snip", "plain"))
    assert taus["mlp"] > 0.8 and taus["linear"] > 0.8
    assert taus["linear"] > best_single + 0.1


def test_training_is_seeded():
    train = [synthetic(s) for s in range(2)]
    p1 = train_predictor(train, ["snip"], steps=50, seed=3)
    p2 = train_predictor(train, ["snip"], steps=50, seed=3)
    for (k, v), (_, w) in zip(p1.state_dict().items(), p2.state_dict().items()):
        assert torch.equal(v, w), k


def test_features_are_normalised_within_model_task():
    d = synthetic(0)
    f_rank = layer_features(d.layers, d.values, ["snip"], "rank", prior=True)
    scaled = {k: list(np.array(v) * 1000) for k, v in d.values.items()}
    assert np.allclose(f_rank, layer_features(d.layers, scaled, ["snip"], "rank", prior=True))
    f_z = layer_features(d.layers, d.values, ["snip"], "zscore", prior=False)
    assert np.allclose(f_z, layer_features(d.layers, scaled, ["snip"], "zscore", prior=False), atol=1e-5)
    assert abs(f_z[:, 0].mean()) < 1e-5 and abs(f_z[:, 0].std() - 1) < 1e-4
    assert f_rank.shape == (42, 1 + 7 + 2)
    # the fused GPT-2 qkv spreads over q, k, v
    fused = layer_features([{"name": "x", "type": "qkv", "block": 0, "depth": 0.0, "num_params": 10}],
                           {}, [], "rank", prior=True)
    assert np.allclose(fused[0, :3], 1 / 3) and fused[0, 3:7].sum() == 0


def test_depth_knots_give_a_piecewise_linear_depth_profile():
    d = synthetic(0, n_blocks=9)  # depths 0, 1/8, ..., 1
    f = layer_features(d.layers, d.values, [], "rank", prior=True, depth_knots=5)
    assert f.shape == (63, 7 + 2 + 4)
    tents = f[:, -4:]
    depth = np.array([r["depth"] for r in d.layers])
    # knots at 0, .25, .5, .75 (the one at 1 is left out): 1 on its knot, 0.5 half-way to the next, 0 beyond
    for k, knot in enumerate((0, 0.25, 0.5, 0.75)):
        assert np.allclose(tents[depth == knot, k], 1.0)
        assert np.allclose(tents[np.isclose(depth, knot + 0.125), k], 0.5)
        assert np.all(tents[np.abs(depth - knot) >= 0.25, k] == 0)
    # with the left-out tent at depth 1 they sum to 1 everywhere
    assert np.allclose(tents.sum(1) + np.clip(1 - np.abs(depth - 1) * 4, 0, None), 1.0)
    assert np.array_equal(layer_features(d.layers, d.values, [], "rank", prior=True, depth_knots=0), f[:, :-4])


def test_a_prior_with_depth_knots_learns_a_middle_peak_a_linear_depth_cannot():
    def peaked(seed):
        d = synthetic(seed, n_blocks=6)
        depth = np.array([r["depth"] for r in d.layers])
        noise = 1e-3 * np.random.default_rng(seed).normal(size=len(depth))  # order within a block: random
        return ModelTask(d.model, d.task, d.layers, d.values, -(depth - 0.5) ** 2 + noise)
    train, test = [peaked(s) for s in range(3)], peaked(9)
    pr = ProbeResult(layers=test.layers, values=test.values, metrics=["toy"])
    tau = {b: kendalltau(train_predictor(train, [], arch="linear", depth_knots=b, steps=800).score(pr),
                         test.scores).statistic for b in (0, 5)}
    # within-block order is noise, so ~0.7 is what a perfect depth profile gets; a line in depth gets ~0
    assert tau[5] > 0.6 and abs(tau[0]) < 0.2


def test_a_predictor_without_depth_knots_in_its_config_loads_as_written_before_0_2(tmp_path):
    p = train_predictor([synthetic(0)], ["snip"], arch="linear", depth_knots=0, steps=5)
    p.save_pretrained(tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    del cfg["depth_knots"]
    cfg["zest_hf_version"] = "0.1.0"
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    q = ZestPredictor.from_pretrained(tmp_path / "old")
    assert q.depth_knots == 0 and q.n_features == 1 + 7 + 2
    # one written by a newer minor release may use features this one lacks: refused, with what to do
    cfg["zest_hf_version"] = "0.99.0"
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PredictorError, match="upgrade zest_hf"):
        ZestPredictor.from_pretrained(tmp_path / "old")


def test_save_and_load_round_trip_is_strict(tmp_path):
    p = train_predictor([synthetic(0)], ["snip", "plain"], steps=20)
    p.save_pretrained(tmp_path / "pred")
    files = sorted(f.name for f in (tmp_path / "pred").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "pred" / "config.json").read_text())
    assert cfg["metrics"] == ["snip", "plain"] and cfg["arch"] == "mlp"
    q = ZestPredictor.from_pretrained(tmp_path / "pred")
    for (k, v), (_, w) in zip(p.state_dict().items(), q.state_dict().items()):
        assert torch.equal(v, w)
    pr = ProbeResult(layers=synthetic(1).layers, values=synthetic(1).values, metrics=["toy"])
    assert np.array_equal(p.score(pr), q.score(pr))


def test_bad_predictor_files_give_clear_errors(tmp_path):
    p = train_predictor([synthetic(0)], ["snip"], steps=5)
    d = tmp_path / "pred"
    p.save_pretrained(d)
    # weights that do not fit the config
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden"] = 7
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PredictorError, match="does not match its config"):
        ZestPredictor.from_pretrained(d)
    # a malformed config value
    cfg["hidden"] = "big"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PredictorError, match="hidden"):
        ZestPredictor.from_pretrained(d)
    # a corrupt weights file
    cfg["hidden"] = 32
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PredictorError, match="not a readable safetensors"):
        ZestPredictor.from_pretrained(d)


def test_predictor_refuses_a_probe_with_other_metrics():
    p = ZestPredictor(metrics=["snip", "fisher_mean"])
    d = synthetic(0)
    with pytest.raises(PredictorError, match="lacks \\['fisher_mean'\\]"):
        p.score(ProbeResult(layers=d.layers, values=d.values, metrics=["toy"]))


def test_top_k_precision():
    assert top_k_precision(np.array([5, 4, 3, 2, 1.0]), np.array([5, 4, 3, 2, 1.0]), k=2) == 1.0
    assert top_k_precision(np.array([1, 2, 3, 4, 5.0]), np.array([5, 4, 3, 2, 1.0]), k=2) == 0.0


# ------------------------------------------------------------------------------------------------ resolution
def _cache_snapshot(cache_dir, repo_id, src_dir, commit="0123456789abcdef0123456789abcdef01234567"):
    """Lay a predictor out exactly as huggingface_hub caches a downloaded repo."""
    import shutil

    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(src_dir / f, snap / f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit


def test_resolution_local_dir_bundled_name_and_cached_hub_repo(tmp_path, monkeypatch):
    from zest_hf.hub import PredictorNotFoundError, load_predictor

    p = train_predictor([synthetic(0)], ["snip"], steps=5)
    src = tmp_path / "src" / "my-pred"
    p.save_pretrained(src)
    pr = ProbeResult(layers=synthetic(2).layers, values=synthetic(2).values, metrics=["toy"])
    want = p.score(pr)
    # 1. a local directory
    assert np.array_equal(load_predictor(src).score(pr), want)
    # 2. a bundled name, found through ZEST_HF_PREDICTORS
    monkeypatch.setenv("ZEST_HF_PREDICTORS", str(tmp_path / "src"))
    assert np.array_equal(load_predictor("my-pred").score(pr), want)
    # 3. a Hub repo id, served from the cache while offline (HF_HUB_OFFLINE=1 in conftest)
    cache = tmp_path / "hf_cache"
    commit = _cache_snapshot(cache, "someone/zest-pred", src)
    assert np.array_equal(load_predictor("someone/zest-pred", cache_dir=cache).score(pr), want)
    assert np.array_equal(load_predictor("someone/zest-pred", revision=commit, cache_dir=cache).score(pr), want)
    # offline and not cached: a clear error that says what to do
    with pytest.raises(PredictorNotFoundError, match="not in the local Hugging Face cache"):
        load_predictor("someone/other-pred", cache_dir=cache)
    with pytest.raises(PredictorNotFoundError, match="not a bundled predictor"):
        load_predictor("no-such-predictor")


def test_rank_a_model_best_first_and_json(tmp_path):
    from helpers import tiny_llama, token_batch

    import zest_hf
    from zest_hf.rank import Ranking, rank

    d = synthetic(0)
    d.values = {"snip_mean": d.values["snip"], "grad_norm": d.values["plain"]}
    pred = train_predictor([d], ["snip_mean", "grad_norm"], steps=20)
    model = tiny_llama()
    r = rank(model, token_batch(), pred)
    scores = [l["score"] for l in r.layers]
    assert scores == sorted(scores, reverse=True) and len(r.layers) == 14
    assert {"name", "score", "type", "block"} <= r.layers[0].keys()
    # the ranking is the predictor applied to the probe of exactly the metrics it needs
    res = zest_hf.probe(model, token_batch(), ["snip", "grad_norm"])
    direct = pred.score(res)
    best = res.names[int(np.argmax(direct))]
    assert r.top(1) == [best]
    with pytest.raises(ValueError, match="between 1 and"):
        r.top(15)
    r.to_json(tmp_path / "ranking.json")
    assert Ranking.from_json(tmp_path / "ranking.json").layers == r.layers


def test_rank_by_a_single_metric_column():
    from helpers import tiny_llama, token_batch

    import zest_hf
    from zest_hf.rank import rank

    model = tiny_llama()
    res = zest_hf.probe(model, token_batch(), ["snip"])
    up = rank(model, token_batch(), "metric:snip_mean")
    assert up.top(3) == res.ranking("snip_mean")[:3] and up.predictor == "metric:snip_mean"
    down = rank(model, token_batch(), "metric:-snip_mean")
    assert down.top(1) == res.ranking("snip_mean", descending=False)[:1]
    with pytest.raises(ValueError, match="no registered metric"):
        rank(model, token_batch(), "metric:nonsense")


def test_training_leaves_the_callers_random_state_as_it_was():
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    train_predictor([synthetic(0)], ["snip"], steps=5, seed=0)
    assert torch.equal(torch.rand(3), want)


def test_loading_a_predictor_leaves_the_callers_random_state_as_it_was():
    # what predictor="auto" does inside a selection, on rank 0 only: other ranks' states must not drift from it
    from zest_hf.predictor.hub import load_predictor

    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    load_predictor("zest-universal")
    assert torch.equal(torch.rand(3), want)


@pytest.mark.parametrize("scores", [np.arange(2.0), np.arange(50.0), np.zeros((42, 2))])
def test_scores_not_one_per_layer_are_refused_naming_the_model_task(scores):
    d = synthetic(0)  # 42 layers
    bad = ModelTask("toyX", "tX", d.layers, d.values, scores)
    with pytest.raises(ValueError, match=r"model-task toyX/tX has 42 layers but scores of shape"):
        train_predictor([synthetic(1), bad], ["snip"], steps=5)


def test_non_finite_scores_are_refused():
    d = synthetic(0)
    scores = d.scores.copy()
    scores[3] = np.nan
    with pytest.raises(ValueError, match=r"toy0/t has NaN/inf ground-truth scores \(layers \['m.layers.0.o_proj'\]"):
        train_predictor([ModelTask(d.model, d.task, d.layers, d.values, scores)], ["snip"], steps=5)

"""Held-out evaluation of predictors on a synthetic data set laid out exactly like predictors/data."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from test_predictor import synthetic
from zest_hf import ProbeResult
from zest_hf.contrib import HEAD_ONLY
from zest_hf.evaluation import FEATURES, Variant, load_model_tasks, run_evaluation, run_learning_curve


def _write_model_task(root, model, task, seed):
    d = synthetic(seed, scale=10.0 ** (seed % 3))
    rng = np.random.default_rng(seed + 100)
    # three noise columns; the rest constant (no information, nothing to overfit)
    values = {c: list(rng.normal(size=len(d.layers))) if c in FEATURES[:3] else [0.0] * len(d.layers)
              for c in FEATURES}
    values["snip"], values["plain"] = d.values["snip"], d.values["plain"]  # the informative two
    pr = ProbeResult(layers=d.layers, values=values, metrics=["toy"])
    (root / "probes" / model).mkdir(parents=True, exist_ok=True)
    pr.to_json(root / "probes" / model / f"{task}.json")
    (root / "contrib" / model).mkdir(parents=True, exist_ok=True)
    with (root / "contrib" / model / f"{task}.seed0.jsonl").open("w") as fh:
        for l, s in zip(d.layers, d.scores):
            fh.write(json.dumps({"model": model, "task": task, "seed": 0, "layer": l["name"], "type": l["type"],
                                 "block": l["block"], "score": float(s), "val_acc": float(s), "val_loss": 0.0,
                                 "wall_s": 1.0}) + "\n")
        fh.write(json.dumps({"model": model, "task": task, "seed": 0, "layer": HEAD_ONLY, "type": "head",
                             "block": -1, "score": -9.0, "val_acc": -9.0, "val_loss": 0.0, "wall_s": 1.0}) + "\n")


def test_evaluation_protocols_and_baselines(tmp_path):
    for i, (m, t) in enumerate([("a", "t1"), ("a", "t2"), ("a", "t3"), ("b", "t1")]):
        _write_model_task(tmp_path, m, t, seed=i)
    data = load_model_tasks(tmp_path)
    assert len(data) == 4 and all(len(d.layers) == 42 for d in data)
    df = run_evaluation(tmp_path, tmp_path / "out", variants=[Variant("linear", "zscore", steps=600)], progress=False)
    pooled = "leave-one-task-out, all models"
    assert set(df["protocol"]) == {"leave-one-task-out", "leave-one-model-out", pooled}
    # model a's three tasks are each held out once within a; every model-task once across models; pooled: a's
    # three (b's one task has no other task on b to compare with)
    assert df[df.method == "random"].groupby("protocol").size().to_dict() == {"leave-one-task-out": 3,
                                                                              "leave-one-model-out": 4, pooled: 3}
    for r in df[df.method == "random"].itertuples():
        train = r.train.split(";")
        assert f"{r.model}/{r.task}" not in train
        if r.protocol == pooled:  # the task is removed from every model, not only from the held-out one
            assert not any(k.endswith(f"/{r.task}") for k in train)
            assert ("b/t1" in train) == (r.task != "t1")  # and the other model's tasks are in
    # the consensus of the training tasks' ground truth exists only where the held-out model has training tasks, and
    # is each layer's mean rank over exactly those
    cons = df[df.method == "training tasks' consensus"]
    assert cons.groupby("protocol").size().to_dict() == {"leave-one-task-out": 3, pooled: 3}
    by_name = {d.key: d for d in data}
    for r in cons.itertuples():
        same = [by_name[k] for k in r.train.split(";") if k.startswith(f"{r.model}/")]
        expect = np.mean([scipy.stats.rankdata(d.scores) for d in same], axis=0)
        assert r.tau == pytest.approx(scipy.stats.kendalltau(expect, by_name[f"{r.model}/{r.task}"].scores)[0])
    mean = df.groupby("method")["tau"].mean()
    assert mean["linear/zscore"] > 0.6
    assert abs(mean["random"]) < 0.1
    assert mean["linear/zscore"] > mean["prior only"] + 0.3  # the metrics carry the signal, not the architecture
    single = df[df.method == "best single metric"]
    assert set(single["choice"]) <= {"+snip", "-plain"}  # chosen on training model-tasks, sign included
    for f in ("predictor_eval.md", "predictor_eval.csv", "predictor_eval.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    # the top-5 type mix: the truth's is the types of the five best ground-truth layers of the held-out task
    by_key = {(d.model, d.task): d for d in data}
    for r in df.itertuples():
        d = by_key[(r.model, r.task)]
        best5 = np.argsort(-d.scores, kind="stable")[:5]
        assert r.truth_top5_types == ",".join(d.layers[i]["type"] for i in best5)
    assert df["decoder"].all()  # the synthetic layers include a gated MLP's gate
    text = (tmp_path / "out" / "predictor_eval.md").read_text()
    assert "The best learned variant by it: **linear/zscore**" in text and "Top-5 projection types" in text
    # one seed per model-task here: the table says there is no ceiling yet rather than inventing one
    assert "no model-task has two seeds of ground truth yet" in (tmp_path / "out" / "predictor_eval.md").read_text()


def test_learning_curve_never_trains_on_its_held_out_task(tmp_path):
    tasks = [("a", "t1"), ("a", "t2"), ("a", "t3"), ("a", "t4"), ("b", "t1"), ("b", "t2")]
    for i, (m, t) in enumerate(tasks):
        _write_model_task(tmp_path, m, t, seed=i)
    df = run_learning_curve(tmp_path, tmp_path / "out", variant=Variant("linear", "zscore", steps=400), draws=2,
                            progress=False)
    assert set(df["model"]) == {"a"}  # model b has two model-tasks: no curve to draw
    for r in df.itertuples():
        train = r.train_tasks.split(";")
        assert r.task not in train and len(set(train)) == len(train) == r.n_train
    # n = 1, 2 with two draws each, n = 3 (all other tasks) once; for each of 4 held-out tasks and 2 methods
    assert df.groupby("n_train").size().to_dict() == {1: 16, 2: 16, 3: 8}
    # the synthetic tasks share their rule, so the metrics beat the prior at every n
    mean = df.groupby(["method", "n_train"])["tau"].mean()
    assert (mean["linear/zscore"] > mean["prior only"] + 0.3).all()
    for f in ("predictor_learning_curve.md", "predictor_learning_curve.csv", "predictor_learning_curve.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0


def test_signal_ablation_credits_the_signal_that_carries_the_ranking(tmp_path):
    from zest_hf.evaluation import SIGNALS, run_signal_ablation

    for i, t in enumerate(["t1", "t2", "t3"]):
        _write_model_task(tmp_path, "a", t, seed=i)
        path = tmp_path / "probes" / "a" / f"{t}.json"
        pr = ProbeResult.from_json(path)
        rng = np.random.default_rng(i)
        for name, cols in SIGNALS.items():
            for c in cols:  # grad_snr carries the ranking; the other new columns are noise
                pr.values[c] = list(pr.values["snip"]) if c == "grad_snr" else list(rng.normal(size=len(pr.layers)))
        for c in FEATURES:  # the default columns carry nothing here
            pr.values[c] = list(rng.normal(size=len(pr.layers)))
        pr.to_json(path)
    _write_model_task(tmp_path, "a", "t4", seed=3)  # probed before the new metrics: left out, not guessed
    df = run_signal_ablation(tmp_path, tmp_path / "out", steps=600, progress=False)
    assert set(df["task"]) == {"t1", "t2", "t3"} and all("t4" not in t for t in df["train"])
    mean = df.groupby("features")["tau"].mean()
    assert mean["prior + grad_snr"] > mean["prior only"] + 0.3
    assert mean["prior + default + grad_snr"] > mean["prior + default"] + 0.3
    assert mean["prior + spectral"] < mean["prior + grad_snr"] - 0.3
    for f in ("signal_ablation.md", "signal_ablation.csv", "signal_ablation.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0


def test_held_out_judges_only_the_named_task_and_still_trains_on_the_rest(tmp_path):
    for i, (m, t) in enumerate([("a", "t1"), ("a", "t2"), ("a", "t3"), ("b", "t1")]):
        _write_model_task(tmp_path, m, t, seed=i)
    v = [Variant("linear", "zscore", steps=200)]
    full = run_evaluation(tmp_path, tmp_path / "full", variants=v, progress=False)
    one = run_evaluation(tmp_path, tmp_path / "one", variants=v, progress=False, held_out=["a/t2"])
    assert set(zip(one.model, one.task)) == {("a", "t2")}
    assert f"--out-dir {tmp_path / 'one'} --seed 0 --held-out a/t2`" in (tmp_path / "one" / "predictor_eval.md").read_text()
    # the same folds as the full run's rows of that model-task: same training sets, same seed, same figures
    cols = ["protocol", "method", "train", "tau"]
    expect = full[(full.model == "a") & (full.task == "t2")][cols].sort_values(cols[:2]).reset_index(drop=True)
    pd.testing.assert_frame_equal(one[cols].sort_values(cols[:2]).reset_index(drop=True), expect)
    by_task = run_evaluation(tmp_path, tmp_path / "t1", variants=v, progress=False, held_out=["t1"])
    assert set(zip(by_task.model, by_task.task)) == {("a", "t1"), ("b", "t1")}
    for bad in (["t9"], ["a/t2", "a/t9"]):  # one unknown name among good ones is refused too
        with pytest.raises(ValueError, match=r"held_out \(--held-out\) names \[.*t9'\].*usable: a/t1"):
            run_evaluation(tmp_path, tmp_path / "bad", variants=v, progress=False, held_out=bad)
    assert not (tmp_path / "bad").exists()

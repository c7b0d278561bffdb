"""The single-metric study on a small synthetic data set whose taus are known."""

import json

import numpy as np
import pytest

from zest_hf import ProbeResult
from zest_hf.contrib import HEAD_ONLY
from zest_hf.study import run_study


def _write(tmp_path, scores_by_seed, metric_values):
    names = [f"m.layers.{i}.q_proj" for i in range(len(metric_values["up"]))]
    d = tmp_path / "contrib" / "toy"
    d.mkdir(parents=True)
    for seed, scores in scores_by_seed.items():
        with (d / f"task.seed{seed}.jsonl").open("w") as fh:
            for n, s in zip(names, scores):
                fh.write(json.dumps({"model": "toy", "task": "task", "seed": seed, "layer": n, "type": "q",
                                     "block": 0, "score": s, "val_acc": s, "val_loss": 1 - s, "wall_s": 1.0}) + "\n")
            fh.write(json.dumps({"model": "toy", "task": "task", "seed": seed, "layer": HEAD_ONLY, "type": "head",
                                 "block": -1, "score": 0.1, "val_acc": 0.1, "val_loss": 2.0, "wall_s": 1.0}) + "\n")
    layers = [{"name": n, "type": "q", "block": i} for i, n in enumerate(names)]
    pr = ProbeResult(layers=layers, values=metric_values, metrics=["toy"])
    (tmp_path / "probes" / "toy").mkdir(parents=True)
    pr.to_json(tmp_path / "probes" / "toy" / "task.json")


def test_study_taus_ceiling_and_outputs(tmp_path):
    n = 12
    s0 = [i / n for i in range(n)]
    s1 = s0[:]
    s1[0], s1[1] = s1[1], s1[0]  # one discordant pair between seeds
    _write(tmp_path, {0: s0, 1: s1}, {"up": list(range(n)), "down": list(range(n, 0, -1)), "flat": [1.0] * n})
    res = run_study(tmp_path, tmp_path / "out")
    taus = res["taus"]["toy/task"]
    # ground truth = mean of two seeds: still increasing except a tie at the first two layers
    assert taus["up"] == pytest.approx(1.0, abs=0.02)
    assert taus["down"] == pytest.approx(-1.0, abs=0.02)
    assert taus["flat"] == 0.0
    ceil = res["ceiling"]
    assert len(ceil) == 1
    assert ceil["tau"][0] == pytest.approx(1 - 2 * 1 / (n * (n - 1) / 2))
    gaps = res["gaps"].iloc[0]
    assert gaps["head_only"] == 0.1 and gaps["best"] == pytest.approx(s0[-1])
    # seed noise: the two seeds differ by -1/n and +1/n on two of n layers
    sd = ((2 / n**2) / (n - 1)) ** 0.5 / 2**0.5
    assert gaps["seed_sd"] == pytest.approx(sd)
    assert gaps["gain_sd"] == pytest.approx((sum(s0[-5:]) / 5 - 0.1) / sd) and gaps["separates"]
    for f in ("single_metric_taus.md", "single_metric_taus.png", "single_metric_taus.csv"):
        assert (tmp_path / "out" / f).stat().st_size > 0


def test_a_model_without_two_seeds_is_judged_with_another_models_noise():
    import pandas as pd

    from zest_hf.study import head_only_gaps

    def rows(model, task, seed, scores, head):
        out = [{"model": model, "task": task, "seed": seed, "layer": f"l{i}", "score": s, "val_acc": s,
                "wall_s": 1.0} for i, s in enumerate(scores)]
        return out + [{"model": model, "task": task, "seed": seed, "layer": HEAD_ONLY, "score": head,
                       "val_acc": head, "wall_s": 1.0}]

    n = 12
    noisy = [0.5 + 0.1 * ((-1) ** i) for i in range(n)]  # seeds disagree by 0.2 on every layer: sd 0.1
    gt = pd.DataFrame(rows("a", "t", 0, [0.5] * n, 0.5) + rows("a", "t", 1, noisy, 0.5)
                      + rows("b", "t", 0, [0.55] * n, 0.5))  # model b: one seed, a 5-point gain
    gaps = head_only_gaps(gt).set_index("model")
    sd_a = gaps.loc["a", "seed_sd"]
    assert sd_a > 0.05
    # b has no noise estimate of its own: a's is used, and 5 points over head-only is not beyond it
    assert gaps.loc["b", "seed_sd"] == sd_a
    assert gaps.loc["b", "gain_sd"] == pytest.approx(0.05 / sd_a)
    assert gaps.loc["b", "separates"] is not None and not gaps.loc["b", "separates"]


def test_a_collection_in_progress_is_left_out_until_its_head_only_line(tmp_path):
    """A seed still being collected (no head-only line yet) must not enter seed means, ceilings or the taus."""
    from zest_hf.evaluation import load_model_tasks
    from zest_hf.study import collection_status, load_ground_truth

    n = 12
    s0 = [i / n for i in range(n)]
    _write(tmp_path, {0: s0}, {"up": list(range(n)), "down": list(range(n, 0, -1)), "flat": [1.0] * n})
    # seed 1: the first 3 layers so far, with scores that would reverse them if averaged in
    path = tmp_path / "contrib" / "toy" / "task.seed1.jsonl"
    with path.open("w") as fh:
        for i in range(3):
            fh.write(json.dumps({"model": "toy", "task": "task", "seed": 1, "layer": f"m.layers.{i}.q_proj",
                                 "type": "q", "block": 0, "score": 5.0 - i, "val_acc": 5.0 - i, "val_loss": 0.0,
                                 "wall_s": 1.0}) + "\n")
    assert set(load_ground_truth(tmp_path)["seed"]) == {0}
    assert set(load_ground_truth(tmp_path, complete_only=False)["seed"]) == {0, 1}
    status = collection_status(tmp_path).set_index("seed")
    assert status.loc[0, "complete"] and not status.loc[1, "complete"] and status.loc[1, "layers"] == 3
    # a pilot: one layer and its head-only baseline is not a finished collection either
    with path.open("a") as fh:
        fh.write(json.dumps({"model": "toy", "task": "task", "seed": 1, "layer": HEAD_ONLY, "type": "head", "block": -1,
                             "score": 0.1, "val_acc": 0.1, "val_loss": 2.0, "wall_s": 1.0}) + "\n")
    assert not collection_status(tmp_path).set_index("seed").loc[1, "complete"]
    res = run_study(tmp_path, tmp_path / "out")
    assert res["taus"]["toy/task"]["up"] == pytest.approx(1.0)  # seed 1's reversed partial scores did not count
    assert res["ceiling"].empty
    assert "Still being collected" in res["markdown"]
    (d,) = load_model_tasks(tmp_path)
    np.testing.assert_allclose(d.scores, s0)
    # a model-task whose only seed is partial is not there at all
    (tmp_path / "contrib" / "toy" / "other.seed1.jsonl").write_text(path.read_text().replace('"task": "task"',
                                                                                         '"task": "other"'))
    path.unlink()
    probes = tmp_path / "probes" / "toy"
    (probes / "other.json").write_text((probes / "task.json").read_text())  # it has a probe: only partiality drops it
    assert {m.task for m in load_model_tasks(tmp_path)} == {"task"}

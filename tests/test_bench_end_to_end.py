"""benchmarks/end_to_end.py's accuracy phase: the plan it walks (head-only first, its tuned head rate handed to every
other method, grid on the first seed then the best rate on the others), resumption from runs.jsonl, and that the
frozen leave-one-task-out predictor and the oracle are only built when a method of the invocation needs them.
Training itself is replaced by a stand-in: what is tested is the bookkeeping around it."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling ``measure``
    spec = importlib.util.spec_from_file_location("bench_end_to_end", BENCH / "end_to_end.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def bench(monkeypatch):
    mod = _bench()
    mod.BUDGETS["toy"] = dict(steps=4, batch_size=2, max_length=8, val_examples=4, test_examples=4, curve_points=2,
                              tasks=["t"], grids={"head": [1e-3, 1e-2], "full": [1e-5, 1e-4], "sparse": [1e-4, 1e-3],
                                                  "lora": [1e-3, 3e-3]})
    calls = []

    def fake_run(model_name, task, method, lr, head_lr, seed, budget, selectors, oracle):
        calls.append((method.name, lr, head_lr, seed, bool(selectors), oracle))
        # validation accuracy peaks at the larger rate of each grid, so that is the one the other seeds reuse
        val = lr * 100
        return {"val_acc": val, "test_acc": val, "curve": [(budget["steps"], val)], "train_s": 0.0, "trainable": 1,
                "trainable_wo_head": 0, "total_params": 2, "selected": None, "predictor": None}

    monkeypatch.setattr(mod, "run_one", fake_run)
    mod.calls = calls
    return mod


def test_predictor_free_methods_never_build_the_predictor_or_the_oracle(bench, tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("built although no method of this invocation needs it")

    monkeypatch.setattr(bench, "loto_selectors", refuse)
    monkeypatch.setattr(bench, "oracle_layers", refuse)
    methods = [bench.BY_NAME[n] for n in ("full FT", "head only", "Random@5")]
    bench.accuracy_phase(["toy"], methods, tmp_path, "linear", "rank")
    names = [c[0] for c in bench.calls]
    assert names[:2] == ["head only", "head only"]  # head-only first, whatever order it was given in
    head_lr = max(bench.BUDGETS["toy"]["grids"]["head"])  # the fake's best
    # grid (2 rates, seed 0) + the best rate on seeds 1 and 2, per method; every later method gets head-only's rate
    assert len(bench.calls) == 3 * 4
    for name, lr, hl, seed, _, _ in bench.calls:
        if name != "head only":
            assert hl == head_lr
    full = [(lr, seed) for name, lr, _, seed, _, _ in bench.calls if name == "full FT"]
    assert full == [(1e-5, 0), (1e-4, 0), (1e-4, 1), (1e-4, 2)]


def test_a_rerun_resumes_from_runs_jsonl_and_a_needed_oracle_is_built(bench, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(bench, "oracle_layers", lambda model, task, k: built.append(task) or ["a", "b"])
    monkeypatch.setattr(bench, "loto_selectors", lambda *a, **k: pytest.fail("the oracle needs no predictor"))
    methods = [bench.BY_NAME["head only"], bench.BY_NAME["oracle@5"]]
    bench.accuracy_phase(["toy"], methods, tmp_path, "linear", "rank")
    assert built == ["t"] and all(c[5] == ["a", "b"] for c in bench.calls if c[0] == "oracle@5")
    rows = [json.loads(l) for l in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    bench.calls.clear()
    bench.accuracy_phase(["toy"], methods, tmp_path, "linear", "rank")
    assert bench.calls == []  # every run is there: nothing trains again
    # one run lost (a kill mid-way): only it runs again
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    bench.accuracy_phase(["toy"], methods, tmp_path, "linear", "rank")
    assert [(c[0], c[3]) for c in bench.calls] == [(rows[-1]["method"], rows[-1]["seed"])]


def test_report_means_only_over_tasks_every_method_has_finished(tmp_path):
    mod = _bench()
    rows = []
    for method, acc in (("head only", 0.5), ("full FT", 0.9)):
        for seed in mod.SEEDS:
            rows.append({"model": "toy", "task": "done", "method": method, "lr": 1e-3, "seed": seed,
                         "val_acc": acc, "test_acc": acc, "curve": [(4, acc)], "trainable_wo_head": 0,
                         "total_params": 2})
    # the second task: head only finished, full FT only its first seed (a collection in progress)
    for seed in mod.SEEDS:
        rows.append({"model": "toy", "task": "pending", "method": "head only", "lr": 1e-3, "seed": seed,
                     "val_acc": 0.1, "test_acc": 0.1, "curve": [(4, 0.1)], "trainable_wo_head": 0, "total_params": 2})
    rows.append({"model": "toy", "task": "pending", "method": "full FT", "lr": 1e-3, "seed": mod.SEEDS[0],
                 "val_acc": 0.2, "test_acc": 0.2, "curve": [(4, 0.2)], "trainable_wo_head": 0, "total_params": 2})
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = mod.report(tmp_path)
    table = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]]
             for l in text.splitlines() if l.startswith("| head only") or l.startswith("| full FT")}
    # columns: done, pending, mean, seeds, trainable; the mean is the finished task's alone, for both methods
    assert float(table["head only"][2]) == 50.0 and float(table["full FT"][2]) == 90.0
    assert "still being collected, left out of it: pending" in text


def test_targets_compare_zest_against_full_ft_and_random_over_finished_tasks():
    import pandas as pd

    mod = _bench()
    # two tasks: ZEST@5 within a point of full FT on average (80 vs 80.5) but not 2 points over Random@5 (79)
    task_means = pd.DataFrame([
        {"model": "toy", "task": t, "method": m, "acc": a}
        for t, accs in (("a", {"full FT": 81.0, "ZEST@5": 82.0, "Random@5": 80.0}),
                        ("b", {"full FT": 80.0, "ZEST@5": 78.0, "Random@5": 78.0}))
        for m, a in accs.items()])
    cost = pd.DataFrame([{"model": "toy", "method": "full FT", "time_s": 10.0, "peak_rss_mb": 1000.0},
                         {"model": "toy", "method": "ZEST@5", "time_s": 4.0, "peak_rss_mb": 450.0}])
    rows = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]]
            for l in mod._targets(task_means, cost) if l.startswith("| ZEST")}
    assert rows["ZEST@5: mean test acc. %, toy (2 tasks), vs full FT -1"] == ["80.0", ">= 79.5", "yes"]
    assert rows["ZEST@5: mean test acc. %, toy (2 tasks), vs Random@5 +2"] == ["80.0", ">= 81.0", "no"]
    assert rows["ZEST@5: step time vs full FT, toy"] == ["0.40x", "<= 0.5x", "yes"]
    assert rows["ZEST@5: peak memory vs full FT, toy"] == ["0.45x", "<= 0.4x", "no"]
    assert mod._targets(pd.DataFrame(), pd.DataFrame()) == []

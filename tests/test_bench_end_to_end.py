"""benchmarks/end_to_end.py's accuracy phase: the plan it walks (head-only first, its tuned head rate handed to every
other method, grid on the first seed then the best rate on the others), resumption from runs.jsonl, and that the
frozen leave-one-task-out predictor and the oracle are only built when a method of the invocation needs them.
Training itself is replaced by a stand-in: what is tested is the bookkeeping around it."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
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
    # grid (2 rates, first seed) + the best rate on every other seed, per method; every later method gets
    # head-only's rate
    assert len(bench.SEEDS) == 5 and len(bench.calls) == 3 * (2 + 4)
    for name, lr, hl, seed, _, _ in bench.calls:
        if name != "head only":
            assert hl == head_lr
    full = [(lr, seed) for name, lr, _, seed, _, _ in bench.calls if name == "full FT"]
    assert full == [(1e-5, 0), (1e-4, 0), (1e-4, 1), (1e-4, 2), (1e-4, 3), (1e-4, 4)]


def test_a_method_run_without_head_only_still_gets_head_onlys_tuned_head_rate(bench, tmp_path):
    head_lr = max(bench.BUDGETS["toy"]["grids"]["head"])  # the fake's best
    bench.accuracy_phase(["toy"], [bench.BY_NAME["head only"]], tmp_path, "linear", "rank")
    bench.calls.clear()
    # head-only finished earlier: nothing of it runs again, and full FT trains its head at head-only's best rate
    bench.accuracy_phase(["toy"], [bench.BY_NAME["full FT"]], tmp_path, "linear", "rank")
    assert {c[0] for c in bench.calls} == {"full FT"} and {c[2] for c in bench.calls} == {head_lr}
    # on a task where head-only never ran, it runs first rather than leaving the head's rate unset
    bench.calls.clear()
    (tmp_path / "fresh").mkdir()
    bench.accuracy_phase(["toy"], [bench.BY_NAME["full FT"]], tmp_path / "fresh", "linear", "rank")
    assert bench.calls[0][0] == "head only"
    assert all(c[2] == head_lr for c in bench.calls if c[0] == "full FT")


def test_a_rerun_resumes_from_runs_jsonl_and_a_needed_oracle_is_built(bench, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(bench, "oracle_layers", lambda model, task, k: built.append(task) or ["a", "b"])
    monkeypatch.setattr(bench, "loto_selectors", lambda *a, **k: pytest.fail("the oracle needs no predictor"))
    methods = [bench.BY_NAME["head only"], bench.BY_NAME["oracle@5"]]
    bench.accuracy_phase(["toy"], methods, tmp_path, "linear", "rank")
    assert built == ["t"] and all(c[5] == ["a", "b"] for c in bench.calls if c[0] == "oracle@5")
    rows = [json.loads(l) for l in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 6
    bench.calls.clear()
    bench.accuracy_phase(["toy"], methods, tmp_path, "linear", "rank")
    assert bench.calls == []  # every run is there: nothing trains again
    # one run lost (a kill mid-way): only it runs again
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    bench.accuracy_phase(["toy"], methods, tmp_path, "linear", "rank")
    assert [(c[0], c[3]) for c in bench.calls] == [(rows[-1]["method"], rows[-1]["seed"])]


def test_a_task_whose_data_is_missing_stops_the_invocation_before_any_run(bench, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.delenv("ZEST_HF_BIGBENCH_DIR", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "bigbench" else real(m, *a))
    bench.BUDGETS["toy"]["tasks"] = ["bbc_news", "bigbench:cs_algorithms/valid_parentheses", "bbc_nwes"]
    with pytest.raises(SystemExit) as err:
        bench.check_task_data(["toy"], "accuracy")
    msg = str(err.value)
    assert "nothing was run" in msg and "pip install --no-deps bigbench==1.0.0" in msg
    assert "bigbench:cs_algorithms/valid_parentheses" in msg and "bbc_nwes" in msg  # the misspelt one too
    assert "  bbc_news:" not in msg  # a task that loads is not listed
    bench.check_task_data(["toy"], "cost")  # the cost phase reads the first task only: bbc_news loads
    bench.check_task_data(["toy"], "report")  # the report reads no task
    bench.BUDGETS["toy"]["tasks"] = ["bigbench:cs_algorithms/valid_parentheses"]
    with pytest.raises(SystemExit, match="valid_parentheses"):
        bench.check_task_data(["toy"], "cost")


def test_report_means_only_over_tasks_every_method_has_finished(tmp_path):
    mod = _bench()
    kb = mod.key_budget("toy")
    rows = []
    for method, acc in (("head only", 0.5), ("full FT", 0.9)):
        for seed in mod.SEEDS:
            rows.append({"model": "toy", "task": "done", "method": method, "lr": 1e-3, "seed": seed,
                         "val_acc": acc, "test_acc": acc, "curve": [(4, acc)], "trainable_wo_head": 0,
                         "total_params": 2, "budget": kb})
    # the second task: head only finished, full FT only its first seed (a collection in progress)
    for seed in mod.SEEDS:
        rows.append({"model": "toy", "task": "pending", "method": "head only", "lr": 1e-3, "seed": seed,
                     "val_acc": 0.1, "test_acc": 0.1, "curve": [(4, 0.1)], "trainable_wo_head": 0, "total_params": 2,
                     "budget": kb})
    rows.append({"model": "toy", "task": "pending", "method": "full FT", "lr": 1e-3, "seed": mod.SEEDS[0],
                 "val_acc": 0.2, "test_acc": 0.2, "curve": [(4, 0.2)], "trainable_wo_head": 0, "total_params": 2,
                 "budget": kb})
    # a line of an older design (another test-set size): kept in runs.jsonl, never mixed into the tables
    rows.append({**rows[0], "test_acc": 0.0, "val_acc": 1.0, "budget": {**kb, "test_examples": 1}})
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = mod.report(tmp_path)
    table = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]]
             for l in text.splitlines() if l.startswith("| head only") or l.startswith("| full FT")}
    # columns: done, pending, mean, seeds, trainable; the mean is the finished task's alone, for both methods
    assert float(table["head only"][2]) == 50.0 and float(table["full FT"][2]) == 90.0
    assert f"fewer than {mod.MIN_SEEDS} seeds for some method, left out of it: pending" in text


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


def test_targets_compare_a_method_only_on_the_tasks_it_shares_with_the_other():
    import pandas as pd

    mod = _bench()
    # the cost-aware variant ran on task a only: its 82 is set against full FT's 81 on a, not the two-task mean 80.5
    task_means = pd.DataFrame([
        {"model": "toy", "task": t, "method": m, "acc": a}
        for t, accs in (("a", {"full FT": 81.0, "ZEST@5": 82.0, "ZEST@5 cost 0.5": 79.5}),
                        ("b", {"full FT": 80.0, "ZEST@5": 78.0}))
        for m, a in accs.items()])
    rows = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]]
            for l in mod._targets(task_means, pd.DataFrame()) if l.startswith("| ZEST")}
    assert rows["ZEST@5 cost 0.5: mean test acc. %, toy (1 task), vs full FT -1"] == ["79.5", ">= 80.0", "no"]
    assert rows["ZEST@5: mean test acc. %, all models (2 tasks), vs full FT -1"] == ["80.0", ">= 79.5", "yes"]


def _cell_rows(mod, accs: dict, tasks: dict) -> list[dict]:
    """Run lines at one rate: ``accs[method](task, seed)`` is the test accuracy of each cell."""
    kb = mod.key_budget("toy")
    return [{"model": "toy", "task": t, "method": m, "lr": 1e-3, "seed": s, "val_acc": 0.5, "test_acc": f(t, s),
             "curve": [(4, 0.5)], "trainable_wo_head": 0, "total_params": 2, "budget": kb}
            for m, f in accs.items() for t in tasks for s in mod.SEEDS]


def test_paired_differences_pair_each_task_and_seed_and_their_interval_decides_the_verdict(tmp_path):
    import pandas as pd

    mod = _bench()
    tasks = {"easy": 0.9, "mid": 0.6, "hard": 0.3}
    noise = {s: 0.05 * ((-1) ** s) * s for s in mod.SEEDS}  # the seed moves both methods of a cell alike
    accs = {"ZEST 10%": lambda t, s: tasks[t] + noise[s] + 0.02,
            "Spectrum 10%": lambda t, s: tasks[t] + noise[s],
            # the same mean over cells as Spectrum, but ahead on some cells and behind on others
            "Random 10% matched": lambda t, s: tasks[t] + noise[s] + (0.06 if s % 2 else -0.04) - 0.002 * s,
            "full FT": lambda t, s: tasks[t] + noise[s] + 0.04}
    final = mod.final_runs(pd.DataFrame(_cell_rows(mod, accs, tasks)))
    rows = {(r["a"], r["b"]): r for r in mod.paired_rows(final)}
    spec = rows[("ZEST 10%", "Spectrum 10%")]
    # every cell differs by exactly 2 points: the across-task spread (60 points) does not widen the interval
    assert spec["cells"] == 3 * len(mod.SEEDS) and spec["tasks"] == 3
    assert abs(spec["mean"] - 2.0) < 1e-9 and abs(spec["low"] - 2.0) < 1e-9 and spec["verdict"] == "win"
    assert rows[("ZEST 10%", "full FT")]["verdict"] == "loss"
    rand = rows[("ZEST 10%", "Random 10% matched")]
    assert rand["low"] < 0 < rand["high"] and rand["verdict"] == "tie"
    targets = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]]
               for l in mod._targets(pd.DataFrame(), pd.DataFrame(), mod.paired_rows(final)) if l.startswith("| ZEST")}
    assert targets["ZEST 10% - Spectrum 10%, toy (3 tasks x seeds = 15), points"][1:] == ["interval > 0", "yes"]
    assert targets["ZEST 10% - full FT, toy (3 tasks x seeds = 15), points"][1:] == ["mean >= -1", "no"]
    assert targets["ZEST 10% - Random 10% matched, toy (3 tasks x seeds = 15), points"][2] == "no"
    # a cell one method lacks is left out of that comparison, not paired with another seed
    partial = final[~((final["method"] == "Spectrum 10%") & (final["seed"] == mod.SEEDS[-1]))]
    cells = {(r["a"], r["b"]): r["cells"] for r in mod.paired_rows(partial)}
    assert cells[("ZEST 10%", "Spectrum 10%")] == 3 * (len(mod.SEEDS) - 1)
    # a comparison one run into its first task gets no interval and no verdict (one cell: a zero-width interval)
    started = final[(final["method"] != "Spectrum 10%") | ((final["task"] == "easy") & (final["seed"] == 0))]
    assert ("ZEST 10%", "Spectrum 10%") not in {(r["a"], r["b"]) for r in mod.paired_rows(started)}
    assert ("ZEST 10%", "full FT") in {(r["a"], r["b"]) for r in mod.paired_rows(started)}


def test_pooled_rows_count_model_task_pairs_and_report_how_well_a_baseline_is_matched():
    import pandas as pd

    mod = _bench()
    tasks = {"a": 0.7, "b": 0.5}
    accs = {"ZEST 10%": lambda t, s: tasks[t] + 0.02 + 0.01 * s, "Random 10% matched": lambda t, s: tasks[t]}
    rows = []
    for model in ("toy", "other"):  # both models have tasks "a" and "b": four (model, task) pairs
        for r in _cell_rows(mod, accs, tasks):
            # the random draw holds 90 % of ZEST's parameters; selections differ in size from seed to seed
            r.update(model=model, selected_params=(100 if r["method"] == "ZEST 10%" else 90) * (1 + r["seed"]),
                     projection_params=1000, trainable_wo_head=r["seed"], total_params=10)
            rows.append(r)
    final = mod.final_runs(pd.DataFrame(rows))
    got = {r["model"]: r for r in mod.paired_rows(final) if r["b"] == "Random 10% matched"}
    assert got["all models"]["tasks"] == 4 and got["toy"]["tasks"] == 2
    assert got["all models"]["params b/a"] == pytest.approx(0.9)
    # the trainable share is the mean over the runs (seeds 0..4 train 0..4 of 10 weights: 20 %), not one run's
    table, _, _ = mod.accuracy_table(final[final["model"] == "toy"], ["ZEST 10%"])
    assert table.loc["ZEST 10%", "trainable (w/o head)"] == "20.0%"


def test_random_matched_holds_what_zest_selected_on_the_same_task_and_seed(tmp_path):
    mod = _bench()
    runs = tmp_path / "runs.jsonl"
    m = mod.BY_NAME["Random 3% matched"]
    with pytest.raises(SystemExit, match="run ZEST 3% first"):
        mod.matched_params(runs, "toy", "t", m, 1)
    kb = mod.key_budget("toy")
    lines = [{"model": "toy", "task": "t", "method": "ZEST 3%", "seed": s, "budget": kb, "selected_params": 100 + s}
             for s in (0, 1)]
    lines.append({**lines[1], "task": "other", "selected_params": 7})
    runs.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert mod.matched_params(runs, "toy", "t", m, 1) == 101 and mod.matched_params(runs, "toy", "t", m, 0) == 100


def test_report_draws_the_forest_and_pareto_plots_and_checks_zests_memory_against_lora(tmp_path):
    mod = _bench()
    tasks = {"a": 0.7, "b": 0.5}
    accs = {m: (lambda base: (lambda t, s: tasks[t] + base + 0.01 * s))(base)
            for m, base in (("head only", -0.2), ("full FT", 0.05), ("LoRA all", 0.04), ("ZEST 10%", 0.03),
                            ("Spectrum 10%", 0.0), ("Random 10% matched", 0.01), ("ZEST 3%", 0.02),
                            ("ZEST@5", 0.025))}
    rows = _cell_rows(mod, accs, tasks)
    for r in rows:
        r["model"], r["budget"] = "smollm2", mod.key_budget("smollm2")
        r["selected_params"], r["projection_params"] = (10, 100) if "%" in r["method"] else (None, 100)
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cost = [{"model": "smollm2", "method": m, "time_s": t, "peak_rss_mb": p, "trainable": 1, "batch": [8, 64],
             "threads": 1, "times_s": [t]}
            for m, t, p in (("full FT", 10.0, 1000.0), ("LoRA all", 7.0, 700.0), ("ZEST 10%", 4.0, 500.0),
                            ("Spectrum 10%", 4.0, 480.0), ("Random 10% matched", 3.5, 470.0), ("ZEST 3%", 3.0, 400.0),
                            ("ZEST@5", 3.5, 450.0), ("head only", 2.0, 300.0))]
    (tmp_path / "cost.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cost))
    text = mod.report(tmp_path)
    for f in ("forest.png", "pareto.png"):
        assert (tmp_path / f).stat().st_size > 10_000  # a drawn figure, not an empty canvas
    memory_row = ("| ZEST 10% step peak memory vs LoRA all, smollm2 | 0.71x, accuracy -1.0 [-1.0, -1.0] points | <= 1x "
                  "| yes |")
    assert memory_row in text
    table5 = text.split("## Table 5")[1].split("##")[0]
    assert "| 10.0% " in table5  # the selections' share of the projections
    assert "| ZEST@5 " in table5  # the top-k a user sets is one more of ZEST's budgets there


def test_lr_table_compares_a_methods_rates_on_the_same_tasks_of_the_current_design(tmp_path):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_lr_table", BENCH / "lr_table.py")
    lr_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lr_table)
    from end_to_end import key_budget

    now, old = key_budget("minilm"), {**key_budget("minilm"), "steps": 1}
    rows = [  # task a ran the whole grid; task b only the first rate, where it scored far higher
        ("a", 3e-4, 0.50, now), ("a", 1e-3, 0.70, now), ("b", 3e-4, 0.99, now),
        ("a", 3e-4, 0.95, old),  # an older design's line: never mixed in
        ("c", 3e-4, 0.10, now), ("c", 1e-3, 0.30, now)]
    with (tmp_path / "runs.jsonl").open("w") as fh:
        for task, lr, acc, budget in rows:
            fh.write(json.dumps({"model": "minilm", "task": task, "method": "ZEST 10%", "lr": lr, "seed": 0,
                                 "val_acc": acc, "budget": budget}) + "\n")
    text = lr_table.table(tmp_path / "runs.jsonl", tmp_path / "absent.jsonl")
    # over a and c only: 3e-4 -> 30.0, 1e-3 -> 50.0; counting b or the old line would put 3e-4 ahead
    assert "| MiniLM, classification (2 tasks) | ZEST 10% | 0.0003: 30.0, **0.001: 50.0** |" in text


def test_table5_means_every_task_and_gives_a_method_still_running_its_paired_gap_to_full_ft(tmp_path):
    mod = _bench()
    tasks = {"easy": 0.9, "hard": 0.3}
    accs = {"head only": lambda t, s: tasks[t] - 0.2, "full FT": lambda t, s: tasks[t] + 0.01 * s,
            "ZEST 10%": lambda t, s: tasks[t] - 0.02 + 0.01 * s, "ZEST 3%": lambda t, s: tasks[t] - 0.05}
    # ZEST 3% has reached the hard task only, where every method scores low: its raw mean would look worst of all
    rows = [r for r in _cell_rows(mod, accs, tasks) if not (r["method"] == "ZEST 3%" and r["task"] == "easy")]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table5 = mod.report(tmp_path).split("## Table 5")[1].split("\n\n")[1]
    header, _, *body = table5.splitlines()
    cols = [c.strip() for c in header.split("|")[1:-1]]
    table = {r.split("|")[1].strip(): dict(zip(cols, (c.strip() for c in r.split("|")[1:-1]))) for r in body}
    # every finished method's mean runs over both tasks, not shrunk to the one task ZEST 3% reached
    assert float(table["full FT"]["mean"]) == round((0.9 + 0.3 + 2 * 0.01 * np.mean(mod.SEEDS)) / 2 * 100, 1)
    assert table["ZEST 3%"]["mean"] == "" and table["ZEST 3%"]["tasks"] == "1/2"
    assert table["ZEST 10%"]["tasks"] == "2/2"
    # the paired gap: ZEST 3% - full FT over the hard task's cells, -5 - the seeds' mean drift of full FT
    assert float(table["ZEST 3%"]["- full FT"]) == round(-5 - np.mean(mod.SEEDS), 1)
    assert float(table["ZEST 10%"]["- full FT"]) == -2.0 and float(table["full FT"]["- full FT"]) == 0.0


def test_a_decoder_classification_task_listed_for_log_likelihood_takes_the_lm_head(bench):
    from types import SimpleNamespace

    bbc = SimpleNamespace(name="bbc_news", kind="classification")
    twitter = SimpleNamespace(name="twitter_sentiment", kind="classification")
    mc = SimpleNamespace(name="bigbench:timedial", kind="multiple_choice")
    assert "bbc_news" in bench.BUDGETS["smollm2"]["tasks"]
    assert bench.head_kind("smollm2", bbc) == "causal_lm"  # label names scored as choices, as SFT trains it
    assert bench.head_kind("smollm2", twitter) == "seq_cls"  # not listed: the ground truth's head protocol
    assert bench.head_kind("smollm2", mc) == "causal_lm"
    assert bench.head_kind("minilm", bbc) == "seq_cls"  # an encoder keeps its classification head
    with pytest.raises(SystemExit, match="encoder"):
        bench.head_kind("minilm", mc)

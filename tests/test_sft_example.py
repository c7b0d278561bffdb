"""examples/sft_trl.py's report: the rate chosen on validation, paired differences with their bootstrap interval."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location("sft_trl", Path(__file__).resolve().parents[1] / "examples" / "sft_trl.py")
sft = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sft)


def _run(method, lr, val, test, gen=None, step=1.0, rss=1.0):
    return {"method": method, "lr": lr, "seed": 0, "steps": 3, "batch_size": 2, "max_length": 32, "task": sft.TASK,
            "trainable": 10, "total_params": 100, "step_s": step, "peak_rss_gb": rss, "selected": ["a.q_proj"],
            "val_loglik": val, "test_loglik": test, "test_generation": gen or test}


def test_report_picks_the_rate_by_validation_and_pairs_the_test_examples(tmp_path):
    rows = [_run("full", 1e-5, [1, 0, 0, 0], [0, 0, 0, 0], step=2.0, rss=4.0),
            _run("full", 3e-5, [1, 1, 0, 0], [1, 1, 0, 0], step=2.0, rss=4.0),
            _run("zest", 3e-5, [1, 1, 1, 0], [1, 1, 1, 1], step=1.0, rss=2.0),
            _run("zest", 1e-4, [0, 0, 0, 0], [0, 0, 0, 0], step=1.0, rss=2.0)]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = sft.report(tmp_path)
    assert "| full fine-tuning | 3e-05 (1e-05, 3e-05) | 50.0 | 50.0 |" in text
    assert "| ZEST@8 (full mode) | 3e-05 (3e-05, 0.0001) | 75.0 | 100.0 |" in text
    assert "| 1.00 | 0.50x | 2.00 | 0.50x |" in text  # ratios to full FT, side by side
    assert "ZEST@8 (full mode) - full fine-tuning, loglik: +50.0" in text


def test_paired_interval_covers_the_mean_difference_and_is_zero_width_for_constant_differences():
    d, lo, hi = sft._paired_ci([1, 1, 1, 1], [0, 0, 0, 0])
    assert (d, lo, hi) == (100.0, 100.0, 100.0)
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    d, lo, hi = sft._paired_ci(a, b)
    assert lo < d < hi and hi - lo < 30


def test_the_grid_runs_every_method_at_its_first_rate_before_any_at_its_second():
    todo = sft.grid_order(["zest_qlora", "qlora_all"], done={("qlora_all", 3e-4)})
    assert todo == [("zest_qlora", 3e-4), ("zest_qlora", 1e-3), ("qlora_all", 1e-3)]
    assert sft.grid_order(["full", "zest"], done=set())[:2] == [("full", 1e-5), ("zest", 3e-5)]
    with pytest.raises(SystemExit, match="unknown --methods \\['qlora'\\]"):
        sft.grid_order(["qlora"], done=set())

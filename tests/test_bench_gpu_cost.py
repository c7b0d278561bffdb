"""The GPU cost script's CPU rehearsal: the same code path on a tiny config, so the one device run cannot fail on a
bug this machine can find."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.usefixtures("one_thread")
def test_the_gpu_cost_script_runs_its_whole_path_on_a_tiny_cpu_config(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_cost

    monkeypatch.setattr(sys, "argv", ["gpu_cost.py", "--configs", "tiny", "--device", "cpu", "--dtype", "float32",
                                      "--repeats", "1", "--out", str(tmp_path)])
    assert gpu_cost.main() == 0
    res = json.loads((tmp_path / "gpu_cost.json").read_text())
    methods = {r["method"]: r for r in res["rows"]}
    assert set(methods) == {"full FT", "LoRA-all r=16", "ZEST@5", "ZEST@10", "ZEST@5 cost-aware"}
    assert methods["full FT"]["trainable"] > methods["ZEST@10"]["trainable"] > methods["ZEST@5"]["trainable"]
    # the model's ratios: a shallower backward is cheaper, and nothing beats full FT's FLOPs from above
    assert methods["ZEST@5 cost-aware"]["pred_time_vs_full"] < methods["ZEST@5"]["pred_time_vs_full"] < 1.0
    assert res["probe"]["bit_identical"] and res["probe"]["flags_same"] and res["probe"]["modes_same"]
    assert res["sparse_zo"]["tuned"] > 0 and res["sparse_zo"]["zo_step_s"] > 0
    assert (tmp_path / "gpu_cost.md").read_text().startswith("# Step cost on cpu")

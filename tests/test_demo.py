"""`zest demo`: the whole flow (probe, rank, select, fine-tune, evaluate, save, reload) on a tiny random BERT saved
like a user's checkpoint and a small real task."""

import json

import pytest
from safetensors import safe_open

from zest_hf.demo import DemoConfig, run_demo

pytestmark = pytest.mark.usefixtures("one_thread")


# spectrum reads a column the default probe does not compute: the demo probes what its predictor needs
@pytest.mark.parametrize("predictor", ["metric:grad_norm", "spectrum"])
def test_demo_runs_the_whole_flow_and_the_reload_reproduces_it(tiny_dir, tmp_path, predictor):
    cfg = DemoConfig(model=str(tiny_dir), task="bbc_news", top_k=2, predictor=predictor, steps=3,
                     batch_size=4, max_length=32, seed=2, eval_examples=0, max_examples=80)
    s = run_demo(tmp_path, cfg)
    ranking = json.loads((tmp_path / "ranking.json").read_text())
    # the selection is the top of the ranking the demo printed, and the config on disk names it
    assert s["selected_modules"] == [r["name"] for r in ranking["layers"][:2]]
    resolved = json.loads((tmp_path / "zest_config.json").read_text())
    assert resolved["selected_modules"] == s["selected_modules"] and resolved["probe_seed"] == 2
    # only the selection (weight + bias) and the new 5-way classifier of the 32-wide model train
    sizes = {r["name"]: r["num_params"] for r in ranking["layers"]}
    assert s["trainable_params"] == sum(sizes[n] for n in s["selected_modules"]) + 32 * 5 + 5
    # the adapter holds exactly those tensors, and stock peft's reload predicts the same on every test example
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as f:
        saved = sum(f.get_slice(k).get_shape()[0] * (f.get_slice(k).get_shape() + [1])[1] for k in f.keys())
    assert saved == s["trainable_params"]
    assert s["reload_identical"] and s["reload_test_accuracy"] == s["test_accuracy"]
    assert s["num_test"] == 8 and s["config"]["seed"] == 2
    for name in ("probe.json", "probe_heatmap.png", "ranking_heatmap.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0


def test_demo_refuses_a_multiple_choice_task_before_probing(tiny_dir, tmp_path, mc_task):
    cfg = DemoConfig(model=str(tiny_dir), task=mc_task, max_examples=40, predictor="metric:grad_norm")
    with pytest.raises(ValueError, match="classification task"):
        run_demo(tmp_path, cfg)
    assert not (tmp_path / "probe.json").exists()

"""The two training examples end to end, on tiny random models saved like a user's checkpoint and small real tasks:
ZEST full mode trains exactly selection + head and its saved adapter reloads to the same predictions; LoRA mode
trains exactly LoRA on the selection and saves a stock LORA adapter with the exact module names."""

import importlib.util
import json
from pathlib import Path

import pytest
import transformers

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PRED = "metric:grad_norm"  # the bundled predictor may be retrained at any time; a fixed metric keeps tests stable

pytestmark = pytest.mark.usefixtures("one_thread")


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_text_classification_zest_vs_head_only_and_reload(tiny_dir, tmp_path, capsys):
    out = tmp_path / "adapter"
    r = load_example("text_classification").main([
        "--model", str(tiny_dir), "--task", "bbc_news", "--max-examples", "80", "--top-k", "2", "--max-steps", "3",
        "--batch-size", "4", "--max-length", "32", "--seed", "3", "--predictor", PRED, "--output-dir", str(out)])
    cfg = r["config"]
    head = 32 * 5 + 5  # the new classifier of the tiny BERT (hidden 32) for BBC's 5 topics
    assert len(cfg.selected_modules) == 2 and cfg.modules_to_save == ["classifier"]
    assert cfg.probe_seed == 3 and cfg.selection_info["predictor"] == PRED
    # ZEST trains exactly the two selected projections (weight + bias) and the head; head-only just the head
    assert r["zest"]["trainable"] == cfg.selection_info["selected_params"] + head
    assert r["head_only"]["trainable"] == head
    assert r["num_test"] == 8 and len(r["zest"]["predictions"]) == 8
    # the adapter on disk is the selection, and reloading it onto a fresh base reproduces every prediction
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["peft_type"] == "ZEST" and saved["selected_modules"] == cfg.selected_modules
    assert r["reloaded"]["selected"] == cfg.selected_modules
    assert r["reloaded"]["predictions"] == r["zest"]["predictions"]
    assert r["reloaded"]["accuracy"] == r["zest"]["accuracy"]
    printed = capsys.readouterr().out
    assert "seed 3" in printed and f"| head only | {head:,} |" in printed
    assert f"| ZEST@2 (full) | {r['zest']['trainable']:,} |" in printed and "the same predictions" in printed


def test_text_classification_refuses_a_multiple_choice_task(tiny_dir, tmp_path, mc_task):
    with pytest.raises(SystemExit, match="multiple_choice task"):
        load_example("text_classification").main(["--model", str(tiny_dir), "--task", mc_task,
                                                   "--max-examples", "30", "--output-dir", str(tmp_path)])


def test_causal_lm_lora_on_the_selection_saves_a_stock_adapter(tiny_llama_dir, tmp_path, capsys, mc_task):
    out = tmp_path / "adapter"
    r = load_example("causal_lm").main([
        "--model", str(tiny_llama_dir), "--task", mc_task, "--max-examples", "60", "--top-k", "3",
        "--r", "4", "--max-steps", "3", "--batch-size", "4", "--max-length", "48", "--eval-examples", "5",
        "--predictor", PRED, "--output-dir", str(out)])
    cfg = r["config"]
    assert cfg.mode == "lora" and len(cfg.selected_modules) == 3 and cfg.modules_to_save == []
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    lora = sum(4 * (m.in_features + m.out_features) for m in map(base.get_submodule, cfg.selected_modules))
    assert r["trainable"] == lora  # LoRA A and B on the selection, nothing else (no head in a causal LM)
    saved = json.loads((out / "adapter_config.json").read_text())
    assert r["adapter_config"] == saved
    assert saved["peft_type"] == "LORA" and saved["r"] == 4 and not saved["modules_to_save"]
    assert sorted(saved["target_modules"]) == sorted(cfg.selected_modules)  # exact names, not a suffix pattern
    assert r["reloaded_config"] == "LoraConfig" and r["reloaded_same_logits"] is True
    assert r["num_test"] == 5 and all(0 <= r[k] <= 1 for k in ("before", "after"))
    printed = capsys.readouterr().out
    assert "seed 0" in printed and "peft_type LORA" in printed and "= the exact selected names" in printed

"""Sharded training on 2 real CPU processes, both modes, one launch each (~15-30 s on 2 cores).

FSDP2 (gloo): a resolved ZEST selection trains sharded, mixed with frozen weights inside one sharded block; frozen
weights hold no gradient and no optimizer state and never move; both ranks end identical and equal to an unsharded run
on the same global batch; ``zest_hf.save_adapter`` gathers and saves what peft saves, and the adapter reloads exactly.

DeepSpeed ZeRO-3 (the select-then-train route: a resolved config, ``prepare_trainer``, a stock Trainer): every
parameter is partitioned, only the selection moves, the optimizer's fp32 partitions add up to exactly the trainable
parameters, and the adapter ``save_model`` writes reloads to the trained model's logits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import peft
import pytest
import torch
import torch.distributed

from _fsdp2_script import LR, STEPS, config, digest, global_batch, tiny_llama
from helpers import launch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "_fsdp2_script.py"
TIMEOUT = 300


def _launch(script: Path, out: Path, mode: str, prefix: str = "") -> list[dict]:
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(out), mode]
    src = os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONPATH=src,
               DS_ACCELERATOR="cpu")
    launch(cmd, env=env, cwd=out, timeout=TIMEOUT)
    return [json.loads((out / f"{prefix}rank{r}_{mode}.json").read_text()) for r in (0, 1)]


def _unsharded_reference(mode):
    model = peft.get_peft_model(tiny_llama(), config(mode))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR, momentum=0.9)
    for ids in global_batch():  # the whole global batch in one process: what the two shards average to
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_fsdp2_trains_the_selection_sharded_and_saves_an_adapter_that_reloads_exactly(tmp_path, mode):
    r0, r1 = _launch(SCRIPT, tmp_path, mode)
    assert r0["sharded"] and r1["sharded"]
    assert r0["trained"] == r1["trained"] and r0["trained"]  # both ranks gather the same trained tensors
    for r in (r0, r1):
        assert r["frozen_moved"] == [] and r["frozen_with_grad"] == [] and r["trainable_without_grad"] == []
        assert r["grad_bytes"]["False"] == 0 and r["grad_bytes"]["True"] > 0
        assert r["opt_state_bytes"]["False"] == 0 and r["opt_state_params"] == r["trainable_params"]
    ref = _unsharded_reference(mode)
    ref_state = {n: p for n, p in ref.named_parameters() if p.requires_grad}
    loaded = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / f"adapter_{mode}")
    got = dict(loaded.named_parameters())
    for name, p in ref_state.items():
        # the sharded run averages the two halves' gradients: the unsharded run's, up to float summation order
        assert torch.allclose(got[name], p, rtol=1e-4, atol=1e-6), name
    base = tiny_llama()
    changed = {n for n, p in loaded.merge_and_unload().named_parameters()
               if not torch.equal(p, dict(base.named_parameters())[n])}
    if mode == "full":
        assert changed == {f"{m}.weight" for m in config(mode).selected_modules}
    else:
        assert changed <= {f"{m}.weight" for m in config(mode).selected_modules} and changed
    assert STEPS and digest(torch.zeros(1))  # the helpers the script shares are the ones used here


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_zero3_trains_a_resolved_selection_and_its_adapter_reloads_to_the_same_logits(tmp_path, mode):
    pytest.importorskip("deepspeed")
    from _zero3_script import SELECTED, eval_batch
    from _zero3_script import tiny_llama as zero3_llama

    r0, r1 = _launch(ROOT / "tests" / "_zero3_script.py", tmp_path, mode, prefix="zero3_")
    for r in (r0, r1):
        assert r["processes"] == 2 and r["partitioned"]
        # full mode trains the selected weights in place; LoRA leaves every base weight where it was
        assert r["moved"] == (sorted(f"{m}.weight" for m in SELECTED) if mode == "full" else [])
    # the optimizer's fp32 master partitions, over both ranks: exactly the trainable parameters, nothing frozen
    assert r0["opt_numel"] + r1["opt_numel"] == r0["trainable_numel"] < r0["total_numel"] / 10
    trained = torch.load(tmp_path / f"zero3_logits_{mode}.pt")
    # saved by the Trainer, and by zest_hf.save_adapter outside it (it gathers the partitioned weights itself)
    for saved in (f"adapter_{mode}", f"save_adapter_{mode}"):
        loaded = peft.PeftModel.from_pretrained(zero3_llama(), tmp_path / saved).eval()
        with torch.no_grad():
            logits = loaded(input_ids=eval_batch()).logits
        assert torch.allclose(logits, trained, rtol=1e-5, atol=1e-6), saved
    with torch.no_grad():
        untrained = zero3_llama().eval()(input_ids=eval_batch()).logits
    assert not torch.allclose(untrained, trained, rtol=1e-4, atol=1e-5)  # training did change what it computes


@pytest.mark.integration
def test_fsdp1_pays_gradient_memory_for_frozen_block_mates_unless_wrapping_follows_the_selection(tmp_path):
    """benchmarks/fsdp_memory.py on a small Llama: the byte counts it reports, per rank, from the tensors held."""
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fsdp_memory.py"), "--layers", "4", "--hidden",
                           "64", "--seq", "8", "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads((tmp_path / "fsdp_memory.json").read_text())["rows"]
    total = {v: {k: sum(r[k] for r in rows if r["variant"] == v) for k in ("grad_bytes", "opt_state_bytes")}
             for v in {r["variant"] for r in rows}}
    ref = total["unsharded"]
    assert ref["grad_bytes"] == ref["opt_state_bytes"] == rows[0]["selection_bytes"]  # exactly the selection
    # FSDP2 and selection-following FSDP1: the shards add up to the selection, nothing for frozen weights
    assert total["fsdp2"] == ref and total["fsdp1_follows_selection"] == ref
    # FSDP1 wrapped per block: the flat gradient of every block holding a selected projection, frozen parts too
    assert total["fsdp1_per_block"]["grad_bytes"] > 2 * ref["grad_bytes"]
    assert total["fsdp1_per_block"]["opt_state_bytes"] == ref["opt_state_bytes"]

"""ZEST under ``accelerate launch`` with 2 real CPU processes (gloo): rank 0 selects and broadcasts, every rank trains
the same selection with identical weights, frozen weights stay bit-identical, DDP runs without
find_unused_parameters, and a selection error on rank 0 reaches rank 1. One launch, ~30 s on 2 cores. Also: under
DeepSpeed ZeRO-3 (simulated here, in-process; the real ZeRO-3 run is in test_sharded.py) only a resolved config is
accepted."""

import json
import os
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.distributed
import transformers
from _ddp_script import data, make_trainer, tiny_bert_cls
from helpers import launch
from peft import PeftModel

import zest_hf
import zest_hf.rank
from zest_hf.callback import ZestTrainerError, _shareable

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "_ddp_script.py"
CONFIG = ROOT / "examples" / "accelerate" / "cpu_2proc.yaml"
TIMEOUT = 240  # seconds; the launch takes ~30 s on an idle 2-core machine


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("ddp")
    # `accelerate launch` with this interpreter; ACCELERATE_USE_CPU=1 is what makes the processes one gloo group
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), str(SCRIPT), str(out)]
    src = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="1",
               TRANSFORMERS_VERBOSITY="error", PYTHONPATH=src)
    launch(cmd, env=env, cwd=out, timeout=TIMEOUT)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_two_processes_train_rank_zeros_selection_identically(ranks, mode):
    r0, r1 = (r[mode] for r in ranks)
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    for r in (r0, r1):
        assert r["num_processes"] == 2 and r["distributed_type"] == "DistributedType.MULTI_CPU"
        assert r["wrapper"] == "DistributedDataParallel" and r["global_step"] == 3

    # the ranks drew different probe batches (the Trainer shards the data), and rank 1's own choice is made to differ
    # (its ranking is reversed): left alone it would train other layers
    assert r0["probe_batch"] != r1["probe_batch"]
    assert set(r1["own_selection"]).isdisjoint(r0["own_selection"])
    # yet both train rank 0's choice, which only rank 0 computed
    assert r0["selected"] == r1["selected"] == r0["own_selection"] and len(r0["selected"]) == 2
    assert r0["rank_calls_in_prepare"] == 1 and r1["rank_calls_in_prepare"] == 0

    # trained tensors: selection (+ LoRA) and head; they moved, and are bit-identical across ranks
    assert len(r0["trained"]) == 2 * 2 + 2
    assert r0["trained"] == r1["trained"] and r0["trained_sum"] == r1["trained_sum"]
    assert r0["trained_unchanged"] == [] and r1["trained_unchanged"] == []
    for r in (r0, r1):
        assert r["frozen_changed"] == [] and r["in_place_unchanged"] == []  # frozen weights bit-identical
        # DDP's reducer sees only the trainable tensors, all used each step: no unused-parameter search
        assert r["ddp_find_unused_parameters_arg"] is False and r["ddp_find_unused_parameters"] is False


@pytest.mark.integration
def test_a_selection_error_on_rank_zero_is_raised_on_every_rank(ranks):
    errors = [r["unlabelled"] for r in ranks]
    assert [e["error"] for e in errors] == ["MissingLabelsError"] * 2
    assert errors[0]["message"] == errors[1]["message"] and "no 'labels'" in errors[0]["message"]


@pytest.mark.integration
def test_a_probe_batch_that_fails_on_one_rank_is_raised_on_every_rank(ranks):
    # the failing rank raises its own error; the other learns of it before waiting for a config that never comes
    r0, r1 = (r["bad_shard"] for r in ranks)
    assert r1["error"] == "ValueError" and "bad row" in r1["message"]
    assert r0["error"] == "ZestTrainerError" and "process(es) [1]" in r0["message"]


class TwoArgError(ValueError):
    def __init__(self, a, b):  # unpickling calls TwoArgError("a and b"): a TypeError
        super().__init__(f"{a} and {b}")


def test_an_error_that_does_not_unpickle_is_shared_as_its_message():
    err = TwoArgError("x", "y")
    with pytest.raises(TypeError):
        pickle.loads(pickle.dumps(err))
    shared = _shareable(err)
    assert isinstance(shared, ZestTrainerError) and "TwoArgError: x and y" in str(shared)
    plain = _shareable(ValueError("bad top_k"))
    assert type(plain) is ValueError and str(plain) == "bad top_k"


def test_zero3_takes_a_resolved_config_and_refuses_to_probe(tmp_path, monkeypatch):
    zero3 = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)), ddp_handler=None)
    trainer = make_trainer(tiny_bert_cls(), data(), str(tmp_path))
    monkeypatch.setattr(trainer, "accelerator", zero3)
    with pytest.raises(ZestTrainerError, match="zest select --model M --task T --top-k K --config-out"):
        zest_hf.prepare_trainer(trainer, zest_hf.ZestConfig(top_k=2, predictor="metric:grad_norm"))
    assert not isinstance(trainer.model, PeftModel) and trainer.optimizer is None

    monkeypatch.setattr(zest_hf.rank, "rank", lambda *a, **k: pytest.fail("a resolved config probed"))
    chosen = ["bert.encoder.layer.1.output.dense"]
    cfg = zest_hf.prepare_trainer(trainer, zest_hf.ZestConfig(selected_modules=chosen, modules_to_save=["classifier"]))
    assert cfg.selected_modules == chosen and isinstance(trainer.model, PeftModel)
    assert isinstance(trainer.model.get_base_model(), transformers.BertForSequenceClassification)

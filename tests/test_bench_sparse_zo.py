"""benchmarks/sparse_zo.py's equal-steps mode: a run killed and resumed from its checkpoint ends bit-identical to the
uninterrupted run (same batches, same perturbation seeds), and its validation curve has no gaps or duplicates."""

import copy
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from helpers import tiny_llama

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling ``measure``
    spec = importlib.util.spec_from_file_location("bench_sparse_zo", BENCH / "sparse_zo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _data(n=10, length=8):
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        ids = torch.randint(3, 1000, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": ids})
    collate = lambda rs: {k: torch.tensor([r[k] for r in rs]) for k in rs[0]}  # noqa: E731
    return rows, collate


def test_batch_at_walks_every_example_once_per_epoch_and_reshuffles():
    mod = _bench()
    rows, _ = _data(n=10)
    for i, r in enumerate(rows):
        r["idx"] = [i]
    collate = lambda rs: [r["idx"][0] for r in rs]  # noqa: E731
    args = SimpleNamespace(batch_size=3)
    epoch0 = [i for t in range(3) for i in mod.batch_at(rows, collate, args, t)]  # 3 full batches of 10, 1 dropped
    epoch1 = [i for t in range(3, 6) for i in mod.batch_at(rows, collate, args, t)]
    assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9
    assert epoch0 != epoch1
    assert mod.batch_at(rows, collate, args, 4) == mod.batch_at(rows, collate, args, 4)


def test_killed_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    mod = _bench()
    rows, collate = _data()
    torch.manual_seed(0)
    base = tiny_llama().eval()
    val = [collate(rows[:4])]

    def run(out, steps, model):
        args = SimpleNamespace(out_dir=str(out), batch_size=2, eval_every=2)
        params = list(model.parameters())
        return mod.train_zo_steps(model, params, rows, collate, args, run="zo_dense lr=1e-3", lr=1e-3, steps=steps,
                                  dense=True, val_batches=val, curve=out / "curve.jsonl")

    straight = copy.deepcopy(base)
    run(tmp_path / "a", 6, straight)

    first = copy.deepcopy(base)
    run(tmp_path / "b", 4, first)  # "killed" after its step-4 checkpoint
    resumed = copy.deepcopy(base)  # a fresh process: pretrained weights again
    run(tmp_path / "b", 6, resumed)

    assert not torch.equal(straight.model.embed_tokens.weight, base.model.embed_tokens.weight)  # it did train
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    curve = [r["step"] for r in mod.read_jsonl(tmp_path / "b" / "curve.jsonl")]
    assert curve == [0, 2, 4, 6]
    a = {r["step"]: r["val_loss"] for r in mod.read_jsonl(tmp_path / "a" / "curve.jsonl")}
    b = {r["step"]: r["val_loss"] for r in mod.read_jsonl(tmp_path / "b" / "curve.jsonl")}
    assert a == b


def test_a_checkpoint_from_another_model_is_refused(tmp_path):
    mod = _bench()
    args = SimpleNamespace(out_dir=str(tmp_path))
    mod.save_ckpt(args, "run", [torch.zeros(3)], step=2, seconds=1.0)
    try:
        mod.load_ckpt(args, "run", [torch.zeros(4)])
    except SystemExit as e:
        assert "does not match" in str(e) and "--out-dir" in str(e)
    else:
        raise AssertionError("a mismatched checkpoint was loaded")

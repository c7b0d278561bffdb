"""Run by tests/test_distributed.py under ``accelerate launch`` on 2 CPU processes (gloo); not a test module itself.

Each rank builds the same tiny random BERT classifier (seeded, from a config: no download), a stock Trainer on a small
synthetic dataset, calls ``zest_hf.prepare_trainer`` with an unresolved config, trains a few steps and writes
``rank<i>.json`` into the directory given as first argument: what it selected, what it would have selected alone,
the probe batch it drew, hashes of the trained tensors, and whether frozen weights stayed bit-identical.

Rank 1 is made to disagree on purpose: its ranking is reversed (``zest_hf.rank.rank`` patched), and the Trainer
shards the data, so its probe batch differs from rank 0's. If it selected for itself it would train other layers;
it trains rank 0's selection only because rank 0 selects and broadcasts.

A last scenario gives the Trainer data without labels: the probe fails on rank 0 alone, and rank 1 must raise the same
error instead of waiting forever for a selection.
"""

import hashlib
import json
import os
import sys

import datasets
import torch
import transformers

import zest_hf
import zest_hf.callback
import zest_hf.rank

PRED = "metric:grad_norm"


def tiny_bert_cls():
    torch.manual_seed(0)  # identical initial weights on every rank
    cfg = transformers.BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, num_labels=3)
    return transformers.BertForSequenceClassification(cfg)


def data(n=64, length=10, labels=True):
    g = torch.Generator().manual_seed(1)
    cols = {"input_ids": torch.randint(3, 1000, (n, length), generator=g).tolist(),
            "attention_mask": [[1] * length] * n}
    if labels:
        cols["label"] = torch.randint(0, 3, (n,), generator=g).tolist()
    return datasets.Dataset.from_dict(cols)


def make_trainer(model, train, out):
    args = transformers.TrainingArguments(
        output_dir=out, per_device_train_batch_size=8, max_steps=3, learning_rate=5e-3, report_to="none",
        disable_tqdm=True, save_strategy="no", logging_strategy="no", use_cpu=True, seed=0)
    return transformers.Trainer(model=model, args=args, train_dataset=train)


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def run(mode: str, out: str, rank_calls: list, probes: list) -> dict:
    model = tiny_bert_cls()
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    trainer = make_trainer(model, data(), out)
    rank_calls.clear()
    probes.clear()
    cfg = zest_hf.prepare_trainer(trainer, zest_hf.ZestConfig(top_k=2, predictor=PRED, mode=mode))
    calls_in_prepare = len(rank_calls)
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()

    trained = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    ddp = trainer.model_wrapped
    in_place = {f"{m}.{p}" for m in cfg.selected_modules for p in ("weight", "bias")} if mode == "full" else set()
    return {
        "mode": mode,
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "selected": cfg.selected_modules,
        "own_selection": probes[0]["own_selection"],
        "probe_batch": probes[0]["batch"],
        "rank_calls_in_prepare": calls_in_prepare,
        "trained": {n: digest(p) for n, p in trained.items()},
        "trained_sum": float(sum(p.detach().double().sum() for p in trained.values())),
        "trained_unchanged": [n for n, p in trained.items() if torch.equal(p, start[n])],
        "frozen_changed": [n for n, p in params.items() if n not in in_place and not torch.equal(p, before[n])],
        "in_place_unchanged": [n for n in in_place if torch.equal(params[n], before[n])],
        "ddp_find_unused_parameters_arg": trainer.args.ddp_find_unused_parameters,
        "wrapper": type(ddp).__name__,
        "ddp_find_unused_parameters": getattr(ddp, "find_unused_parameters", None),
        "global_step": trainer.state.global_step,
    }


def run_unlabelled(out: str) -> dict:
    trainer = make_trainer(tiny_bert_cls(), data(labels=False), out)
    try:
        zest_hf.prepare_trainer(trainer, zest_hf.ZestConfig(top_k=2, predictor=PRED))
    except Exception as e:  # noqa: BLE001 - the point is which error each rank sees
        return {"error": type(e).__name__, "message": str(e)}
    return {"error": None}


def run_bad_shard(out: str, rank: int) -> dict:
    trainer = make_trainer(tiny_bert_cls(), data(), out)
    if rank == 1:
        def broken(features):
            raise ValueError("a bad row in this rank's shard")

        trainer.data_collator = broken  # the probe batch cannot be drawn on rank 1 only
    try:
        zest_hf.prepare_trainer(trainer, zest_hf.ZestConfig(top_k=2, predictor=PRED))
    except Exception as e:  # noqa: BLE001 - the point is which error each rank sees (and that none waits forever)
        return {"error": type(e).__name__, "message": str(e)}
    return {"error": None}


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    state = transformers.TrainingArguments(output_dir=out_dir, use_cpu=True, report_to="none")
    rank = state.process_index

    real_rank = zest_hf.rank.rank
    rank_calls, probes = [], []

    def patched_rank(model, batch, *a, **k):
        rank_calls.append(1)
        ranking = real_rank(model, batch, *a, **k)
        if rank == 1:
            ranking.layers = ranking.layers[::-1]  # rank 1 would choose the opposite layers
        return ranking

    real_probe_batch = zest_hf.callback._probe_batch

    def recording_probe_batch(trainer, config):
        batch = real_probe_batch(trainer, config)
        own = zest_hf.rank.rank(trainer.model, batch, PRED, seed=config.probe_seed)
        rank_calls.pop()  # this call is ours, not prepare_trainer's
        probes.append({"batch": digest(batch["input_ids"]), "own_selection": [r["name"] for r in own.layers[:2]]})
        return batch

    zest_hf.rank.rank = patched_rank
    zest_hf.callback._probe_batch = recording_probe_batch

    report = {"rank": rank, "world_size": state.world_size}
    for mode in ("full", "lora"):
        report[mode] = run(mode, os.path.join(out_dir, mode), rank_calls, probes)
    zest_hf.callback._probe_batch = real_probe_batch  # from here on, only prepare_trainer probes
    report["unlabelled"] = run_unlabelled(os.path.join(out_dir, "unlabelled"))
    report["bad_shard"] = run_bad_shard(os.path.join(out_dir, "bad_shard"), rank)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f, indent=1)
    # leave together: a rank that exits while its peer still talks to it makes gloo abort the peer
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

"""Run by tests/test_sharded.py under ``torch.distributed.run --nproc_per_node 2`` with DeepSpeed ZeRO-3 on CPU; not a
test module.

The select-then-train route: a resolved ZEST config (from disk in real use, built here), a stock Trainer with a ZeRO-3
DeepSpeed config, ``zest_hf.prepare_trainer`` (no probe: the config is resolved), three steps, ``save_model``. Each
rank writes ``zero3_rank<i>_<mode>.json``: whether the parameters were partitioned, which weights moved (gathered
after training, against the initial model), how many parameters hold optimizer state; rank 0 also saves the trained
model's logits on a fixed batch, which the reloaded adapter must reproduce.
"""

import json
import os
import sys
from pathlib import Path

import datasets
import deepspeed
import helpers
import torch
import transformers

import zest_hf

SELECTED = ["model.layers.0.self_attn.v_proj", "model.layers.1.mlp.up_proj"]


def tiny_llama():
    torch.manual_seed(0)  # the same initial weights on every rank and in the test that compares with them
    return helpers.tiny_llama()


def eval_batch():
    return torch.randint(3, 1000, (2, 10), generator=torch.Generator().manual_seed(7))


def config(mode):
    return zest_hf.ZestConfig(selected_modules=SELECTED, selection_scores=[2.0, 1.0], mode=mode, modules_to_save=[])


def main():
    out, mode = Path(sys.argv[1]), sys.argv[2]
    # threshold 0: every parameter stays partitioned between passes, as a real model's large ones do (by default
    # DeepSpeed keeps a tiny model's small parameters whole after their first use)
    ds_config = {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True,
                                       "stage3_param_persistence_threshold": 0},
                 "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                 "zero_allow_untested_optimizer": True}
    args = transformers.TrainingArguments(
        output_dir=str(out / f"run_{mode}"), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
        weight_decay=0.0, report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
        deepspeed=ds_config, use_cpu=True)
    model = tiny_llama()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(3, 1000, (16, 12), generator=torch.Generator().manual_seed(1))
    train = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train)
    zest_hf.prepare_trainer(trainer, config(mode))  # resolved: nothing is probed
    trainer.train()
    peft_model = trainer.model
    params = dict(peft_model.named_parameters())
    partitioned = all(hasattr(p, "ds_id") for p in params.values())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        full = {n: p.detach().clone() for n, p in params.items()}
    # the base model's own parameter names: peft's wrappers insert ".zest_layer.default" or ".base_layer"
    moved = sorted({canonical(n) for n, v in full.items()
                    if canonical(n) in initial and not torch.equal(v, initial[canonical(n)])})
    opt = trainer.optimizer
    flat = getattr(opt, "fp32_partitioned_groups_flat", None) or getattr(getattr(opt, "optimizer", None),
                                                                          "fp32_partitioned_groups_flat", [])
    opt_numel = sum(t.numel() for t in flat)  # this rank's fp32 master partitions: what the optimizer updates
    trainable = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in params.values() if p.requires_grad)
    peft_model.eval()
    with torch.no_grad():
        logits = trainer.model_wrapped(input_ids=eval_batch()).logits
    trainer.save_model(str(out / f"adapter_{mode}"))
    zest_hf.save_adapter(peft_model, out / f"save_adapter_{mode}")  # the same weights, outside the Trainer
    rank = int(os.environ.get("RANK", 0))
    if rank == 0:
        torch.save(logits, out / f"zero3_logits_{mode}.pt")
    (out / f"zero3_rank{rank}_{mode}.json").write_text(json.dumps({
        "partitioned": partitioned, "moved": moved, "opt_numel": opt_numel, "trainable_numel": trainable,
        "total_numel": sum(v.numel() for v in full.values()), "processes": trainer.accelerator.num_processes}))
    # Both ranks leave together and tear the process group down: a rank that exits while the other still talks to
    # it, or with gloo's threads alive, aborts at interpreter exit ("terminate called without an active exception").
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def canonical(name: str) -> str:
    name = name.removeprefix("base_model.model.")
    return name.replace(".zest_layer.default", "").replace(".base_layer", "")


if __name__ == "__main__":
    main()
    # Every result is written and the group is torn down; skip interpreter teardown, where DeepSpeed's and gloo's
    # leftover C++ threads can still abort a loaded machine's rank ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

"""``zest demo`` / ``make demo``: the whole flow on the packaged default, end to end and offline.

probe one batch -> rank with the bundled predictor -> select the top-k -> fine-tune with a stock Trainer ->
evaluate on the test split -> save the adapter -> reload it with stock peft onto a fresh base model and check that
it predicts exactly what the trained model predicted.

Every step is the public API a user script would call; the files it writes (``out_dir``):

- ``probe.json`` and ``probe_heatmap.png``: the zero-shot metrics of every layer (blocks x projection types);
- ``ranking.json`` and ``ranking_heatmap.png``: the predictor's scores, best first;
- ``zest_config.json``: the resolved selection (reusable with no probe: ``ZestConfig.from_json``);
- ``adapter/``: the saved adapter (the selected weights and the head, safetensors, + ``adapter_config.json``);
- ``summary.json``: every figure printed, with the seed and budget that produced it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .defaults import DEFAULT_MODEL, DEFAULT_PREDICTOR, DEFAULT_TASK
from .serialization import write_atomic

__all__ = ["DemoConfig", "run_demo"]


@dataclass
class DemoConfig:
    """The demo's budget. The defaults take ~2 minutes on 2 CPU cores.

    Args:
        model: ``minilm`` (packaged, offline), a Hub id or a local path of a sequence-classification-capable encoder.
        task: A classification task name (``bbc_news``, ``twitter_sentiment``, ``bigbench:<task>``).
        top_k: Layers ZEST trains (plus the new task head).
        predictor: ``"auto"`` (the bundled predictor of the model's family), a bundled predictor name, directory,
            Hub id, or ``metric:<probe column>``.
        steps: Optimizer steps of the fine-tuning.
        batch_size: Training examples per step; the probe batch has the same size.
        max_length: Tokens per example.
        lr: Learning rate of the selected layers and the head.
        seed: Probe batch, head initialisation, batch order.
        eval_examples: First N test examples to score (0: all).
        max_examples: Keep a seeded subset of the task (quick runs and tests); None: all of it.
    """

    model: str = DEFAULT_MODEL
    task: str = DEFAULT_TASK
    top_k: int = 5
    predictor: str = DEFAULT_PREDICTOR
    steps: int = 60
    batch_size: int = 16
    max_length: int = 64
    lr: float = 1e-3
    seed: int = 0
    eval_examples: int = 500
    max_examples: int | None = None


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(out_dir: str | Path = "out/demo", config: DemoConfig | None = None) -> dict:
    """Run the flow and return the summary (also written to ``out_dir/summary.json``)."""
    from .plot import require_matplotlib

    require_matplotlib("zest demo")  # its heatmaps; said before the minutes of work, not after
    import peft
    import torch
    import transformers
    from peft import PeftModel

    from .peft_method.config import ZestConfig
    from .probe.run import probe
    from .selection.resolve import select
    from .train.finetune import accuracy_metric, predict_labels, trainable_params
    from .models import load_model
    from .plot import layer_heatmap
    from .metrics import resolve_metrics
    from .selection.rank import probe_metrics, rank_probe
    from .targets import find_targets
    from .tasks import collator_for, load_task, tokenize_split
    from .workflow import prepare

    cfg = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # 1. One batch of the task's training split and the model with a fresh head (seeded: the reload below gets the
    #    same initial head, so head weights not saved would show up as different predictions).
    kind = load_task(cfg.task, max_examples=cfg.max_examples).kind  # checked before any model is loaded
    if kind != "classification":
        raise ValueError(f"the demo fine-tunes a sequence classifier; {cfg.task} is a {kind} task. Use a "
                         "classification task (bbc_news, twitter_sentiment, bigbench:multiemo/all_sentence_en)")
    prep = prepare(cfg.model, cfg.task, head="seq_cls", batch_size=cfg.batch_size, max_length=cfg.max_length,
                   seed=cfg.seed, max_examples=cfg.max_examples)
    task, model, tok = prep.task, prep.model, prep.tokenizer
    _say(f"[1/6] probe: one batch {list(prep.batch['input_ids'].shape)} of {task.name} through {cfg.model}")
    # the default metrics (the heatmap reads grad_norm) and whatever else the chosen predictor reads
    needed = probe_metrics(cfg.predictor, [t.type for t in find_targets(model)])
    metrics = sorted({m.name for m in resolve_metrics("default")} | set(needed))
    result = probe(model, prep.batch, metrics, seed=cfg.seed, progress=True)
    result.meta.update({"model": cfg.model, "task": task.name, "seed": cfg.seed})
    result.to_json(out / "probe.json")
    layer_heatmap(result.layers, result.column("grad_norm"), out / "probe_heatmap.png", label="grad_norm",
                  title=f"grad_norm: {cfg.model} on {task.name} (seed {cfg.seed})")

    # 2. Rank the probed layers with the predictor (no second probe).
    ranking = rank_probe(result, cfg.predictor)
    ranking.meta.update({"model": cfg.model, "task": task.name, "seed": cfg.seed})
    ranking.to_json(out / "ranking.json")
    layer_heatmap(ranking.layers, [r["score"] for r in ranking.layers], out / "ranking_heatmap.png",
                  label="predicted score", title=f"ZEST predictor {ranking.predictor}: {cfg.model} on {task.name}")
    _say(f"[2/6] rank: {len(ranking.layers)} layers scored by predictor {ranking.predictor}; best 10:")
    for i, r in enumerate(ranking.layers[:10], start=1):
        _say(f"  {i:3d}  {r['score']:+.4f}  {r['type']:5s} block {r['block']}  {r['name']}")

    # 3. Select: the same ranking, resolved into a ZestConfig that names its layers (select probes again with
    #    the same batch and seed, so it picks exactly the top of the table above).
    zcfg = select(model, prep.batch, ZestConfig(top_k=cfg.top_k, mode="full", predictor=cfg.predictor,
                                                probe_seed=cfg.seed))
    zcfg.to_json(out / "zest_config.json")
    expected = ranking.top(cfg.top_k)
    if sorted(zcfg.selected_modules) != sorted(expected):  # would mean the probe is not deterministic
        raise RuntimeError(f"selection {zcfg.selected_modules} differs from the ranking's top {cfg.top_k} {expected}")
    _say(f"[3/6] select: top {cfg.top_k} -> {zcfg.selected_modules}; head {zcfg.modules_to_save}")

    # 4. Fine-tune with a stock Trainer; peft's get_peft_model applies the selection (only it and the head train).
    peft_model = peft.get_peft_model(model, zcfg)
    total = sum(p.numel() for p in peft_model.parameters())
    n_train = trainable_params(peft_model)
    train = tokenize_split(task.splits["train"], tok, model_kind="seq_cls", max_length=cfg.max_length)
    test = task.splits["test"]
    if cfg.eval_examples:
        test = test.select(range(min(cfg.eval_examples, len(test))))
    test = tokenize_split(test, tok, model_kind="seq_cls", max_length=cfg.max_length)
    collator = collator_for("seq_cls", tok)
    source, accuracy = accuracy_metric()
    refs = list(test["labels"])
    before = accuracy(predict_labels(peft_model, test, collator), refs)
    targs = transformers.TrainingArguments(
        output_dir=str(out / "trainer"), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, weight_decay=0.0, seed=cfg.seed, data_seed=cfg.seed, save_strategy="no",
        logging_strategy="no", report_to="none", dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False)  # its longest step shows a bar (transformers hides it at the CLI's log level)
    trainer = transformers.Trainer(model=peft_model, args=targs, train_dataset=train, processing_class=tok,
                                   data_collator=collator)
    _say(f"[4/6] fine-tune: {cfg.steps} steps x batch {cfg.batch_size} x {cfg.max_length} tokens, lr {cfg.lr}; "
         f"{n_train:,} of {total:,} parameters train ({100 * n_train / total:.2f}%)")
    start = time.perf_counter()
    train_loss = trainer.train().training_loss
    train_s = time.perf_counter() - start

    # 5. Evaluate.
    preds = predict_labels(peft_model, test, collator)
    after = accuracy(preds, refs)
    _say(f"[5/6] evaluate: test accuracy on {len(test)} examples ({source}): {before:.4f} before fine-tuning "
         f"(new head), {after:.4f} after")

    # 6. Save, and reload with stock peft onto a fresh base model with the same seeded head initialisation.
    adapter = out / "adapter"
    peft_model.save_pretrained(adapter)
    saved_mb = sum(f.stat().st_size for f in adapter.iterdir()) / 2**20
    transformers.set_seed(cfg.seed)
    base, _ = load_model(cfg.model, "seq_cls", num_labels=task.num_labels)
    reloaded = PeftModel.from_pretrained(base, adapter)
    reload_preds = predict_labels(reloaded, test, collator)
    same = reload_preds == preds
    _say(f"[6/6] save + reload: {adapter} ({saved_mb:.1f} MB) -> PeftModel.from_pretrained: "
         + ("the same predictions on every test example" if same else "DIFFERENT predictions"))

    summary = {
        "config": asdict(cfg),
        "task": task.name,
        "probe_batch_shape": list(prep.batch["input_ids"].shape),
        "predictor": ranking.predictor,
        "selected_modules": list(zcfg.selected_modules),
        "selection_scores": list(zcfg.selection_scores),
        "trainable_params": n_train,
        "total_params": total,
        "train_loss": train_loss,
        "train_s": train_s,
        "num_test": len(test),
        "metric": source,
        "test_accuracy_before": before,
        "test_accuracy": after,
        "adapter_mb": saved_mb,
        "reload_identical": same,
        "reload_test_accuracy": accuracy(reload_preds, refs),
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=1))
    if not same:
        raise RuntimeError(f"the adapter reloaded from {adapter} predicts differently from the trained model")
    _say(f"wrote {out}/: probe.json, probe_heatmap.png, ranking.json, ranking_heatmap.png, zest_config.json, "
         "adapter/, summary.json")
    return summary

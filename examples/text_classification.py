"""ZEST in a stock ``transformers.Trainer`` text-classification script, against head-only training.

What it shows: the two lines that add ZEST to an ordinary Trainer script (``zest_hf.prepare_trainer`` after building
the Trainer), ZEST@k in full mode (the k selected projections train in place, plus the new classifier head) against
head-only training on the same budget (same steps, batch, learning rate, seed and head initialisation), the
trainable-parameter count of each, and the saved adapter reloading with stock ``peft.PeftModel.from_pretrained``
onto a fresh base model with the same test accuracy. Offline, the defaults cost ~3.5 CPU-core-minutes: 2-4
minutes on 2 CPU cores:

    python examples/text_classification.py                       # all-MiniLM-L6-v2 on BBC News, ZEST@5, 60 steps
    python examples/text_classification.py --task bigbench:multiemo/all_sentence_en --top-k 8
    python examples/text_classification.py --model bert-base-uncased --max-steps 200   # any Hub id (needs the Hub)
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 examples/text_classification.py  # 2 CPU procs

Under ``accelerate launch`` every process trains (the batch per step is then ``--batch-size`` per process) and only
the main process evaluates, prints and saves. (``accelerate launch --cpu --num_processes 2`` starts ONE process:
accelerate's ``--cpu`` uses its single-process launcher; examples/accelerate/ has the set-ups.)
"""

from __future__ import annotations

import argparse
import time

import transformers

import zest_hf
from zest_hf.finetune import accuracy_metric, freeze_all_but_head, predict_labels, trainable_params
from zest_hf.models import load_model
from zest_hf.tasks import collator_for, load_task, tokenize_split


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="minilm",
                    help="'minilm' (packaged all-MiniLM-L6-v2, offline), a Hub model id or a local path")
    ap.add_argument("--task", default="bbc_news",
                    help="bbc_news, twitter_sentiment or bigbench:<task>[/<subtask>] (a classification task)")
    ap.add_argument("--top-k", type=int, default=5, help="ZEST trains this many projections (plus the head)")
    ap.add_argument("--max-steps", type=int, default=60, help="optimizer steps, for both runs")
    ap.add_argument("--batch-size", type=int, default=16, help="training examples per step (per process)")
    ap.add_argument("--max-length", type=int, default=64, help="tokens per example (longer ones are cut)")
    ap.add_argument("--lr", type=float, default=1e-3,
                    help="learning rate of every trained tensor (ZEST's layers and the head; the head-only run's head)")
    ap.add_argument("--seed", type=int, default=0, help="head initialisation, batch order, dropout and the ZEST probe")
    ap.add_argument("--eval-examples", type=int, default=500, help="first N examples of the test split (0: all)")
    ap.add_argument("--max-examples", type=int, default=None,
                    help="keep a seeded subset of this many examples of the task before splitting (quick runs)")
    ap.add_argument("--predictor", default="auto",
                    help="auto (the bundled predictor of the model's family), a bundled name, directory, Hub id, "
                         "or 'metric:<probe column>'")
    ap.add_argument("--output-dir", default="out/examples/text_classification",
                    help="the ZEST adapter is saved here")
    return ap.parse_args(argv)


def fresh_model(args, num_labels: int):
    # The same seed before every load gives both runs (and the reload) the same initial head.
    transformers.set_seed(args.seed)
    return load_model(args.model, "seq_cls", num_labels=num_labels)


def make_trainer(model, tokenizer, train, args) -> transformers.Trainer:
    """An ordinary Trainer; both runs get exactly these arguments."""
    targs = transformers.TrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, weight_decay=0.0, seed=args.seed, data_seed=args.seed,
        save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True)
    return transformers.Trainer(model=model, args=targs, train_dataset=train, processing_class=tokenizer,
                                data_collator=collator_for("seq_cls", tokenizer))


def run(args) -> dict:
    """Train ZEST@k and head-only on the same budget, save and reload the ZEST adapter; return the figures."""
    task = load_task(args.task, max_examples=args.max_examples)  # split_seed=0: one test split for every --seed
    if task.kind != "classification":
        raise SystemExit(f"{task.name} is a {task.kind} task; this example trains a sequence classifier "
                         "(see examples/causal_lm.py for multiple choice)")
    model, tok = fresh_model(args, task.num_labels)
    train = tokenize_split(task.splits["train"], tok, model_kind="seq_cls", max_length=args.max_length)
    test = task.splits["test"]
    if args.eval_examples:
        test = test.select(range(min(args.eval_examples, len(test))))
    test = tokenize_split(test, tok, model_kind="seq_cls", max_length=args.max_length)
    collator = collator_for("seq_cls", tok)

    # ZEST@k, full mode: the stock Trainer plus one prepare_trainer call before train().
    trainer = make_trainer(model, tok, train, args)
    cfg = zest_hf.prepare_trainer(trainer, zest_hf.ZestConfig(top_k=args.top_k, mode="full",
                                                              predictor=args.predictor, probe_seed=args.seed))
    start = time.perf_counter()
    zest_loss = trainer.train().training_loss
    zest_time = time.perf_counter() - start
    trainer.save_model(args.output_dir)  # the selected weights and the head only (safetensors) + adapter_config.json
    is_main = trainer.is_world_process_zero()

    # Head-only: a fresh copy of the same pretrained model and the same initial head, only the head trains.
    base_only, _ = fresh_model(args, task.num_labels)
    freeze_all_but_head(base_only)
    head_trainer = make_trainer(base_only, tok, train, args)
    start = time.perf_counter()
    head_loss = head_trainer.train().training_loss
    head_time = time.perf_counter() - start
    if not is_main:
        return {}

    metric_source, accuracy = accuracy_metric()
    refs = list(test["labels"])
    zest_preds, head_preds = predict_labels(trainer.model, test, collator), predict_labels(base_only, test, collator)

    # Reload: stock peft onto a fresh base model (import zest_hf registers peft_type "ZEST"); no probe runs again.
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(fresh_model(args, task.num_labels)[0], args.output_dir)
    reload_preds = predict_labels(reloaded, test, collator)
    result = {
        "task": task.name, "num_test": len(test), "metric": metric_source, "config": cfg,
        "zest": {"accuracy": accuracy(zest_preds, refs), "predictions": zest_preds, "loss": zest_loss,
                 "trainable": trainable_params(trainer.model), "train_s": zest_time},
        "head_only": {"accuracy": accuracy(head_preds, refs), "predictions": head_preds, "loss": head_loss,
                      "trainable": trainable_params(base_only), "train_s": head_time},
        "reloaded": {"accuracy": accuracy(reload_preds, refs), "predictions": reload_preds,
                     "selected": reloaded.peft_config["default"].selected_modules},
    }
    report(args, result)
    return result


def report(args, r: dict) -> None:
    cfg = r["config"]
    print(f"\n{args.model} on {r['task']}: {args.max_steps} steps x batch {args.batch_size} x {args.max_length} "
          f"tokens, lr {args.lr}, seed {args.seed}; test accuracy on {r['num_test']} examples ({r['metric']})")
    print(f"ZEST@{args.top_k} selected (predictor {cfg.selection_info['predictor']}): "
          + ", ".join(f"{n} ({s:.3g})" for n, s in zip(cfg.selected_modules, cfg.selection_scores)))
    print()
    print("| run | trainable params | train loss | train time | test accuracy |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, key in (("head only", "head_only"), (f"ZEST@{args.top_k} (full)", "zest")):
        row = r[key]
        print(f"| {name} | {row['trainable']:,} | {row['loss']:.4f} | {row['train_s']:.0f} s | "
              f"{row['accuracy']:.4f} |")
    same = "the same predictions" if r["reloaded"]["predictions"] == r["zest"]["predictions"] else "DIFFERENT"
    print(f"\nreloaded {args.output_dir} with PeftModel.from_pretrained onto a fresh base model: test accuracy "
          f"{r['reloaded']['accuracy']:.4f} ({same} as after training)")


def main(argv=None) -> dict:
    """Run with command-line arguments; returns the figures on the main process, ``{}`` on the others."""
    return run(parse_args(argv))


if __name__ == "__main__":
    main()

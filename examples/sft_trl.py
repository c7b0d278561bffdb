"""Supervised fine-tuning with TRL: ZEST against LoRA on every projection and full fine-tuning, offline, on SmolLM2.

The data is a conversational prompt/completion set built from BIG-bench social_iqa (an allowed multiple-choice
task): the user turn holds the situation, the question and the options, the assistant turn the gold option's
text. Every method trains with ``trl.SFTTrainer`` (loss on the completion tokens only) for the same steps, batch
and data order, seed 0, at each learning rate of its grid; the rate is chosen on validation, and test accuracy
is reported at that rate, two ways: by log-likelihood of each option as the assistant's answer (the option the
model finds likeliest), and by greedy generation (exact match of the answer text). Trainable parameters, median
step time and peak resident memory during training come from the same runs, one fresh process per run.

    python examples/sft_trl.py                       # the whole grid -> out/sft_trl/runs.jsonl and table.md
    python examples/sft_trl.py --report              # only rebuild the table from runs.jsonl
    python examples/sft_trl.py --max-steps 2 --val-examples 8 --test-examples 8 --out-dir /tmp/sft_smoke

Resumable: a rerun skips the (method, learning rate) runs already in runs.jsonl.

Methods: ``full`` (every weight), ``zest`` (ZestConfig(top_k=8), full mode, through zest_hf.prepare_trainer),
``zest_lora`` (the same selection size, LoRA r=8 on it), ``lora_all`` (peft LoRA r=8 on every linear projection),
and the QLoRA flow over a bitsandbytes NF4 base (``from_pretrained(..., quantization_config=BitsAndBytesConfig(
load_in_4bit=True))``, also on a CPU): ``qlora_all`` (LoRA r=8 on every projection, as QLoRA does) and
``zest_qlora`` (``zest_hf.select`` on one training batch of the 4-bit model picks the 8 projections, and the resolved
config goes to ``SFTTrainer`` as its ``peft_config``: ZEST places QLoRA's adapters).

    python examples/sft_trl.py --methods qlora_all,zest_qlora   # only the 4-bit runs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

GRID = {  # learning rates per method: full mode trains the base weights (small rates), LoRA its adapters
    "full": [1e-5, 3e-5],
    "zest": [3e-5, 1e-4],
    "zest_lora": [3e-4, 1e-3],
    "lora_all": [3e-4, 1e-3],
    "qlora_all": [3e-4, 1e-3],
    "zest_qlora": [3e-4, 1e-3],
}
#: The methods that train LoRA over a 4-bit (NF4) base.
QUANTIZED = ("qlora_all", "zest_qlora")
LABELS = {"full": "full fine-tuning", "zest": "ZEST@8 (full mode)", "zest_lora": "ZEST@8, LoRA r=8",
          "lora_all": "LoRA r=8, every projection", "qlora_all": "QLoRA r=8, every projection (NF4 base)",
          "zest_qlora": "ZEST@8 QLoRA r=8 (NF4 base)"}
TASK = "bigbench:social_iqa"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out-dir", default="out/sft_trl")
    ap.add_argument("--methods", default=",".join(GRID))
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--val-examples", type=int, default=128)
    ap.add_argument("--test-examples", type=int, default=195)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "LR"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------------------------- data
def conversations(split, n: int | None = None):
    """social_iqa rows as conversational prompt/completion examples, with the options shown in the prompt."""
    from datasets import Dataset

    rows = split if n is None else split.select(range(min(n, len(split))))
    out = {"prompt": [], "completion": [], "choices": [], "label": []}
    for r in rows:
        options = "\n".join(f"- {c}" for c in r["choices"])
        out["prompt"].append([{"role": "user", "content": f"{r['text']}\nOptions:\n{options}\nAnswer with one option."}])
        out["completion"].append([{"role": "assistant", "content": r["choices"][r["label"]]}])
        out["choices"].append(list(r["choices"]))
        out["label"].append(int(r["label"]))
    return Dataset.from_dict(out)


def _ids(tok, messages, **kw) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


# ------------------------------------------------------------------------------------------------- evaluation
def loglik_correct(model, tok, data, batch_size: int = 16) -> list[bool]:
    """Per example: is the gold option the likeliest assistant answer (sum of its completion tokens' log-probs)?"""
    import torch

    from zest_hf.modeling import device_of
    from zest_hf.tasks.user import _common_prefix

    seqs, owner = [], []
    for i, r in enumerate(data):
        p = _ids(tok, r["prompt"], add_generation_prompt=True)
        for c in r["choices"]:
            full = _ids(tok, r["prompt"] + [{"role": "assistant", "content": c}])
            seqs.append((full, _common_prefix(p, full)))
            owner.append(i)
    scores = []
    model.eval()
    dev = device_of(model)
    with torch.no_grad():
        for b in range(0, len(seqs), batch_size):
            chunk = seqs[b:b + batch_size]
            width = max(len(s) for s, _ in chunk)
            ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
            att = torch.zeros_like(ids)
            for j, (s, _) in enumerate(chunk):
                ids[j, :len(s)] = torch.tensor(s)
                att[j, :len(s)] = 1
            logp = torch.log_softmax(model(input_ids=ids.to(dev), attention_mask=att.to(dev)).logits.float(), -1)
            for j, (s, start) in enumerate(chunk):
                tgt = torch.tensor(s[start:], device=dev)
                scores.append(logp[j, start - 1:len(s) - 1].gather(-1, tgt[:, None]).sum().item())
    best = {}
    for i, sc, k in zip(owner, scores, range(len(scores))):
        best.setdefault(i, []).append(sc)
    return [max(range(len(best[i])), key=best[i].__getitem__) == data[i]["label"] for i in range(len(data))]


def generation_correct(model, tok, data, max_new_tokens: int = 24) -> list[bool]:
    """Per example: does greedy decoding give exactly the gold option's text?"""
    import torch

    from zest_hf.modeling import device_of

    model.eval()
    out = []
    with torch.no_grad():
        for r in data:
            p = torch.tensor([_ids(tok, r["prompt"], add_generation_prompt=True)], device=device_of(model))
            gen = model.generate(input_ids=p, attention_mask=torch.ones_like(p), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
            text = tok.decode(gen[0, p.shape[1]:], skip_special_tokens=True).strip()
            out.append(text.lower() == r["choices"][r["label"]].strip().lower())
    return out


# ----------------------------------------------------------------------------------------------------- one run
def run_one(method: str, lr: float, args) -> dict:
    import peft
    import torch
    import transformers
    import trl

    import zest_hf
    from zest_hf.models import load_model
    from zest_hf.tasks import load_task

    transformers.set_seed(args.seed)
    task = load_task(TASK, split_seed=0)
    train = conversations(task.splits["train"].shuffle(seed=args.seed), args.max_steps * args.batch_size)
    val = conversations(task.splits["validation"], args.val_examples)
    test = conversations(task.splits["test"], args.test_examples)
    quant = {}
    if method in QUANTIZED:
        # bf16 compute where bitsandbytes has its GPU kernels; fp32 on a CPU, like the other methods there
        compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        quant = dict(quantization_config=transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute),
            device_map="auto" if torch.cuda.is_available() else "cpu")
    model, tok = load_model("smollm2", "causal_lm", **quant)
    sft = trl.SFTConfig(output_dir=str(Path(args.out_dir) / "trainer"), max_steps=args.max_steps,
                        per_device_train_batch_size=args.batch_size, learning_rate=lr, lr_scheduler_type="constant",
                        weight_decay=0.0, max_length=args.max_length, seed=args.seed, data_seed=args.seed,
                        save_strategy="no", logging_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                        gradient_checkpointing=False, dataloader_num_workers=0, disable_tqdm=True)
    peft_config = cfg = None
    if method in ("lora_all", "qlora_all"):
        peft_config = peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    elif method == "zest_qlora":
        # A Trainer refuses a purely quantised model, so the selection comes first, from one batch built as
        # SFTTrainer builds its own (completion tokens only), and the resolved config is the adapter to attach.
        from zest_hf.tasks.user import sft_batch

        batch = sft_batch(train, tok, shape="prompt_completion",
                          columns={"prompt": "prompt", "completion": "completion"},
                          batch_size=args.batch_size, max_length=args.max_length, seed=args.seed)
        cfg = peft_config = zest_hf.select(model, batch, zest_hf.ZestConfig(
            top_k=args.top_k, mode="lora", r=8, lora_alpha=16, probe_seed=args.seed, modules_to_save=[]))
    trainer = trl.SFTTrainer(model=model, args=sft, train_dataset=train, processing_class=tok,
                             peft_config=peft_config)
    if method in ("zest", "zest_lora"):
        cfg = zest_hf.prepare_trainer(trainer, zest_hf.ZestConfig(
            top_k=args.top_k, mode="full" if method == "zest" else "lora", r=8, lora_alpha=16,
            probe_seed=args.seed, modules_to_save=[]))
    times = []

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    trainer.add_callback(Clock())
    trainer.train()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB (Linux)
    m = trainer.model
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    # a 4-bit weight stores two values per byte: count the values it holds, as for the full-precision models
    total = sum(p.quant_state.shape.numel() if hasattr(p, "quant_state") else p.numel()
                for n, p in m.named_parameters() if "lora_" not in n)
    return {"method": method, "lr": lr, "seed": args.seed, "steps": args.max_steps, "batch_size": args.batch_size,
            "max_length": args.max_length, "task": TASK, "trainable": trainable, "total_params": total,
            "step_s": statistics.median(times[1:] or times), "peak_rss_gb": peak_gb,
            "selected": cfg.selected_modules if cfg is not None else None,
            "val_loglik": loglik_correct(m, tok, val), "test_loglik": loglik_correct(m, tok, test),
            "test_generation": generation_correct(m, tok, test)}


# ------------------------------------------------------------------------------------------------------ report
def _mean(xs):
    return sum(xs) / len(xs)


def _paired_ci(a, b, seed: int = 0, n: int = 10_000):
    """Mean of a - b (per example, same examples) and its 95% bootstrap interval, in points."""
    import numpy as np

    d = np.asarray(a, float) - np.asarray(b, float)
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    return 100 * d.mean(), 100 * np.percentile(boot, 2.5), 100 * np.percentile(boot, 97.5)


def report(out_dir: Path) -> str:
    rows = [json.loads(line) for line in (out_dir / "runs.jsonl").read_text().splitlines() if line.strip()]
    chosen = {}
    for r in rows:  # the rate with the best validation accuracy (a tie takes the smaller rate)
        best = chosen.get(r["method"])
        key = (_mean(r["val_loglik"]), -r["lr"])
        if best is None or key > (_mean(best["val_loglik"]), -best["lr"]):
            chosen[r["method"]] = r
    full = chosen.get("full")
    lines = [f"# SFT with TRL on {TASK} (SmolLM2-135M-Instruct), seed {rows[0]['seed']}", "",
             f"`python examples/sft_trl.py`: {rows[0]['steps']} steps x batch {rows[0]['batch_size']}, max length "
             f"{rows[0]['max_length']}, constant learning rate chosen on {len(rows[0]['val_loglik'])} validation "
             f"examples from each method's grid; test: {len(rows[0]['test_loglik'])} examples. One fresh process per "
             "run; step time is the median step, peak memory the process's peak RSS during training (weights and "
             "libraries included).", "",
             "| method | lr (grid) | val acc % | test acc %, log-likelihood | test exact match %, generation | "
             "trainable | step s | vs full FT | peak RSS GB | vs full FT |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in GRID:
        r = chosen.get(m)
        if r is None:
            continue
        grid = ", ".join(f"{x:g}" for x in GRID[m])
        ratio_t = f"{r['step_s'] / full['step_s']:.2f}x" if full else "-"
        ratio_m = f"{r['peak_rss_gb'] / full['peak_rss_gb']:.2f}x" if full else "-"
        lines.append(f"| {LABELS[m]} | {r['lr']:g} ({grid}) | {100 * _mean(r['val_loglik']):.1f} | "
                     f"{100 * _mean(r['test_loglik']):.1f} | {100 * _mean(r['test_generation']):.1f} | "
                     f"{r['trainable']:,} ({100 * r['trainable'] / r['total_params']:.2f}%) | {r['step_s']:.2f} | "
                     f"{ratio_t} | {r['peak_rss_gb']:.2f} | {ratio_m} |")
    lines += ["", "Paired differences on the same test examples (points, 95% bootstrap interval over examples):", ""]
    for a, b in (("zest", "lora_all"), ("zest", "full"), ("zest_lora", "lora_all"), ("zest_qlora", "qlora_all"),
                 ("qlora_all", "lora_all")):
        if a in chosen and b in chosen:
            for metric in ("test_loglik", "test_generation"):
                d, lo, hi = _paired_ci(chosen[a][metric], chosen[b][metric])
                lines.append(f"- {LABELS[a]} - {LABELS[b]}, {metric.split('_')[1]}: {d:+.1f} [{lo:+.1f}, {hi:+.1f}]")
    for m in ("zest", "zest_qlora"):
        if m in chosen and chosen[m]["selected"]:
            lines += ["", f"{LABELS[m]}'s selection: {', '.join(chosen[m]['selected'])}"]
    lines += ["", "Every run (validation accuracy % by learning rate):", ""]
    for m in GRID:
        runs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["lr"])
        if runs:
            lines.append(f"- {LABELS[m]}: " + ", ".join(f"{r['lr']:g} -> {100 * _mean(r['val_loglik']):.1f}"
                                                        for r in runs))
    text = "\n".join(lines) + "\n"
    (out_dir / "table.md").write_text(text)
    return text


def grid_order(methods: list[str], done: set) -> list[tuple[str, float]]:
    """The (method, rate) runs still to do: every method at its first rate before any at its second, so that a grid
    stopped half way still leaves every method a run to compare."""
    unknown = [m for m in methods if m not in GRID]
    if unknown:
        raise SystemExit(f"unknown --methods {unknown}; choose from {', '.join(GRID)}")
    return [(m, GRID[m][i]) for i in range(max(len(GRID[m]) for m in methods)) for m in methods
            if i < len(GRID[m]) and (m, GRID[m][i]) not in done]


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one[0], float(args.one[1]), args)), flush=True)
        return 0
    if not args.report:
        path = out / "runs.jsonl"
        done = {(r["method"], r["lr"]) for r in map(json.loads, path.read_text().splitlines())} if path.exists() else set()
        todo = grid_order(args.methods.split(","), done)
        for i, (m, lr) in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {LABELS[m]}, lr {lr:g}", flush=True)
            cmd = [sys.executable, __file__, "--one", m, str(lr)] + [a for a in (argv or sys.argv[1:])]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            with path.open("a") as fh:
                fh.write(line[len("RESULT "):] + "\n")
    print(report(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

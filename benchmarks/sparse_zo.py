"""Sparse zeroth-order fine-tuning over a 4-bit model against first-order and dense zeroth-order fine-tuning.

SmolLM2-135M on a multiple-choice task (scored by log-likelihood of each choice, trained on the LM loss of the gold
answer), two phases, each resumable from what it wrote to ``--out-dir``:

``cost``
    One fresh process per method, all on the same fixed batch (``--batch-size`` x ``--max-length`` tokens, every
    sequence padded to full length), ``--threads`` threads: median step time over ``--repeats`` steps after a
    warm-up, and the resident-memory high-water mark during the steps (reset after set-up), also as "above the
    interpreter" (minus the RSS before the model was loaded). Methods:
    ``inference_fp32`` / ``inference_4bit`` (one no-grad forward: the model's own inference peak), ``fo_full``
    (AdamW on all weights), ``fo_zest5`` (AdamW on ZEST's top-5 projections + nothing else: a causal LM has no new
    head), ``zo_dense`` (MeZO on all weights, fp32, arithmetic restore) and ``zo_sparse_4bit`` (the sensitive 0.1 %
    in fp32 over NF4 weights). The mask is computed once beforehand (``mask`` row: its own time and peak).

``accuracy``
    Same wall-clock budget (``--budget-s``) for dense ZO and sparse ZO, learning rate chosen per method from a
    two-point grid by validation loss after ``--grid-s`` seconds (seed 0); then test accuracy of: no training (fp32
    and 4 bit), dense ZO at the end of its budget, sparse ZO at the same number of steps as dense ZO reached, and
    sparse ZO at the end of its budget.

Writes ``cost.jsonl``, ``accuracy.jsonl`` and ``sparse_zo.md`` (both tables, with the command, seeds and threads).

    python benchmarks/sparse_zo.py                          # both phases, then the report (~1 h on 2 cores)
    python benchmarks/sparse_zo.py --phase cost             # one phase
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import reset_peak, rss_kb, run_worker, time_and_peak  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "sparse_zo"
METHODS = ["inference_fp32", "inference_4bit", "fo_full", "fo_zest5", "zo_dense", "zo_sparse_4bit"]
GRIDS = {"zo_dense": (1e-6, 1e-5), "zo_sparse_4bit": (1e-4, 1e-3)}
EPS = 1e-3
PERCENT = 0.1


def read_jsonl(path: Path) -> list[dict]:
    from zest_hf.contrib import read_jsonl as _read

    return _read(path)


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def trim() -> None:
    """Return freed heap pages to the OS, so the next RSS reading shows what is held, not what was once held."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def setup(args):
    """Model, tokenizer, task and its tokenised splits (causal LM: prompt + gold answer, loss on the answer)."""
    import torch
    import transformers

    from zest_hf.models import load_model
    from zest_hf.tasks import collator_for, load_task, prepare_tokenizer, tokenize_split

    transformers.set_seed(0)
    model, tok = load_model("smollm2", "causal_lm")
    # safetensors loads by memory-mapping the file: pages count in RSS only once touched, and the whole file stays
    # mapped while any tensor of it lives. Copy every weight into ordinary memory (as moving to a GPU would), so
    # that every method's "held" and peak memory are what it really keeps, not what it happened to page in.
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    trim()
    prepare_tokenizer(tok, model)
    model.eval()  # no dropout in SmolLM2; eval also keeps the two ZO passes the same function
    task = load_task(args.task)
    collate = collator_for("causal_lm", tok)
    train = tokenize_split(task.splits["train"], tok, model_kind="causal_lm", max_length=args.max_length)
    return model, tok, task, train, collate


def fixed_batch(train, collate, tok, args) -> dict:
    import torch

    rows = [train[i] for i in range(args.batch_size)]
    batch = collate(rows)
    pad = args.max_length - batch["input_ids"].shape[1]
    if pad > 0:  # every method sees exactly batch x max_length tokens
        batch["input_ids"] = torch.nn.functional.pad(batch["input_ids"], (0, pad), value=tok.pad_token_id or 0)
        batch["attention_mask"] = torch.nn.functional.pad(batch["attention_mask"], (0, pad), value=0)
        batch["labels"] = torch.nn.functional.pad(batch["labels"], (0, pad), value=-100)
    return dict(batch)


def mask_path(args) -> Path:
    return Path(args.out_dir) / "sensitive_mask.safetensors"


def loader(train, collate, args, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    while True:  # endless, seeded reshuffles
        yield from torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True, generator=g,
                                               collate_fn=collate)


def compute_mask(model, train, collate, args):
    from zest_hf.sparse_zo import sensitive_mask

    it = loader(train, collate, args, seed=1234)  # mask batches: not the training order of any run
    return sensitive_mask(model, (next(it) for _ in range(4)), percent=PERCENT, progress=True)


# ---------------------------------------------------------------------------------------------------- cost
def cost_worker(method: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    base0 = rss_kb("VmRSS")
    model, tok, task, train, collate = setup(args)
    batch = fixed_batch(train, collate, tok, args)
    extra = {}
    if method == "mask":
        trim()
        reset_peak()
        t0 = time.perf_counter()
        mask = compute_mask(model, train, collate, args)
        res = {"time_s": time.perf_counter() - t0, "peak_rss_mb": rss_kb("VmHWM") / 1024,
               "threads": torch.get_num_threads()}
        mask.save(mask_path(args))
        extra = {"trainable": mask.num_selected, "candidate_coordinates": mask.info["candidate_coordinates"]}
    else:
        if method in ("inference_4bit", "zo_sparse_4bit"):
            from zest_hf.sparse_zo import SensitiveMask, attach_sparse

            attach_sparse(model, SensitiveMask.load(mask_path(args)), quantize="nf4")
        if method.startswith("inference"):
            def step():
                with torch.no_grad():
                    model(**batch)
        elif method.startswith("fo_"):
            if method == "fo_zest5":
                import peft

                import zest_hf

                cfg = zest_hf.select(model, batch, zest_hf.ZestConfig(top_k=5, mode="full", probe_seed=0))
                model = peft.get_peft_model(model, cfg)
                extra["selected"] = cfg.selected_modules
            model.train()
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.0)

            def step():
                model(**batch).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        else:
            from zest_hf.sparse_zo import tunable_values, zo_step

            dense = method == "zo_dense"
            params = list(model.parameters()) if dense else tunable_values(model)
            counter = iter(range(10**9))

            def step():
                with torch.no_grad():
                    zo_step(lambda: model(**batch).loss, params, lr=1e-6 if dense else 1e-4, eps=EPS,
                            seed=next(counter), restore="mezo" if dense else "copy")
        trim()
        extra["held_mb"] = (rss_kb("VmRSS") - base0) / 1024  # weights + state held before the steps
        res = time_and_peak(step, args.repeats)
        extra["trainable"] = (sum(p.numel() for p in model.parameters()) if method == "zo_dense" else
                              sum(p.numel() for p in model.parameters() if p.requires_grad) if method.startswith("fo_")
                              else sum(v.numel() for v in tunable_values(model)) if method == "zo_sparse_4bit" else 0)
    res.update(extra, method=method, interpreter_mb=base0 / 1024, peak_above_interpreter_mb=res["peak_rss_mb"] - base0 / 1024,
               batch=[args.batch_size, args.max_length], task=args.task)
    return res


def cost_phase(args) -> None:
    from tqdm.auto import tqdm

    path = Path(args.out_dir) / "cost.jsonl"
    done = {r["method"] for r in read_jsonl(path)}
    jobs = [m for m in ["mask"] + METHODS if m not in done]
    for method in tqdm(jobs, desc="step cost", unit="method"):
        res = run_worker([__file__, "--cost-worker", method] + common_flags(args))
        append(path, res)


# ------------------------------------------------------------------------------------------------ accuracy
def val_loss(model, val_batches) -> float:
    import torch

    with torch.no_grad():
        return float(sum(model(**b).loss.item() for b in val_batches) / len(val_batches))


def train_zo(model, params, train, collate, args, *, lr: float, seconds: float, dense: bool, snapshot_at=None):
    """ZO steps for ``seconds`` of wall clock; returns steps done and (if asked) a copy of the tuned values when
    ``snapshot_at`` steps were reached."""
    from tqdm.auto import tqdm

    from zest_hf.sparse_zo import step_seed, zo_step

    it = loader(train, collate, args, seed=0)
    start, steps, snap = time.perf_counter(), 0, None
    bar = tqdm(total=int(seconds), desc=f"{'dense' if dense else 'sparse'} ZO lr {lr:g}", unit="s")
    while time.perf_counter() - start < seconds:
        batch = next(it)
        zo_step(lambda: model(**batch).loss, params, lr=lr, eps=EPS, seed=step_seed(0, steps),
                restore="mezo" if dense else "copy")
        steps += 1
        if snapshot_at is not None and steps == snapshot_at:
            snap = [p.detach().clone() for p in params]
        bar.n = min(int(time.perf_counter() - start), int(seconds))
        bar.set_postfix(steps=steps)
        bar.refresh()
    bar.close()
    return steps, snap


def accuracy_phase(args) -> None:
    import torch

    from zest_hf.sparse_zo import SensitiveMask, attach_sparse, tunable_values
    from zest_hf.tasks import score_choices, tokenize_split

    torch.set_num_threads(args.threads)
    path = Path(args.out_dir) / "accuracy.jsonl"
    rows = read_jsonl(path)
    have = {r["row"] for r in rows}

    def fresh(quantized: bool):
        model, tok, task, train, collate = setup(args)
        if quantized:
            if not mask_path(args).exists():
                append(Path(args.out_dir) / "mask_info.jsonl", {"made_by": "accuracy phase"})
                compute_mask(model, train, collate, args).save(mask_path(args))
            attach_sparse(model, SensitiveMask.load(mask_path(args)), quantize="nf4")
        return model, tok, task, train, collate

    def test_acc(model, tok, task) -> float:
        test = task.splits["test"].select(range(min(args.eval_examples, len(task.splits["test"]))))
        return score_choices(model, tok, test, max_length=args.max_length, batch_size=64)["accuracy"]

    model, tok, task, train, collate = fresh(False)
    val = tokenize_split(task.splits["validation"].select(range(min(64, len(task.splits["validation"])))), tok,
                         model_kind="causal_lm", max_length=args.max_length)
    val_batches = [collate([val[j] for j in range(i, min(i + 16, len(val)))]) for i in range(0, len(val), 16)]
    if "no_training_fp32" not in have:
        append(path, {"row": "no_training_fp32", "test_acc": test_acc(model, tok, task), "steps": 0})
    del model
    trim()

    for method in ("zo_dense", "zo_sparse_4bit"):
        dense = method == "zo_dense"
        if not dense and "no_training_4bit" not in have:
            model, tok, task, train, collate = fresh(True)
            append(path, {"row": "no_training_4bit", "test_acc": test_acc(model, tok, task), "steps": 0,
                          "val_loss": val_loss(model, val_batches)})
        for lr in GRIDS[method]:
            key = f"grid {method} lr={lr:g}"
            if key in have:
                continue
            model, tok, task, train, collate = fresh(not dense)
            params = list(model.parameters()) if dense else tunable_values(model)
            steps, _ = train_zo(model, params, train, collate, args, lr=lr, seconds=args.grid_s, dense=dense)
            append(path, {"row": key, "method": method, "lr": lr, "steps": steps, "seconds": args.grid_s,
                          "val_loss": val_loss(model, val_batches)})
            del model, params
            trim()
    rows = read_jsonl(path)
    have = {r["row"] for r in rows}

    def best(method):
        grid = [r for r in rows if r.get("method") == method and r["row"].startswith("grid")]
        return min(grid, key=lambda r: r["val_loss"])["lr"]

    if "zo_dense" not in have:
        lr = best("zo_dense")
        model, tok, task, train, collate = fresh(False)
        steps, _ = train_zo(model, list(model.parameters()), train, collate, args, lr=lr, seconds=args.budget_s,
                            dense=True)
        append(path, {"row": "zo_dense", "lr": lr, "steps": steps, "seconds": args.budget_s,
                      "val_loss": val_loss(model, val_batches), "test_acc": test_acc(model, tok, task)})
        del model
        trim()
        rows = read_jsonl(path)
    n_dense = next(r["steps"] for r in rows if r["row"] == "zo_dense")
    if "zo_sparse_4bit" not in have:
        lr = best("zo_sparse_4bit")
        model, tok, task, train, collate = fresh(True)
        params = tunable_values(model)
        steps, snap = train_zo(model, params, train, collate, args, lr=lr, seconds=args.budget_s, dense=False,
                               snapshot_at=n_dense)
        end = {"row": "zo_sparse_4bit", "lr": lr, "steps": steps, "seconds": args.budget_s,
               "val_loss": val_loss(model, val_batches), "test_acc": test_acc(model, tok, task)}
        if snap is not None:
            with torch.no_grad():
                for p, s in zip(params, snap):
                    p.copy_(s)
            append(path, {"row": "zo_sparse_4bit_equal_steps", "lr": lr, "steps": n_dense,
                          "val_loss": val_loss(model, val_batches), "test_acc": test_acc(model, tok, task)})
        append(path, end)


# -------------------------------------------------------------------------------------------------- report
def report(args) -> str:
    out = Path(args.out_dir)
    cost = {r["method"]: r for r in read_jsonl(out / "cost.jsonl")}
    acc = {r["row"]: r for r in read_jsonl(out / "accuracy.jsonl")}
    lines = [f"# Sparse zeroth-order fine-tuning over 4-bit SmolLM2-135M ({args.task})", "",
             f"`python benchmarks/sparse_zo.py --task {args.task} --threads {args.threads}`; batch {args.batch_size} x "
             f"{args.max_length} tokens; sensitive coordinates {PERCENT} % (mask from 4 training batches, seed 1234); "
             f"eps {EPS}; ZO seeds step_seed(0, t); data order seed 0.", ""]
    if cost:
        ref = cost.get("fo_full")
        inf4 = cost.get("inference_4bit")
        lines += ["## Step time and peak memory (one fresh process per method, same batch)", "",
                  "| method | trainable | step time (s) | x full FT | peak RSS (MB) | peak above interpreter (MB) | "
                  "x 4-bit inference peak | held before steps (MB) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for m in ["mask"] + METHODS:
            r = cost.get(m)
            if r is None:
                continue
            tx = f"{r['time_s'] / ref['time_s']:.2f}" if ref else "-"
            mx = f"{r['peak_above_interpreter_mb'] / inf4['peak_above_interpreter_mb']:.2f}" if inf4 else "-"
            lines.append(f"| {m} | {r.get('trainable', 0):,} | {r['time_s']:.3f} | {tx} | "
                         f"{r['peak_rss_mb']:.0f} | {r['peak_above_interpreter_mb']:.0f} | {mx} | "
                         f"{r.get('held_mb', 0):.0f} |")
        lines += ["", f"Threads per process: {next(iter(cost.values()))['threads']}. `mask` is the one-time "
                  "computation of the sensitive mask (full-precision forward + backward on 4 batches, summed squared "
                  "gradients), before quantisation.", ""]
    if acc:
        lines += ["## Test accuracy (log-likelihood of each choice)", "",
                  "| run | lr | steps | val loss | test accuracy |", "| --- | ---: | ---: | ---: | ---: |"]
        for key in ["no_training_fp32", "no_training_4bit"] + sorted(k for k in acc if k.startswith("grid")) + [
                "zo_dense", "zo_sparse_4bit_equal_steps", "zo_sparse_4bit"]:
            r = acc.get(key)
            if r is None:
                continue
            vl = f"{r['val_loss']:.4f}" if "val_loss" in r else "-"
            ta = f"{r['test_acc']:.4f}" if "test_acc" in r else "-"
            lines.append(f"| {key} | {r.get('lr', '-')} | {r.get('steps', '-')} | {vl} | {ta} |")
        lines += ["", f"Same wall-clock budget ({args.budget_s:.0f} s) for dense and sparse ZO; learning rates from the "
                  f"grid rows ({args.grid_s:.0f} s each, lowest validation loss on 64 validation examples); test on the "
                  f"first {args.eval_examples} test examples.", ""]
    text = "\n".join(lines)
    (out / "sparse_zo.md").write_text(text)
    return text


def common_flags(args) -> list[str]:
    return ["--task", args.task, "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
            "--threads", str(args.threads), "--repeats", str(args.repeats), "--out-dir", str(args.out_dir)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", default="all", choices=["all", "cost", "accuracy", "report"])
    ap.add_argument("--task", default="bigbench:goal_step_wikihow/step_inference")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=600.0, help="wall-clock training budget per ZO method")
    ap.add_argument("--grid-s", type=float, default=120.0, help="wall clock of each learning-rate grid run")
    ap.add_argument("--eval-examples", type=int, default=300)
    ap.add_argument("--out-dir", default=str(OUT))
    ap.add_argument("--cost-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cost_worker:
        print("RESULT " + json.dumps(cost_worker(args.cost_worker, args)))
        return 0
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    if args.phase in ("all", "cost"):
        cost_phase(args)
    if args.phase in ("all", "accuracy"):
        accuracy_phase(args)
    print(report(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

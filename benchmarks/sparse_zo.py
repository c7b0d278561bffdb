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

``accuracy --steps N`` (equal steps; the comparison the target is stated in)
    Dense ZO and sparse ZO each train exactly ``N`` steps, learning rate chosen per method from a two-point grid by
    validation loss after ``--grid-steps`` steps. Counting steps instead of seconds makes the comparison immune to
    whatever else the machine runs, and lets a run span sessions: every ``--eval-every`` steps the tuned values and
    the step are checkpointed under ``ckpt/`` (not committed) and the validation loss is appended to ``curve.jsonl``,
    so a killed run resumes where it stopped, on exactly the batches and perturbation seeds the uninterrupted run
    would have used (step ``t`` uses the batch of ``batch_at(t)`` and the seed ``step_seed(0, t)``). Training
    seconds are recorded too, and the curves are drawn both per step and per second (``curves.png``).

Writes ``cost.jsonl``, ``accuracy.jsonl`` and ``sparse_zo.md`` (both tables, with the command, seeds and threads).

    python benchmarks/sparse_zo.py                          # both phases, then the report (~1 h on 2 cores)
    python benchmarks/sparse_zo.py --phase cost             # one phase
    python benchmarks/sparse_zo.py --phase accuracy --steps 300 --batch-size 8 --threads 1 \
        --out-dir benchmarks/results/sparse_zo_steps        # equal steps, resumable (hours on one core)
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
# The step-counted grids move one point up from the wall-clock grids above, whose results (benchmarks/results/
# sparse_zo/accuracy.jsonl: dense 1e-5 beat 1e-6; sparse 1e-3 diverged, 1e-4 improved) left open only whether a
# larger rate than the winner does better still.
STEP_GRIDS = {"zo_dense": (1e-5, 3e-5), "zo_sparse_4bit": (1e-4, 3e-4)}
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


# ----------------------------------------------------------------------------------- accuracy, equal steps
def batch_at(train, collate, args, step: int, seed: int = 0) -> dict:
    """The batch of step ``step``: epoch ``e`` is a fresh permutation seeded by (seed, e), so a resumed run sees the
    batches the uninterrupted run would have (a ``DataLoader`` iterator cannot be fast-forwarded cheaply)."""
    import torch

    per_epoch = len(train) // args.batch_size  # the last incomplete batch of an epoch is dropped
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return collate([train[i] for i in perm[k * args.batch_size:(k + 1) * args.batch_size].tolist()])


def _ckpt(args, run: str) -> tuple[Path, Path]:
    d = Path(args.out_dir) / "ckpt"
    slug = run.replace(" ", "_").replace("=", "")
    return d / f"{slug}.safetensors", d / f"{slug}.json"


def save_ckpt(args, run: str, params, step: int, seconds: float) -> None:
    """Tuned values, then the step they belong to (each written to a temporary file and renamed, the step last, so
    a kill at any point leaves the previous checkpoint or the new one, never a mix)."""
    import os

    from safetensors.torch import save_file

    tensors, meta = _ckpt(args, run)
    tensors.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"p{i}": p.detach().contiguous() for i, p in enumerate(params)}, str(tensors) + ".tmp")
    os.replace(str(tensors) + ".tmp", tensors)
    Path(str(meta) + ".tmp").write_text(json.dumps({"step": step, "seconds": seconds, "n": len(params)}))
    os.replace(str(meta) + ".tmp", meta)


def load_ckpt(args, run: str, params) -> tuple[int, float]:
    """Restore the tuned values of ``run`` in place; returns (step, training seconds so far), (0, 0.0) if none."""
    import torch
    from safetensors.torch import load_file

    tensors, meta = _ckpt(args, run)
    if not meta.exists():
        return 0, 0.0
    info = json.loads(meta.read_text())
    saved = load_file(str(tensors))
    if info["n"] != len(params) or any(saved[f"p{i}"].shape != p.shape for i, p in enumerate(params)):
        raise SystemExit(f"checkpoint {tensors} does not match the model being trained (other --batch-size, mask or "
                         f"task?): delete {tensors.parent} or use another --out-dir")
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(saved[f"p{i}"])
    return int(info["step"]), float(info["seconds"])


def train_zo_steps(model, params, train, collate, args, *, run: str, lr: float, steps: int, dense: bool,
                   val_batches, curve: Path | None) -> float:
    """``steps`` ZO steps of ``run``, resumed from its checkpoint; returns the training seconds (steps only, not
    the validation passes). With ``curve``, the validation loss every ``--eval-every`` steps (and at step 0)."""
    from tqdm.auto import tqdm

    from zest_hf.sparse_zo import step_seed, zo_step

    start, seconds = load_ckpt(args, run, params)
    logged = {r["step"] for r in read_jsonl(curve) if r["run"] == run} if curve else set()
    if curve is not None and start not in logged:  # step 0, or a kill between checkpoint and curve row
        append(curve, {"run": run, "lr": lr, "step": start, "seconds": seconds, "val_loss": val_loss(model, val_batches)})
    bar = tqdm(total=steps, initial=start, desc=run, unit="step")
    for t in range(start, steps):
        batch = batch_at(train, collate, args, t)
        t0 = time.perf_counter()
        zo_step(lambda: model(**batch).loss, params, lr=lr, eps=EPS, seed=step_seed(0, t),
                restore="mezo" if dense else "copy")
        seconds += time.perf_counter() - t0
        bar.update(1)
        done = t + 1
        if done % args.eval_every == 0 or done == steps:
            save_ckpt(args, run, params, done, seconds)
            if curve is not None:
                append(curve, {"run": run, "lr": lr, "step": done, "seconds": seconds,
                               "val_loss": val_loss(model, val_batches)})
    bar.close()
    return seconds


def steps_phase(args) -> None:
    """Dense ZO and sparse ZO over 4 bit at equal steps (see the module docstring); resumable at every level."""
    import torch

    from zest_hf.sparse_zo import SensitiveMask, attach_sparse, tunable_values
    from zest_hf.tasks import score_choices, tokenize_split

    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    path, curve = out / "accuracy.jsonl", out / "curve.jsonl"
    have = {r["row"] for r in read_jsonl(path)}

    def fresh(quantized: bool):
        model, tok, task, train, collate = setup(args)
        if quantized:
            if not mask_path(args).exists():
                compute_mask(model, train, collate, args).save(mask_path(args))
            attach_sparse(model, SensitiveMask.load(mask_path(args)), quantize="nf4")
        val = tokenize_split(task.splits["validation"].select(range(min(64, len(task.splits["validation"])))), tok,
                             model_kind="causal_lm", max_length=args.max_length)
        vb = [collate([val[j] for j in range(i, min(i + 16, len(val)))]) for i in range(0, len(val), 16)]
        return model, tok, task, train, collate, vb

    def test_acc(model, tok, task) -> float:
        test = task.splits["test"].select(range(min(args.eval_examples, len(task.splits["test"]))))
        return score_choices(model, tok, test, max_length=args.max_length, batch_size=64)["accuracy"]

    for quantized, row in ((False, "no_training_fp32"), (True, "no_training_4bit")):
        if row not in have:
            model, tok, task, train, collate, vb = fresh(quantized)
            append(path, {"row": row, "steps": 0, "val_loss": val_loss(model, vb), "test_acc": test_acc(model, tok, task)})
            del model
            trim()

    def params_of(model, dense):
        return list(model.parameters()) if dense else tunable_values(model)

    for method, grid in STEP_GRIDS.items():
        dense = method == "zo_dense"
        for lr in grid:
            key = f"grid{args.grid_steps} {method} lr={lr:g}"
            if key in have:
                continue
            model, tok, task, train, collate, vb = fresh(not dense)
            params = params_of(model, dense)
            secs = train_zo_steps(model, params, train, collate, args, run=key, lr=lr, steps=args.grid_steps,
                                  dense=dense, val_batches=vb, curve=None)
            append(path, {"row": key, "method": method, "lr": lr, "steps": args.grid_steps, "seconds": secs,
                          "val_loss": val_loss(model, vb)})
            del model, params
            trim()

    rows = read_jsonl(path)
    for method, grid in STEP_GRIDS.items():
        key = f"{method} {args.steps} steps"
        if key in {r["row"] for r in rows}:
            continue
        dense = method == "zo_dense"
        tried = [r for r in rows if r["row"] in {f"grid{args.grid_steps} {method} lr={lr:g}" for lr in grid}]
        lr = min(tried, key=lambda r: r["val_loss"])["lr"]
        model, tok, task, train, collate, vb = fresh(not dense)
        params = params_of(model, dense)
        # The checkpoint and curve are named by method and rate, not by the step count: a later, longer --steps
        # continues this run instead of starting over.
        secs = train_zo_steps(model, params, train, collate, args, run=f"{method} lr={lr:g}", lr=lr, steps=args.steps,
                              dense=dense, val_batches=vb, curve=curve)
        append(path, {"row": key, "method": method, "lr": lr, "steps": args.steps, "seconds": secs,
                      "trainable": sum(p.numel() for p in params), "val_loss": val_loss(model, vb),
                      "test_acc": test_acc(model, tok, task)})
        del model, params
        trim()
        rows = read_jsonl(path)


def plot_curves(out: Path) -> Path | None:
    """Validation loss per step and per training second, one line per run (``curves.png``)."""
    rows = read_jsonl(out / "curve.jsonl")
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in sorted({r["run"] for r in rows}):
        pts = sorted((r for r in rows if r["run"] == run), key=lambda r: r["step"])
        label = run
        axes[0].plot([r["step"] for r in pts], [r["val_loss"] for r in pts], marker=".", label=label)
        axes[1].plot([r["seconds"] / 60 for r in pts], [r["val_loss"] for r in pts], marker=".", label=label)
    axes[0].set_xlabel("ZO step")
    axes[1].set_xlabel("training minutes (steps only)")
    for ax in axes:
        ax.set_ylabel("validation loss (64 examples)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Sparse ZO (0.1 %, NF4) vs dense MeZO on SmolLM2-135M")
    fig.tight_layout()
    png = out / "curves.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


# -------------------------------------------------------------------------------------------------- report
def report(args) -> str:
    out = Path(args.out_dir)
    cost = {r["method"]: r for r in read_jsonl(out / "cost.jsonl")}
    acc = {r["row"]: r for r in read_jsonl(out / "accuracy.jsonl")}
    step_flags = ""
    if args.steps:
        step_flags = (f" --phase accuracy --steps {args.steps} --grid-steps {args.grid_steps} --eval-every "
                      f"{args.eval_every} --batch-size {args.batch_size} --max-length {args.max_length} --out-dir "
                      f"{out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    lines = [f"# Sparse zeroth-order fine-tuning over 4-bit SmolLM2-135M ({args.task})", "",
             f"`python benchmarks/sparse_zo.py --task {args.task} --threads {args.threads}{step_flags}`; batch "
             f"{args.batch_size} x "
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
                "zo_dense", "zo_sparse_4bit_equal_steps", "zo_sparse_4bit"] + sorted(
                k for k in acc if k.endswith(" steps")):
            r = acc.get(key)
            if r is None:
                continue
            vl = f"{r['val_loss']:.4f}" if "val_loss" in r else "-"
            ta = f"{r['test_acc']:.4f}" if "test_acc" in r else "-"
            lines.append(f"| {key} | {r.get('lr', '-')} | {r.get('steps', '-')} | {vl} | {ta} |")
        if any(k.endswith(" steps") for k in acc):
            lines += ["", f"Equal steps for dense and sparse ZO (`--steps`); learning rates from the `grid` rows "
                      f"(`--grid-steps` steps each, lowest validation loss on 64 validation examples); test on the first "
                      f"{args.eval_examples} test examples or the whole test split if smaller (goal_step_wikihow: "
                      f"225). Step timings in `accuracy.jsonl` (`seconds`).", ""]
            timed = {k: r for k, r in acc.items() if k.endswith(" steps") and r.get("seconds")}
            if timed:
                lines += ["Training time (steps only, as run, other jobs sharing the machine): " + "; ".join(
                    f"{k}: {r['seconds'] / r['steps']:.1f} s/step" for k, r in sorted(timed.items())), ""]
            png = plot_curves(out)
            if png is not None:
                lines += [f"![validation curves]({png.name})", ""]
        else:
            lines += ["", f"Same wall-clock budget ({args.budget_s:.0f} s) for dense and sparse ZO; learning rates from "
                      f"the grid rows ({args.grid_s:.0f} s each, lowest validation loss on 64 validation examples); "
                      f"test on the first {args.eval_examples} test examples.", ""]
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
    ap.add_argument("--steps", type=int, default=None,
                    help="accuracy at equal steps: train each ZO method exactly this many steps (resumable)")
    ap.add_argument("--grid-steps", type=int, default=20, help="steps of each learning-rate grid run with --steps")
    ap.add_argument("--eval-every", type=int, default=10,
                    help="with --steps: validation loss and checkpoint every this many steps")
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
        steps_phase(args) if args.steps else accuracy_phase(args)
    print(report(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

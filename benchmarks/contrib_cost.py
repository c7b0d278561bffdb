"""What does ground truth cost? Cached-block collection against the naive loop, and one collection against one probe.

Measured side by side in ONE process on the same model, task, budget and batches:

* ``cached``: the collector's way. Block inputs below the trained layer are computed once per block
  (:meth:`zest_hf.contrib.ContribSetup.caches`) and each step runs blocks >= b only.
* ``naive``: the same training run with a full forward from the embeddings at every step and evaluation.
* ``fast`` (decoders): cached, and the vocab-sized LM head run only where the loss or a choice score reads it
  (``ContribSetup.sparse_head``, what the collector does on a causal LM). On an encoder it is the cached run.

The two are interleaved layer by layer (order alternating), so a change in machine load hits both alike, and their
results are checked equal (the cache is exact). The layers timed are one per block, with the projection type
rotating across blocks (a Latin-square sample: every block and every type once, for MiniLM's 6 x 6), plus the
head-only baseline. In a real collection one block-input capture serves all layers of the block; here each timed
layer pays its block's capture in full, so the measured speed-up is a lower bound.

The whole collection is estimated from the sample: per block, its capture plus (layers in the block) x (the sampled
layer's run); the naive one as (layers) x (naive run). This is then divided by the time of one probe
(``zest_hf.probe``, default metrics, on the collection's own probe batch of 16 examples: median of 3 after a warm-up)
to give the paper's "ground truth costs ~1000x a probe" ratio on our data. The wall time recorded in
``predictors/data`` for real collections is printed beside it (recorded under whatever load the machine had).

    python benchmarks/contrib_cost.py                           # MiniLM, multiemo, the collection budget (~10 min)
    python benchmarks/contrib_cost.py --steps 10 --eval-examples 128   # a quick look
    python benchmarks/contrib_cost.py --model smollm2 --task bigbench:social_iqa --subset --steps 20 \
        --eval-examples 128 --out benchmarks/results/contrib_cost_smollm2.json   # the decoder collection
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def latin_sample(targets) -> list:
    """One target per block, the type rotating with the block index."""
    blocks = sorted({t.block for t in targets})
    types = sorted({t.type for t in targets}, key=[t.type for t in targets].index)
    out = []
    for b in blocks:
        in_block = [t for t in targets if t.block == b]
        want = types[b % len(types)]
        out.append(next((t for t in in_block if t.type == want), in_block[0]))
    return out


def time_probe(model, batch, repeats: int) -> list[float]:
    import zest_hf

    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        zest_hf.probe(model, batch, metrics="default", seed=0)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def recorded_wall(model: str, task: str) -> float | None:
    """Sum of ``wall_s`` of a complete seed-0 collection in predictors/data (None if absent)."""
    from zest_hf.contrib import read_jsonl, task_slug

    rows = read_jsonl(ROOT / "predictors" / "data" / "contrib" / model / f"{task_slug(task)}.seed0.jsonl")
    return round(sum(r["wall_s"] for r in rows), 1) if rows else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--task", default="bigbench:multiemo/all_sentence_en")
    ap.add_argument("--steps", type=int, default=None, help="default: the collection budget of the model")
    ap.add_argument("--eval-examples", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--probe-repeats", type=int, default=3)
    ap.add_argument("--subset", action="store_true",
                    help="the collected layer subset (SmolLM2: 6 depths x 7 types) rather than every layer")
    ap.add_argument("--out", default=str(HERE / "results" / "contrib_cost.json"))
    args = ap.parse_args()

    import torch
    from tqdm.auto import tqdm

    sys.path.insert(0, str(ROOT / "scripts"))
    from collect_ground_truth import BUDGETS, PROBE_BATCH, TASK_BUDGET, smollm2_subset  # the collection budgets

    from zest_hf.contrib import ContribBudget, setup_contributions
    from zest_hf.workflow import prepare

    if args.threads:
        torch.set_num_threads(args.threads)
    b = {**BUDGETS.get(args.model, {}), **TASK_BUDGET.get((args.model, args.task), {})}
    if args.steps:
        b["steps"] = args.steps
    if args.eval_examples:
        b["eval_examples"] = args.eval_examples
    budget = ContribBudget(**b)
    layers = None
    if args.subset:
        from zest_hf import find_targets
        from zest_hf.models import load_model

        m, _ = load_model(args.model, "causal_lm")
        layers = smollm2_subset(find_targets(m))
        del m
    setup = setup_contributions(args.model, args.task, seed=args.seed, budget=budget, layers=layers)
    modes = ("cached", "naive", "fast") if setup.sparse_head else ("cached", "naive")
    layers_per_block = {}
    for t in setup.targets:
        layers_per_block[t.block] = layers_per_block.get(t.block, 0) + 1
    sample = latin_sample(setup.targets) + [None]  # None: head only (trained at the last block)
    last = len(setup.runner) - 1

    rows = []
    for i, t in enumerate(tqdm(sample, desc=" vs ".join(modes), unit="layer")):
        blk = t.block if t is not None else last
        res = {}
        for mode in modes[i % len(modes):] + modes[:i % len(modes)]:  # the order rotates layer by layer
            t0 = time.perf_counter()
            if mode in ("cached", "fast"):
                caches = setup.caches(blk)
                t1 = time.perf_counter()
                line = setup.run(t, blk, caches, sparse_head=mode == "fast")
                del caches
                res[f"{mode}_capture_s"] = t1 - t0
            else:
                line = setup.run(t, blk, sparse_head=False)
            res[f"{mode}_s"] = time.perf_counter() - t0
            res[f"{mode}_acc"] = line["val_acc"]
            res[f"{mode}_loss"] = line["val_loss"]
        res["capture_s"] = res["cached_capture_s"]
        res.update(layer=line["layer"], block=blk, type=line["type"])
        for mode in modes[1:]:
            if res["cached_acc"] != res[f"{mode}_acc"] or abs(res["cached_loss"] - res[f"{mode}_loss"]) > 1e-4 * max(
                    1.0, abs(res[f"{mode}_loss"])):
                raise AssertionError(f"cached and {mode} runs disagree on {res['layer']}: {res}")
        rows.append(res)

    layer_rows = [r for r in rows if r["type"] != "head"]
    head = [r for r in rows if r["type"] == "head"][0]
    sample_cached = sum(r["cached_s"] for r in rows)
    sample_naive = sum(r["naive_s"] for r in rows)
    # Whole collection: per block one capture, then every layer of the block at the sampled layer's run time.
    est_cached = head["cached_s"] + sum(
        r["capture_s"] + layers_per_block[r["block"]] * (r["cached_s"] - r["capture_s"]) for r in layer_rows)
    est_naive = head["naive_s"] + sum(layers_per_block[r["block"]] * r["naive_s"] for r in layer_rows)
    est_fast = None
    if "fast" in modes:
        est_fast = head["fast_s"] + sum(r["fast_capture_s"] + layers_per_block[r["block"]] * (
            r["fast_s"] - r["fast_capture_s"]) for r in layer_rows)

    prep = prepare(args.model, args.task, batch_size=PROBE_BATCH, max_length=budget.max_length, seed=0)
    probe_times = time_probe(prep.model, prep.batch, args.probe_repeats)
    probe_s = statistics.median(probe_times)

    result = {
        "model": args.model, "task": args.task, "seed": args.seed, "budget": asdict(budget),
        "threads": torch.get_num_threads(), "rows": rows,
        "sample_speedup": sample_naive / sample_cached,
        "collection_cached_est_s": est_cached, "collection_naive_est_s": est_naive,
        "collection_speedup_est": est_naive / est_cached,
        "collection_fast_est_s": est_fast,
        "fast_speedup_est": None if est_fast is None else est_cached / est_fast,
        "fast_speedup_over_naive_est": None if est_fast is None else est_naive / est_fast,
        "probe_s": probe_s, "probe_times_s": probe_times, "probe_batch": list(prep.batch["input_ids"].shape),
        "collection_over_probe": est_cached / probe_s, "naive_collection_over_probe": est_naive / probe_s,
        "recorded_collection_wall_s": recorded_wall(args.model, args.task),
        "num_layers": len(setup.targets),
        "command": "python benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(result))
    print(render(result))
    return 0


def render(r: dict) -> str:
    b = r["budget"]
    fast = r.get("fast_speedup_est") is not None
    lines = [
        "# Cost of ground truth: cached-block collection vs the naive loop, and vs one probe",
        "",
        f"`{r['command'].strip()}`: {r['model']} on {r['task']}, seed {r['seed']}, {r['threads']} threads, budget "
        f"{b['steps']} steps x {b['batch_size']} x {b['max_length']} tokens, {b['eval_examples']} validation "
        "examples. The runs are interleaved layer by layer in one process (order rotating); their accuracies are "
        "equal" + (" and their losses equal to 1e-4." if fast else "."),
        "",
        "| layer | block | naive s | cached s (capture s) | speed-up |" + (" fast s | fast / cached |" if fast else ""),
        "| --- | --- | --- | --- | --- |" + (" --- | --- |" if fast else ""),
    ]
    for x in r["rows"]:
        line = (f"| {x['layer']} | {x['block']} | {x['naive_s']:.1f} | {x['cached_s']:.1f} "
                f"({x['capture_s']:.1f}) | {x['naive_s'] / x['cached_s']:.2f}x |")
        if fast:
            line += f" {x['fast_s']:.1f} | {x['cached_s'] / x['fast_s']:.2f}x |"
        lines.append(line)
    rec = r["recorded_collection_wall_s"]
    lines += [
        "",
        f"- Sample above (each layer paying its block's capture): naive / cached = **{r['sample_speedup']:.2f}x**.",
        f"- Whole collection of {r['num_layers']} layers + head, estimated from the sample (one capture per block): "
        f"cached {r['collection_cached_est_s'] / 60:.1f} min, naive {r['collection_naive_est_s'] / 60:.1f} min, "
        f"speed-up **{r['collection_speedup_est']:.2f}x**.",
    ]
    if fast:
        lines.append(f"- With the LM head at the read positions only (the collector now): "
                     f"{r['collection_fast_est_s'] / 60:.1f} min, **{r['fast_speedup_est']:.2f}x** faster than cached, "
                     f"**{r['fast_speedup_over_naive_est']:.2f}x** than naive.")
    lines += [
        f"- One probe (default metrics, batch {r['probe_batch'][0]} x {r['probe_batch'][1]}): {r['probe_s']:.2f} s "
        f"(median of {len(r['probe_times_s'])}).",
        f"- One collection / one probe: **{r['collection_over_probe']:.0f}x** cached, "
        f"{r['naive_collection_over_probe']:.0f}x naive (per seed; the data set uses 1-2 seeds per task).",
    ]
    if rec is not None:
        lines.append(f"- Recorded wall time of the real seed-0 collection in predictors/data: {rec / 60:.1f} min "
                     f"(under the load the machine had then) = {rec / r['probe_s']:.0f}x this probe.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

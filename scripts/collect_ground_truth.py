"""Collect the ground-truth data set in predictors/data: contribution scores and one-batch probe metrics.

Resumable: every (model, task, seed) file is appended layer by layer, and a rerun skips what is there, so this script
can be killed at any time and started again. Commit predictors/data as it grows.

    python scripts/collect_ground_truth.py                 # the whole plan, in order
    python scripts/collect_ground_truth.py --model minilm  # one model's part
    python scripts/collect_ground_truth.py --list          # the plan and how much of it is done
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "predictors" / "data"

# Budgets. MiniLM: 60 steps of 32 x 64 tokens (the budget at which one-layer runs were seen to separate from
# head-only on multiemo, fever, mnist_ascii and valid_parentheses). SmolLM2 is ~8x costlier per step, so it gets
# a smaller budget and a stratified layer subset.
BUDGETS = {
    "minilm": dict(steps=60, batch_size=32, max_length=64, lr_layer=1e-3, lr_head=3e-3, eval_examples=512),
    "smollm2": dict(steps=40, batch_size=16, max_length=64, lr_layer=3e-4, lr_head=3e-3, eval_examples=384),
}

# (model, task, seeds), in collection order: first what gives the noise ceiling (two seeds), then the tasks
# whose pilots separated from head-only, then the marginal ones. Each task's pilot and status is in the datasheet,
# predictors/data/README.md ("Collection order").
PLAN = [
    ("minilm", "bigbench:multiemo/all_sentence_en", (0, 1)),
    ("minilm", "bigbench:fact_checker/fever", (0, 1)),
    ("minilm", "bbc_news", (0,)),
    ("minilm", "bigbench:mnist_ascii", (0,)),
    ("minilm", "bigbench:cs_algorithms/valid_parentheses", (0,)),
    ("minilm", "twitter_sentiment", (0,)),
    ("minilm", "bigbench:strategyqa", (0,)),
    ("minilm", "bigbench:social_iqa", (0,)),
    ("minilm", "bigbench:goal_step_wikihow/step_inference", (0,)),
    ("minilm", "bigbench:hyperbaton", (0,)),  # separates only at its larger budget (TASK_BUDGET)
    ("minilm", "bigbench:timedial", (0,)),
    ("minilm", "bigbench:language_identification", (0,)),  # 11 choices: every step costs 11 sequences per example
    ("minilm", "bigbench:unit_conversion/unit_identification", (0,)),  # saturates: ties that teach nothing
    ("smollm2", "bigbench:cs_algorithms/valid_parentheses", (0, 1)),
    # The decoder tasks that separate get a second seed: a predictor learns from the seed mean, and the
    # seed-to-seed tau says how much of a task's ranking is signal. On a decoder, multiple choice is scored by
    # log-likelihood with no head: the layer alone trains on the gold answer's LM loss.
    ("smollm2", "bigbench:goal_step_wikihow/step_inference", (0, 1)),
    ("smollm2", "bigbench:social_iqa", (0, 1)),
    ("smollm2", "bigbench:timedial", (0, 1)),
    # +9 points over the untrained model in its pilot, on only 100 validation examples: its seed-to-seed tau says
    # whether that is signal.
    ("smollm2", "bigbench:abstract_narrative_understanding/4_distractors", (0, 1)),
    # 11 choices: ~4 h per seed here; +5.9 points over the untrained model in its pilot
    ("smollm2", "bigbench:language_identification", (0, 1)),
    ("smollm2", "twitter_sentiment", (0,)),  # marginal in its pilot
    ("smollm2", "bigbench:mnist_ascii", (0,)),
    ("smollm2", "bigbench:multiemo/all_sentence_en", (0, 1)),  # did not separate in its pilot
    ("smollm2", "bigbench:fact_checker/fever", (0,)),  # did not separate in its pilot
    ("smollm2", "bbc_news", (0,)),  # did not separate in its pilot
]
PROBE_BATCH = 16
# Budget exceptions, recorded in every line's "budget": valid_parentheses has 800 training examples, fewer than
# 60 x 32 / 2 epochs; it gets 2.5 epochs rather than a smaller step budget so its scores stay comparable.
# SmolLM2's multiple-choice tasks: the layer is all that trains (lr 1e-3 beat 3e-4 in the pilots on the gold-answer
# loss, and on social_iqa's accuracy), and every validation example costs one sequence per choice (256 examples,
# 64 sequences per forward; the validation splits hold 225 and 195).
_LOGLIK = dict(lr_layer=1e-3, eval_examples=256, eval_batch_size=64)
# hyperbaton: 250 steps (8,000 of its 40,000 training examples): at 60 steps no layer leaves chance.
TASK_BUDGET = {("minilm", "bigbench:cs_algorithms/valid_parentheses"): dict(max_epochs=2.5),
               ("minilm", "bigbench:hyperbaton"): dict(steps=250),
               ("smollm2", "bigbench:goal_step_wikihow/step_inference"): _LOGLIK,
               ("smollm2", "bigbench:social_iqa"): _LOGLIK,
               ("smollm2", "bigbench:timedial"): _LOGLIK,
               ("smollm2", "bigbench:abstract_narrative_understanding/4_distractors"): _LOGLIK,
               ("smollm2", "bigbench:language_identification"): _LOGLIK}


# Decoder classification tasks collected with the multiple-choice protocol (label names scored by log-likelihood,
# no head) rather than a new classification head: the head-trained SmolLM2 pilots (fever, multiemo, bbc_news) did not
# separate, and an instruct decoder is used through its LM head.
LOGLIK_CLASSIFICATION: set[tuple[str, str]] = set()


def decoder_classification(model: str, task: str) -> str:
    return "causal_lm" if (model, task) in LOGLIK_CLASSIFICATION else "seq_cls"


def smollm2_subset(targets) -> list[str]:
    """Every projection type at six evenly spaced depths (blocks 0, 6, 12, 17, 23, 29): 42 of 210 layers."""
    n_blocks = max(t.block for t in targets) + 1
    blocks = sorted({int(round(x)) for x in np.linspace(0, n_blocks - 1, 6)})
    return [t.name for t in targets if t.block in blocks]


def contrib_path(model: str, task: str, seed: int) -> Path:
    from zest_hf.contrib import task_slug

    return DATA / "contrib" / model / f"{task_slug(task)}.seed{seed}.jsonl"


def probe_path(model: str, task: str) -> Path:
    from zest_hf.contrib import task_slug

    return DATA / "probes" / model / f"{task_slug(task)}.json"


def run_probe(model: str, task: str, again: bool = False) -> None:
    import zest_hf
    from zest_hf.workflow import prepare

    path = probe_path(model, task)
    if path.exists() and not again:
        return
    old = zest_hf.ProbeResult.from_json(path) if path.exists() else None
    all_columns = [c for m in zest_hf.resolve_metrics("all") for c in m.columns]
    if old is not None and all(c in old.values for c in all_columns):
        return  # already has every metric this zest_hf knows
    from zest_hf.tasks import load_task
    from zest_hf.workflow import choose_head

    b = BUDGETS[model]
    # the head the ground truth was collected with (a decoder classification task: see LOGLIK_CLASSIFICATION)
    head = choose_head(model, load_task(task).kind, decoder_classification=decoder_classification(model, task))
    if old is not None and old.meta.get("head") not in (None, head):
        raise ValueError(f"{path} was probed with head {old.meta.get('head')!r}, its ground truth's protocol says "
                         f"{head!r}; refusing to overwrite it with another protocol's probe")
    prep = prepare(model, task, head=head, batch_size=PROBE_BATCH, max_length=b["max_length"], seed=0)
    result = zest_hf.probe(prep.model, prep.batch, metrics="all", seed=0, progress=True)
    result.meta.update({"model": model, "task": prep.task.name, "head": prep.head, "probe_batch_seed": 0,
                        "max_length": b["max_length"], "split": "train"})
    path.parent.mkdir(parents=True, exist_ok=True)
    result.to_json(path)


def ground_truth_table(model: str | None = None) -> str:
    """Markdown: per finished model-task, its seeds, seed-to-seed Kendall tau, whether it separates from head-only,
    and the CPU hours its collections took (sum of the lines' wall time)."""
    from zest_hf.research.study import collection_status, head_only_gaps, load_ground_truth, noise_ceilings

    gt = load_ground_truth(DATA)
    status = collection_status(DATA)
    if model is not None:
        gt, status = gt[gt["model"] == model], status[status["model"] == model]
    taus = {(r.model, r.task): r.tau for r in noise_ceilings(gt).itertuples()} if len(gt) else {}
    gaps = {(r.model, r.task): r.separates for r in head_only_gaps(gt).itertuples()} if len(gt) else {}
    lines = ["| model | task | seeds complete | seed-to-seed tau | separates | CPU hours |", "|---|---|---|---|---|---|"]
    for (m, task), g in status.groupby(["model", "task"]):
        done = sorted(int(x) for x in g[g["complete"]]["seed"])
        tau = taus.get((m, task))
        hours = g["wall_h"].sum()
        lines.append(f"| {m} | {task} | {','.join(map(str, done)) or '-'} | {'' if tau is None else f'{tau:.3f}'} "
                     f"| {gaps.get((m, task), '')} | {hours:.1f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="only this model's part of the plan")
    ap.add_argument("--task", default=None,
                    help="only these tasks (comma list); two processes given disjoint lists collect in parallel")
    ap.add_argument("--list", action="store_true", help="print the plan and progress, then exit")
    ap.add_argument("--no-probe", action="store_true")
    ap.add_argument("--reprobe", action="store_true",
                    help="only probe again (every metric, the same batch and seed), overwriting the probe files: "
                         "for metrics added since; no ground truth is collected")
    args = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    from zest_hf.contrib import ContribBudget, collect_contributions, read_jsonl

    tasks = args.task.split(",") if args.task else None
    plan = [p for p in PLAN if args.model in (None, p[0]) and (tasks is None or p[1] in tasks)]
    if args.list:
        for model, task, seeds in plan:
            for s in seeds:
                n = len(read_jsonl(contrib_path(model, task, s)))
                print(f"{model:8s} {task:45s} seed {s}: {n} lines; probe {'yes' if probe_path(model, task).exists() else 'no'}")
        print()
        print(ground_truth_table(args.model))
        return 0
    if args.reprobe:
        from tqdm.auto import tqdm

        for model, task, _ in tqdm(plan, desc="reprobe", unit="probe"):
            if probe_path(model, task).exists():
                run_probe(model, task, again=True)
        return 0
    for model, task, seeds in plan:
        if not args.no_probe:
            run_probe(model, task)
        layers = None
        if model == "smollm2":
            from zest_hf import find_targets
            from zest_hf.models import load_model

            m, _ = load_model("smollm2", "causal_lm")
            layers = smollm2_subset(find_targets(m))
            del m
        for seed in seeds:
            print(f"== {model} {task} seed {seed}", file=sys.stderr, flush=True)
            collect_contributions(model, task, contrib_path(model, task, seed), seed=seed,
                                  budget=ContribBudget(**{**BUDGETS[model], **TASK_BUDGET.get((model, task), {})}),
                                  layers=layers, progress=True,
                                  decoder_classification=decoder_classification(model, task))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

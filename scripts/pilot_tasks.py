"""Pilot a task before spending hours on its ground truth: one layer (block 6's down_proj on SmolLM2, block 3's
output.dense on MiniLM) and the head-only/untrained line, at the collection budget. A task separates when the layer
clearly beats the untrained line; only then does it join the PLAN of collect_ground_truth.py.

    python scripts/pilot_tasks.py --model smollm2 --tasks bigbench:strategyqa,bigbench:winowhy \\
        --decoder-classification causal_lm --out predictors/data/smollm2_loglik_cls_pilot.jsonl

Resumable like every collection (a rerun skips what the file has); prints the pilot table at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

PILOT_LAYER = {"smollm2": "model.layers.6.mlp.down_proj", "minilm": "bert.encoder.layer.3.output.dense"}


def main() -> int:
    from collect_ground_truth import _LOGLIK, BUDGETS, TASK_BUDGET

    from zest_hf.contrib import ContribBudget, collect_contributions, read_jsonl
    from zest_hf.tasks import load_task

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tasks", required=True, help="comma list of task names")
    ap.add_argument("--out", required=True)
    ap.add_argument("--decoder-classification", default="seq_cls", choices=("seq_cls", "causal_lm"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for task in args.tasks.split(","):
        kind = load_task(task).kind
        loglik = args.model == "smollm2" and (kind == "multiple_choice" or args.decoder_classification == "causal_lm")
        budget = {**BUDGETS[args.model], **(_LOGLIK if loglik else {}), **TASK_BUDGET.get((args.model, task), {})}
        print(f"== pilot {args.model} {task} ({kind}{', log-likelihood' if loglik else ''})", file=sys.stderr)
        try:
            collect_contributions(args.model, task, args.out, seed=args.seed, budget=ContribBudget(**budget),
                                  layers=[PILOT_LAYER[args.model]], decoder_classification=args.decoder_classification)
        except ValueError as e:  # e.g. a task too small for the budget: reported, the next task goes on
            print(f"   refused: {e}", file=sys.stderr)
    rows = read_jsonl(args.out)
    print("| task | layer | score | untrained / head only | gain (points) | wall s |")
    print("|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        mine = [r for r in rows if r["task"] == load_task(task).name and r["seed"] == args.seed]
        base = next((r["score"] for r in mine if r["layer"] == "__head__"), None)
        for r in mine:
            if r["layer"] != "__head__":
                gain = "" if base is None else f"{100 * (r['score'] - base):+.1f}"
                print(f"| {task} | {r['layer']} | {r['score']:.3f} | {'' if base is None else f'{base:.3f}'} | {gain} "
                      f"| {r['wall_s']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

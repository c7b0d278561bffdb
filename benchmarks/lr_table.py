"""Learning rates that work, measured: validation accuracy at each rate of each method's grid, seed 0.

Reads what the sweeps already wrote (no new runs): ``benchmarks/end_to_end.py``'s runs on its current design (the
budget each model has today; lines of older designs are left out, as its report leaves them out) and
``examples/sft_trl.py``'s (SmolLM2 SFT with TRL on social_iqa). Each row averages over the tasks where the method
has every rate of its grid, so that its rates are compared on the same tasks. Writes results/lr_table.md.

    python benchmarks/lr_table.py
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "examples")]  # sibling scripts, not packages
from end_to_end import key_budget  # noqa: E402
from sft_trl import LABELS  # noqa: E402

from zest_hf.contrib import read_jsonl  # noqa: E402

E2E = ROOT / "benchmarks" / "results" / "end_to_end" / "runs.jsonl"
SFT = ROOT / "examples" / "results" / "sft_trl" / "runs.jsonl"
SETTINGS = {"minilm": "MiniLM, classification", "smollm2": "SmolLM2, 40 steps"}
SFT_SETTING = "SmolLM2, SFT with TRL (social_iqa)"


def _e2e_cells(rows: list[dict]) -> dict:
    """(setting, method) -> lr -> [validation accuracy per task], over the tasks that ran the method's whole grid."""
    grids = defaultdict(lambda: defaultdict(dict))  # (model, method) -> task -> lr -> val acc
    for r in rows:
        if r["seed"] == 0 and r["budget"] == key_budget(r["model"]):
            grids[(r["model"], r["method"])][r["task"]][r["lr"]] = r["val_acc"]
    cells = {}
    for (model, method), by_task in grids.items():
        rates = set().union(*(set(g) for g in by_task.values()))
        full = [g for g in by_task.values() if set(g) == rates]
        if len(rates) < 2 or not full:
            continue
        key = (f"{SETTINGS.get(model, model)} ({len(full)} task{'s' if len(full) > 1 else ''})", method)
        cells[key] = {lr: [g[lr] for g in full] for lr in rates}
    return cells


def _sft_cells(rows: list[dict]) -> dict:
    cells = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cells[(SFT_SETTING, LABELS.get(r["method"], r["method"]))][r["lr"]].append(
            sum(r["val_loglik"]) / len(r["val_loglik"]))
    return cells


def table(e2e: Path = E2E, sft: Path = SFT) -> str:
    cells = {**_e2e_cells(read_jsonl(e2e)), **_sft_cells(read_jsonl(sft))}
    lines = ["# Learning rates, measured", "",
             "`python benchmarks/lr_table.py`: mean validation accuracy % (over the tasks where the method ran its "
             "whole grid) at each rate, seed 0, constant rate, AdamW; the best rate in bold (the grids hold two rates "
             "each, so a better one may lie beyond either). Sources: "
             "benchmarks/results/end_to_end/runs.jsonl (current design), examples/results/sft_trl/runs.jsonl.", "",
             "| setting | method | validation accuracy % by learning rate |", "| --- | --- | --- |"]
    for (setting, method), by_lr in sorted(cells.items()):
        means = {lr: 100 * sum(v) / len(v) for lr, v in by_lr.items()}
        best = max(means, key=lambda lr: (means[lr], -lr))
        parts = [(f"**{lr:g}: {m:.1f}**" if lr == best else f"{lr:g}: {m:.1f}") for lr, m in sorted(means.items())]
        lines.append(f"| {setting} | {method} | {', '.join(parts)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    import argparse

    # no options: it only reads what was measured; --help says what it does before it writes anything
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    text = table()
    out = ROOT / "results" / "lr_table.md"
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

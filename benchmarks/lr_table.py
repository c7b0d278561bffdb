"""Learning rates that work, measured: validation accuracy at each rate of each method's grid, seed 0.

Reads what the sweeps already wrote (no new runs): ``benchmarks/end_to_end.py``'s runs (MiniLM on bbc_news, fever,
multiemo; SmolLM2 on valid_parentheses with a classification head and goal_step by log-likelihood; 40-60 steps,
constant rates) and ``examples/sft_trl.py``'s (SmolLM2 SFT with TRL on social_iqa). Writes results/lr_table.md.

    python benchmarks/lr_table.py
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
E2E = ROOT / "benchmarks" / "results" / "end_to_end" / "runs.jsonl"
SFT = ROOT / "examples" / "results" / "sft_trl" / "runs.jsonl"
FAMILIES = {"full FT": "full fine-tuning", "ZEST@3": "ZEST@3 (full mode)", "ZEST@5": "ZEST@5 (full mode)",
            "ZEST@10": "ZEST@10 (full mode)", "LoRA ZEST@5": "ZEST@5, LoRA r=8", "LoRA all": "LoRA r=8, every projection"}
SFT_FAMILIES = {"full": "full fine-tuning", "zest": "ZEST@8 (full mode)", "zest_lora": "ZEST@8, LoRA r=8",
                "lora_all": "LoRA r=8, every projection"}


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def table() -> str:
    cells = defaultdict(lambda: defaultdict(list))  # (setting, method) -> lr -> [val acc per task]
    for r in _read(E2E):
        if r["seed"] == 0 and r["method"] in FAMILIES:
            setting = {"minilm": "MiniLM, classification (3 tasks)", "smollm2": "SmolLM2, 2 tasks"}[r["model"]]
            cells[(setting, FAMILIES[r["method"]])][r["lr"]].append(r["val_acc"])
    for r in _read(SFT):
        acc = sum(r["val_loglik"]) / len(r["val_loglik"])
        cells[("SmolLM2, SFT with TRL (social_iqa)", SFT_FAMILIES[r["method"]])][r["lr"]].append(acc)
    lines = ["# Learning rates, measured", "",
             "`python benchmarks/lr_table.py`: mean validation accuracy % (over the setting's tasks) at each rate of "
             "each method's grid, seed 0, constant rate, AdamW; the best rate in bold. Sources: "
             "benchmarks/results/end_to_end/runs.jsonl, examples/results/sft_trl/runs.jsonl.", "",
             "| setting | method | validation accuracy % by learning rate |", "| --- | --- | --- |"]
    for (setting, method), by_lr in sorted(cells.items()):
        means = {lr: 100 * sum(v) / len(v) for lr, v in by_lr.items()}
        best = max(means, key=lambda lr: (means[lr], -lr))
        parts = [(f"**{lr:g}: {m:.1f}**" if lr == best else f"{lr:g}: {m:.1f}") for lr, m in sorted(means.items())]
        lines.append(f"| {setting} | {method} | {', '.join(parts)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    text = table()
    out = ROOT / "results" / "lr_table.md"
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

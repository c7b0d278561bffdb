"""The step cost model (zest_hf.research.cost) checked against CPU measurements, then at 8B and 70B.

1. Validation: every method of end_to_end.py's Table 4 (benchmarks/results/end_to_end/cost.jsonl: one training step
   of MiniLM and SmolLM2, each method in a fresh process). Two time constants (seconds per forward and per backward
   FLOP) and two memory constants (a fixed part, an activation factor) are fitted per model on full fine-tuning and
   head only, then predict the rest. Ratio predicted / measured per method.
2. Scale: Llama-3-8B- and 70B-shaped configs, bf16 mixed precision, batch 8 x 2048 tokens, 1 and 8 shards: FLOPs,
   time at an assumed rate, peak memory per device, for full FT, LoRA r=16 on every projection, ZEST@5/@10 (plain
   and cost-aware), QLoRA on every projection, ZEST-QLoRA@10 and sparse ZO (0.1 %, NF4 base). The selections are
   up_proj layers from the relative depth of the lowest layer that ZEST@5 (and ZEST@5 cost 0.5) selected on SmolLM2
   in Table 4 (what matters for cost is how many parameters train and how deep the backward goes).

    python benchmarks/cost_model.py          # writes benchmarks/results/cost_model.{md,json,png}
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RATE_ASSUMED = 400e12  # FLOP/s: an H100/H200-class GPU at ~40 % of its bf16 dense peak (an assumption, stated)
LLAMA = {
    "Llama-3-8B": dict(blocks=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=128256),
    "Llama-3-70B": dict(blocks=80, hidden=8192, intermediate=28672, heads=64, kv_heads=8, vocab=128256),
}
_TYPE = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
         "down_proj": "down", "query": "q", "key": "k", "value": "v"}


def block_type(name: str) -> tuple[int, str]:
    block = int(re.search(r"\.(\d+)\.", name).group(1))
    if name.endswith("attention.output.dense"):
        kind = "o"
    elif name.endswith("intermediate.dense"):
        kind = "up"
    elif name.endswith("output.dense"):
        kind = "down"
    else:
        kind = _TYPE[name.rsplit(".", 1)[1]]
    return block, kind


def method_of(row: dict, arch) -> "object | None":
    from zest_hf.research.cost import Method

    name, sel = row["method"], [block_type(n) for n in (row.get("selected") or [])]
    if name == "LISA":
        return None  # it trains the embedding matrix, which the cost model does not count
    every = tuple((b, t) for b in range(arch.blocks) for t in arch.types)
    if name == "full FT":
        return Method(name, full=True)
    if name == "head only":
        return Method(name, head=True)
    if name in ("LoRA all", "LoRA r16 all"):
        return Method(name, lora=every, lora_rank=16 if "r16" in name else 8, head=True)
    if name.startswith("LoRA"):
        return Method(name, lora=tuple(sel), head=True)
    return Method(name, trained=tuple(sel), head=True)


def cost_rows() -> list[dict]:
    """Table 4's rows (``end_to_end.py``'s cost phase): one training step of each model and method."""
    return [json.loads(l) for l in (HERE / "results" / "end_to_end" / "cost.jsonl").read_text().splitlines() if l]


def validate(rows: list[dict]) -> list[dict]:
    import transformers

    from zest_hf.models import resolve_model
    from zest_hf.research.cost import Arch, fit_memory, fit_rate, step_cost

    out = []
    for model in sorted({r["model"] for r in rows}):
        cfg = transformers.AutoConfig.from_pretrained(resolve_model(model))
        arch = Arch.from_config(cfg, lm_head=False)  # Table 4 trains classification tasks: a small head
        methods = {r["method"]: method_of(r, arch) for r in rows if r["model"] == model}
        mine = [r for r in rows if r["model"] == model and methods[r["method"]] is not None]
        costs = {r["method"]: step_cost(arch, methods[r["method"]], *r["batch"]) for r in mine}
        calib = [r for r in mine if r["method"] in ("full FT", "head only")]
        def measured_step(r):
            return (r["peak_rss_mb"] - r["base_rss_mb"]) * 2**20

        a, b = fit_rate([(costs[r["method"]]["fwd_flops"], costs[r["method"]]["bwd_flops"], r["time_s"])
                         for r in calib])
        fixed, factor = fit_memory([(costs[r["method"]]["state_bytes"], costs[r["method"]]["act_bytes"],
                                     measured_step(r)) for r in calib])
        for r in mine:
            c = costs[r["method"]]
            t_pred = a * c["fwd_flops"] + b * c["bwd_flops"]
            m_pred = fixed + c["state_bytes"] + factor * c["act_bytes"]
            m_meas = measured_step(r)
            out.append({"model": model, "method": r["method"], "fitted": r["method"] in ("full FT", "head only"),
                        "time_s": r["time_s"], "time_pred_s": t_pred, "time_ratio": t_pred / r["time_s"],
                        "step_mb": m_meas / 2**20, "step_pred_mb": m_pred / 2**20, "mem_ratio": m_pred / m_meas,
                        "gflops": c["flops"] / 1e9, "fwd_gflop_per_s": 1e-9 / a, "bwd_gflop_per_s": 1e-9 / b,
                        "fixed_mb": fixed / 2**20, "act_factor": factor})
    return out


def measured_depth(rows: list[dict], method: str, model: str = "smollm2") -> float:
    """Relative depth (0 = first block) of the lowest layer ``method`` selected on ``model`` in Table 4: how deep its
    backward had to go, carried to the 8B / 70B shapes."""
    import transformers

    from zest_hf.models import resolve_model

    row = next((r for r in rows if r["model"] == model and r["method"] == method and r.get("selected")), None)
    if row is None:
        raise SystemExit(f"cost_model: no {method} row with a selection for {model} in cost.jsonl; run "
                         f"`python benchmarks/end_to_end.py --models {model} --phase cost --methods \"{method}\"`")
    blocks = transformers.AutoConfig.from_pretrained(resolve_model(model)).num_hidden_layers
    return min(block_type(n)[0] for n in row["selected"]) / (blocks - 1)


def scale_table(plain: float, aware: float, batch: int = 8, seq: int = 2048) -> list[dict]:
    """``plain`` / ``aware``: relative depth of the lowest layer of plain and cost-aware ZEST (:func:`measured_depth`)."""
    from zest_hf.research.cost import Arch, Method, step_cost

    out = []
    for label, spec in LLAMA.items():
        arch = Arch(**spec, gated=True, lm_head=True)
        L = arch.blocks
        every = tuple((b, t) for b in range(L) for t in arch.types)

        def ups(k, depth):
            lo = int(round(depth * (L - 1)))
            blocks = sorted({lo + round(i * (L - 1 - lo) / max(k - 1, 1)) for i in range(k)})
            return tuple((b, "up") for b in blocks)

        methods = [Method("full FT", full=True), Method("LoRA-all r=16", lora=every, lora_rank=16, base_bytes=2),
                   Method("ZEST@5", trained=ups(5, plain), base_bytes=2),
                   Method("ZEST@10", trained=ups(10, plain), base_bytes=2),
                   Method("ZEST@5 cost-aware", trained=ups(5, aware), base_bytes=2),
                   Method("QLoRA-all r=16", lora=every, lora_rank=16, base_bytes=0.52),
                   Method("ZEST-QLoRA@10 r=16", lora=ups(10, plain), lora_rank=16, base_bytes=0.52),
                   Method("sparse ZO 0.1 %", sparse_zo=0.001, base_bytes=0.52)]
        full = step_cost(arch, methods[0], batch, seq, mixed_precision=True)
        for m in methods:
            for shards in (1, 8):
                c = step_cost(arch, m, batch, seq, mixed_precision=True, shards=shards)
                out.append({"config": label, "params_b": arch.params / 1e9, "method": m.name, "shards": shards,
                            "trainable_m": c["trainable"] / 1e6, "tflops": c["flops"] / 1e12,
                            "time_s": c["flops"] / RATE_ASSUMED, "time_vs_full": c["flops"] / full["flops"],
                            "peak_gb": c["peak_bytes"] / 2**30, "weights_gb": c["weight_bytes"] / 2**30,
                            "state_gb": c["state_bytes"] / 2**30, "act_gb": c["act_bytes"] / 2**30})
    return out


def main() -> int:
    import argparse

    # no options: it only reads what was measured; --help says what it does before it writes anything
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    import pandas as pd

    rows = cost_rows()
    val = pd.DataFrame(validate(rows))
    plain, aware = measured_depth(rows, "ZEST@5"), measured_depth(rows, "ZEST@5 cost 0.5")
    scale = pd.DataFrame(scale_table(plain, aware))
    res = HERE / "results"
    (res / "cost_model.json").write_text(json.dumps({"validation": val.to_dict("records"),
                                                     "scale": scale.to_dict("records")}, indent=1))
    v = val[["model", "method", "fitted", "time_s", "time_pred_s", "time_ratio", "step_mb", "step_pred_mb",
             "mem_ratio"]].round(2)
    unfitted = val[~val["fitted"]]
    summary = unfitted.groupby("model")[["time_ratio", "mem_ratio"]].agg(["mean", "min", "max"]).round(2)
    s1 = scale[scale["shards"] == 1][["config", "method", "trainable_m", "tflops", "time_s", "time_vs_full",
                                      "peak_gb", "weights_gb", "state_gb", "act_gb"]].round(2)
    s8 = scale[scale["shards"] == 8].pivot(index="method", columns="config", values="peak_gb").round(1)
    text = "\n".join([
        "# The step cost model: predicted vs measured (CPU), and at 8B / 70B", "",
        "`python benchmarks/cost_model.py`. Model: `src/zest_hf/research/cost.py`.", "",
        "## Validation against end_to_end.py's Table 4 (one step, fp32 CPU, 1 thread)", "",
        "Fitted per model on full FT and head only (`fitted`), the rest predicted: time = forward FLOPs x a + "
        "backward FLOPs x b; the step's own memory (peak minus the resident model) = fixed + gradients and optimizer "
        "state + factor x the counted activations. Fitted constants: " + "; ".join(
            f"{m}: forward {g['fwd_gflop_per_s'].iloc[0]:.1f} GFLOP/s, backward {g['bwd_gflop_per_s'].iloc[0]:.1f} "
            f"GFLOP/s, fixed {g['fixed_mb'].iloc[0]:.0f} MB, activation factor {g['act_factor'].iloc[0]:.2f}"
            for m, g in val.groupby("model")) + ". At 8B/70B below no fitted constant is used (factor 1, no fixed "
        "part, one FLOP rate). LISA's rows are left out: its step trains the embedding matrix, which the model does "
        "not count.", "",
        v.to_markdown(index=False), "", "Predicted / measured over the unfitted methods:", "",
        summary.to_markdown(), "",
        f"## Llama-3-8B and -70B shapes: bf16 mixed precision, batch 8 x 2048, one device (time at an assumed "
        f"{RATE_ASSUMED / 1e12:.0f} TFLOP/s)", "",
        f"ZEST's up_proj layers start at relative depth {plain:.2f} (cost-aware: {aware:.2f}), the lowest layer "
        "ZEST@5 selected on SmolLM2 in Table 4.", "",
        s1.to_markdown(index=False), "",
        "## Peak memory per device (GB) with 8 shards (FSDP2 / ZeRO-3: weights, gradients, optimizer state / 8)", "",
        s8.to_markdown(), ""])
    (res / "cost_model.md").write_text(text)
    _plot(scale, res / "cost_model.png")
    print(text)
    return 0


def _plot(scale, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(LLAMA)
    fig, axes = plt.subplots(1, len(configs), figsize=(7 * len(configs), 4.2), squeeze=False)
    for ax, cfg in zip(axes[0], configs):
        d = scale[(scale["config"] == cfg) & (scale["shards"] == 1)].set_index("method")
        bottom = None
        for part, color in (("weights_gb", "#999999"), ("state_gb", "#4477aa"), ("act_gb", "#ee7733")):
            ax.barh(d.index, d[part], left=bottom, color=color, label=part.replace("_gb", ""))
            bottom = d[part] if bottom is None else bottom + d[part]
        ax.axvline(141, color="k", ls="--", lw=0.8)
        ax.text(141, len(d) - 0.5, " 141 GB (one H200)", fontsize=8)
        ax.set_title(f"{cfg}: one step, batch 8 x 2048, bf16, one device")
        ax.set_xlabel("peak memory, GB (model estimate)")
        ax.invert_yaxis()
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())

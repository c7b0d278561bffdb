"""ONE device run (at most 10 minutes on one GPU): what a step costs at 1B and 8B, measured, beside the cost model.

Cost does not depend on the weights being pretrained, so the models are random-initialised Llama configs (~1B and
Llama-3-8B-shaped) in bf16. For each: one training step (forward, backward, AdamW), median of ``--repeats`` after a
warm-up, ``torch.cuda.max_memory_allocated`` as the peak (weights included), for full FT, LoRA r=16 on every
projection, ZEST@5 and ZEST@10 (up_proj layers from depth 0.23 up, as SmolLM2's ZEST@5 reached) and ZEST@5 cost-aware
(from depth 0.53 up); each method on a freshly built model. Then, on the 1B model: the probe restores a bf16 model
bit for bit (weights, flags, modes), and one sparse zeroth-order step with bitsandbytes' kernels (NF4 base, 0.1 % of
the projection weights tuned, random mask) against the full FT step. Every row carries the cost model's prediction
(zest_hf.research.cost, no constant fitted: time ratios to full FT, peak in GB) and measured / predicted.

    python benchmarks/gpu_cost.py --out $OUT/gpu_cost                 # on the GPU machine
    python benchmarks/gpu_cost.py --configs tiny --device cpu --dtype float32 --out /tmp/gpu_cost   # a CPU rehearsal
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=12, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000, batch=2, seq=32),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, batch=8, seq=1024),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, batch=4, seq=1024),
}


def ups(blocks: int, k: int, depth: float) -> list[str]:
    lo = int(round(depth * (blocks - 1)))
    chosen = sorted({lo + round(i * (blocks - 1 - lo) / max(k - 1, 1)) for i in range(k)})
    return [f"model.layers.{b}.mlp.up_proj" for b in chosen]


def build(spec: dict, device, dtype):
    import torch
    import transformers

    cfg = transformers.LlamaConfig(**{k: v for k, v in spec.items() if k not in ("batch", "seq")}, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(cfg).to(dtype)
    return model, cfg


def methods(blocks: int) -> dict:
    return {"full FT": None, "LoRA-all r=16": "lora", "ZEST@5": ups(blocks, 5, 0.23), "ZEST@10": ups(blocks, 10, 0.23),
            "ZEST@5 cost-aware": ups(blocks, 5, 0.53)}


def wrap(model, how):
    import peft

    import zest_hf

    if how is None:
        return model
    if how == "lora":
        names = [t.name for t in zest_hf.find_targets(model)]
        return peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=16, target_modules=names))
    cfg = zest_hf.ZestConfig(selected_modules=how, selection_scores=[float(-i) for i in range(len(how))],
                             modules_to_save=[])
    return peft.get_peft_model(model, cfg)


def time_step(step, repeats, device) -> tuple[float, float]:
    import torch

    cuda = device.type == "cuda"
    step()  # warm-up: optimizer state, kernels
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return statistics.median(times), peak


def predicted(spec, how, blocks):
    from zest_hf.research.cost import Arch, Method, step_cost

    arch = Arch(blocks=blocks, hidden=spec["hidden_size"], intermediate=spec["intermediate_size"],
                heads=spec["num_attention_heads"], kv_heads=spec["num_key_value_heads"], vocab=spec["vocab_size"])
    import re

    if how is None:
        m = Method("full", full=True, base_bytes=2)
    elif how == "lora":
        m = Method("lora", lora=tuple((b, t) for b in range(blocks) for t in arch.types), lora_rank=16, base_bytes=2)
    else:
        m = Method("zest", trained=tuple((int(re.search(r"\.(\d+)\.", n).group(1)), "up") for n in how), base_bytes=2)
    # torch AdamW on bf16 parameters keeps bf16 state: 2 (grad) + 4 (m, v) bytes, no master copy
    c = step_cost(arch, m, spec["batch"], spec["seq"], mixed_precision=True)
    state = c["trainable"] * 6 if how is None else c["state_bytes"]
    return c["flops"], (c["weight_bytes"] + state + c["act_bytes"]) / 2**30


def run_config(name: str, spec: dict, device, dtype, repeats: int) -> list[dict]:
    import torch

    rows, full_time = [], None
    blocks = spec["num_hidden_layers"]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, spec["vocab_size"], (spec["batch"], spec["seq"]), generator=g).to(device)
    full_flops = predicted(spec, None, blocks)[0]
    for label, how in methods(blocks).items():
        model, _ = build(spec, device, dtype)
        model = wrap(model, how)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def step():
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        t, peak = time_step(step, repeats, device)
        full_time = t if how is None else full_time
        flops, peak_pred = predicted(spec, how, blocks)
        rows.append({"config": name, "method": label, "time_s": t, "time_vs_full": t / full_time,
                     "pred_time_vs_full": flops / full_flops, "peak_gb": peak, "pred_peak_gb": peak_pred,
                     "peak_ratio": peak / peak_pred, "trainable": sum(p.numel() for p in model.parameters()
                                                                      if p.requires_grad)})
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def probe_restores(spec, device, dtype) -> dict:
    import torch

    import zest_hf

    model, _ = build(spec, device, dtype)
    model.eval()
    model.model.layers[0].train()  # a mixed mode, to be given back
    ids = torch.randint(3, spec["vocab_size"], (4, 128), generator=torch.Generator().manual_seed(2)).to(device)

    def fingerprint():
        h = hashlib.sha256()
        for n, p in model.named_parameters():
            h.update(n.encode())
            h.update(p.detach().view(torch.uint8).cpu().numpy().tobytes() if p.dtype == torch.bfloat16
                     else p.detach().cpu().numpy().tobytes())
        return h.hexdigest(), [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]

    before = fingerprint()
    t0 = time.perf_counter()
    zest_hf.probe(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    probe_s = time.perf_counter() - t0
    after = fingerprint()
    return {"bit_identical": before[0] == after[0], "flags_same": before[1] == after[1],
            "modes_same": before[2] == after[2], "probe_s": probe_s}


def sparse_zo_vs_full(spec, device, dtype, repeats) -> dict:
    import torch

    from zest_hf.sparse_zo import attach_sparse, tunable_values, zo_step
    from zest_hf.sparse_zo.mask import SensitiveMask

    model, _ = build(spec, device, dtype)
    ids = torch.randint(3, spec["vocab_size"], (spec["batch"], spec["seq"]),
                        generator=torch.Generator().manual_seed(1)).to(device)
    import zest_hf

    shapes = {t.name: (t.out_features, t.in_features) for t in zest_hf.find_targets(model)}
    g = torch.Generator().manual_seed(3)
    indices = {n: torch.randperm(o * i, generator=g)[: max(1, o * i // 1000)].sort().values for n, (o, i) in shapes.items()}
    quantize = "nf4" if device.type == "cuda" else None
    attach_sparse(model, SensitiveMask(indices=indices, shapes=shapes, percent=0.1), quantize=quantize)
    params = tunable_values(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seed = [0]

    def step():
        seed[0] += 1
        with torch.no_grad():
            zo_step(lambda: model(input_ids=ids, labels=ids).loss, params, lr=1e-6, eps=1e-3, seed=seed[0])

    t, peak = time_step(step, repeats, device)
    return {"zo_step_s": t, "zo_peak_gb": peak, "quantize": quantize, "tuned": sum(p.numel() for p in params)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="1b,8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "gpu_cost"))
    args = ap.parse_args()
    import torch

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "dtype": args.dtype,
              "torch": torch.__version__, "rows": [], "seed": 0}
    names = args.configs.split(",")
    for name in names:
        t0 = time.perf_counter()
        result["rows"] += run_config(name, CONFIGS[name], device, dtype, args.repeats)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        (out / "gpu_cost.json").write_text(json.dumps(result, indent=1))  # partial results survive a time-out
    first = CONFIGS[names[0]]
    result["probe"] = probe_restores(first, device, dtype)
    result["sparse_zo"] = sparse_zo_vs_full(first, device, dtype, args.repeats)
    full = next(r for r in result["rows"] if r["config"] == names[0] and r["method"] == "full FT")
    result["sparse_zo"]["vs_full_ft_step"] = result["sparse_zo"]["zo_step_s"] / full["time_s"]
    (out / "gpu_cost.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Step cost on {result['device']} ({args.dtype}), random-initialised Llama configs", "",
             "| config | method | step s | vs full | predicted vs full | peak GB | predicted GB | measured / predicted |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['config']} | {r['method']} | {r['time_s']:.3f} | {r['time_vs_full']:.2f} | "
                     f"{r['pred_time_vs_full']:.2f} | {r['peak_gb']:.1f} | {r['pred_peak_gb']:.1f} | "
                     f"{r['peak_ratio']:.2f} |")
    lines += ["", f"Probe on {names[0]}: {result['probe']}", f"Sparse ZO on {names[0]}: {result['sparse_zo']}",
              "", f"Command: python benchmarks/gpu_cost.py --configs {args.configs} --device {args.device} "
              f"--dtype {args.dtype} --repeats {args.repeats}"]
    (out / "gpu_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""ZEST-QLoRA against QLoRA on every projection: one training step over the same 4-bit (NF4) base, side by side.

Each measurement in its own fresh process (benchmarks/measure.py): the packaged SmolLM2-135M with every projection
quantised to NF4 (``zest_hf.models.quantize_projections_4bit``; on a GPU the same as a ``BitsAndBytesConfig`` load),
LoRA r=8 (alpha 16) on

* ``qlora_all``: every projection (the usual QLoRA);
* ``zest_qlora@k``: the k projections ZEST selects on the 4-bit model itself (bundled predictor, one probe batch);

then one AdamW step (forward, backward, optimizer) on the same batch of 16 x 128 tokens of the task. Reported: the
median step time and the step's peak resident memory (weights included), and ZEST's ratio to QLoRA-all.

    python benchmarks/qlora_memory.py                        # SmolLM2, timedial, k = 5, 10
    python benchmarks/qlora_memory.py --model smollm2 --ks 5 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import run_worker, time_and_peak  # noqa: E402


def worker(model_name: str, mode: str, task: str, batch_size: int, length: int, repeats: int, seed: int) -> dict:
    import peft
    import torch

    import zest_hf
    from zest_hf.models import quantize_projections_4bit
    from zest_hf.workflow import prepare

    prep = prepare(model_name, task, batch_size=batch_size, max_length=length, seed=seed)
    model, _ = quantize_projections_4bit(prep.model)
    del _
    batch = prep.batch
    info = {}
    if mode == "qlora_all":
        names = [t.name for t in zest_hf.find_targets(model)]
    else:
        k = int(mode.split("@")[1])
        cfg = zest_hf.select(model, batch, zest_hf.ZestConfig(top_k=k, mode="lora", r=8, lora_alpha=16))
        names = list(cfg.selected_modules)
    info["modules"] = names
    lora = peft.LoraConfig(r=8, lora_alpha=16, target_modules=names, lora_dropout=0.0)
    pm = peft.get_peft_model(model, lora)
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def run():
        pm(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    res = time_and_peak(run, repeats)
    res.update(model=model_name, mode=mode, batch=list(batch["input_ids"].shape), seed=seed,
               trainable=sum(p.numel() for p in params), num_modules=len(names), **info)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--task", default="bigbench:timedial")
    ap.add_argument("--ks", default="5,10")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "qlora_memory.json"))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.model, args.worker, args.task, args.batch_size, args.length,
                                            args.repeats, args.seed)))
        return 0
    from tqdm.auto import tqdm

    modes = ["qlora_all"] + [f"zest_qlora@{k}" for k in args.ks.split(",")]
    results = []
    for mode in tqdm(modes, desc="qlora_memory", unit="run"):
        results.append(run_worker([__file__, "--worker", mode, "--model", args.model, "--task", args.task,
                                   "--batch-size", str(args.batch_size), "--length", str(args.length),
                                   "--repeats", str(args.repeats), "--seed", str(args.seed)]))
    ref = results[0]
    lines = [f"ZEST-QLoRA vs QLoRA on every projection: {args.model} with NF4 projections, LoRA r=8, one AdamW step on "
             f"{ref['batch'][0]} x {ref['batch'][1]} tokens of {args.task}, seed {args.seed}, median of {args.repeats} "
             f"after a warm-up, each in a fresh process; peak = resident-set high-water mark during the step.", "",
             "| method | LoRA modules | trainable params | step s | time vs QLoRA-all | step peak MB | memory vs QLoRA-all |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['mode']} | {r['num_modules']} | {r['trainable']:,} | {r['time_s']:.2f} | "
                     f"**{r['time_s'] / ref['time_s']:.2f}x** | {r['peak_rss_mb']:.0f} | "
                     f"**{r['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x** |")
    lines += ["", f"Command: python benchmarks/qlora_memory.py --model {args.model} --task {args.task} --ks {args.ks} "
              f"--repeats {args.repeats}"]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

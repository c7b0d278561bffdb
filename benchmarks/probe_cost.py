"""What does one probe cost, against one full fine-tuning step of the same model on the same batch?

For each model, side by side in one run, each measurement in its own fresh subprocess (so one measurement's
allocations cannot hide in another's peak):

* ``ft_step``: one full fine-tuning step (forward, backward, AdamW step) with every parameter trainable;
* ``probe``: ``zest_hf.probe`` with the default metrics (all but grasp);
* ``probe_spectral`` / ``probe_parts`` / ``probe_signals``: the default metrics plus the signals not in the default
  (spectral statistics; grad_snr and two_halves, from the micro-batch gradient parts; all three);
* ``probe_grasp``: ``zest_hf.probe`` with every metric, grasp's double backward included.

Time is the median over ``--repeats`` runs after one warm-up run; then, in one more process per model, every
operation is timed round-robin (``interleaved``: the median over rounds of each round's probe / FT-step ratio), which
a machine whose load drifts between the fresh processes cannot skew. Memory is the peak resident set size during the
operation (weights included; the kernel's high-water mark is reset after loading, so loading's own peak does not
count) and, on CUDA, ``torch.cuda.max_memory_allocated``. Targets: probe <= 2.0x time and <= 1.3x peak
memory; with grasp <= 4x time.

    python benchmarks/probe_cost.py                      # MiniLM and SmolLM2, batch 16 x 128, BBC News
    python benchmarks/probe_cost.py --models minilm --repeats 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import run_worker, time_and_peak, timed  # noqa: E402

MODES = ("ft_step", "probe", "probe_spectral", "probe_parts", "probe_signals", "probe_grasp")
#: What each probe mode asks for, and its label in the table.
PROBE_METRICS = {
    "probe": ("default", "default (all but grasp and the new signals)"),
    "probe_spectral": (["default", "spectral"], "default + spectral"),
    "probe_parts": (["default", "grad_snr", "two_halves"], "default + grad_snr + two_halves"),
    "probe_signals": (["default", "spectral", "grad_snr", "two_halves"], "default + all three new signals"),
    "probe_grasp": ("all", "every metric, grasp included"),
}


def _setup(model_name: str, task: str, batch_size: int, length: int, seed: int):
    import torch

    from zest_hf.workflow import prepare

    prep = prepare(model_name, task, batch_size=batch_size, max_length=length, seed=seed)
    model, batch = prep.model, prep.batch
    # Fill every sequence to the full length so that both sides see exactly batch x length tokens.
    assert batch["input_ids"].shape[-1] <= length
    if torch.cuda.is_available():
        model.cuda()
        batch = {k: v.cuda() for k, v in batch.items()}
    return model, batch


def make_run(mode: str, model, batch):
    """The operation ``mode`` measures, as a closure over the model and batch."""
    import torch

    import zest_hf

    if mode == "ft_step":
        def run():
            # every weight trains; the flags are set each time because a probe in between restores what it found
            for p in model.parameters():
                p.requires_grad_(True)
            model.train()
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        return run
    metrics = PROBE_METRICS[mode][0]
    if isinstance(metrics, list):  # "default" plus named extras
        metrics = [m.name for m in zest_hf.resolve_metrics("default")] + metrics[1:]
    return lambda: zest_hf.probe(model, batch, metrics=metrics)


def worker(model_name: str, mode: str, task: str, batch_size: int, length: int, repeats: int, seed: int) -> dict:
    model, batch = _setup(model_name, task, batch_size, length, seed)
    res = time_and_peak(make_run(mode, model, batch), repeats)
    res.update(model=model_name, mode=mode, batch=list(batch["input_ids"].shape), seed=seed)
    return res


def interleaved_worker(model_name: str, modes: list[str], task: str, batch_size: int, length: int, repeats: int,
                       seed: int) -> dict:
    """Time every mode round-robin in one process (one warm-up round, then ``repeats`` rounds): on a machine whose
    load drifts, each round's ratio to its own FT step compares operations run seconds apart, not minutes."""
    import statistics

    import torch

    model, batch = _setup(model_name, task, batch_size, length, seed)
    runs = {m: make_run(m, model, batch) for m in modes}
    times = {m: [] for m in modes}
    for r in range(repeats + 1):
        for m in modes:
            t = timed(runs[m])
            if r > 0:  # the first round is the warm-up
                times[m].append(t)
    ratios = {m: statistics.median(t / f for t, f in zip(times[m], times["ft_step"])) for m in modes}
    return {"model": model_name, "mode": "interleaved", "times_s": times, "ratio_median": ratios,
            "threads": torch.get_num_threads()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--task", default="bbc_news")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "probe_cost.json"))
    ap.add_argument("--modes", default=",".join(MODES),
                    help="comma list of what to measure (ft_step is always measured: every ratio is to it); leave "
                         "out probe_grasp where memory is short (SmolLM2's needs ~17 GB)")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--interleaved-worker", metavar="MODEL", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        res = worker(args.worker[0], args.worker[1], args.task, args.batch_size, args.length, args.repeats, args.seed)
        print("RESULT " + json.dumps(res))
        return 0
    if args.interleaved_worker:
        res = interleaved_worker(args.interleaved_worker, args.modes.split(","), args.task, args.batch_size,
                                 args.length, args.repeats, args.seed)
        print("RESULT " + json.dumps(res))
        return 0

    from tqdm.auto import tqdm

    modes = ["ft_step"] + [m for m in MODES[1:] if m in args.modes.split(",")]
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        ap.error(f"unknown --modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    # per model: each mode in a fresh process (time and peak memory), then every mode round-robin in one process
    jobs = [(m, mode) for m in args.models.split(",") for mode in modes + ["interleaved"]]
    common = ["--task", args.task, "--batch-size", str(args.batch_size), "--length", str(args.length),
              "--repeats", str(args.repeats), "--seed", str(args.seed)]
    results, rounds = [], {}
    for m, mode in tqdm(jobs, desc="probe_cost", unit="run"):
        if mode == "interleaved":
            rounds[m] = run_worker([__file__, "--interleaved-worker", m, "--modes", ",".join(modes), *common])
        else:
            results.append(run_worker([__file__, "--worker", m, mode, *common]))

    rows = []
    for m in args.models.split(","):
        by = {r["mode"]: r for r in results if r["model"] == m}
        ft = by["ft_step"]
        for mode in modes[1:]:
            r = by[mode]
            rows.append({
                "model": m,
                "probe": PROBE_METRICS[mode][1],
                "probe_s": r["time_s"], "ft_step_s": ft["time_s"], "time_ratio": r["time_s"] / ft["time_s"],
                "interleaved_ratio": rounds[m]["ratio_median"][mode],
                "probe_peak_mb": r["peak_rss_mb"], "ft_peak_mb": ft["peak_rss_mb"],
                "mem_ratio": r["peak_rss_mb"] / ft["peak_rss_mb"],
                "probe_extra_mb": r["peak_rss_mb"] - r["base_rss_mb"], "ft_extra_mb": ft["peak_rss_mb"] - ft["base_rss_mb"],
            })
    batch = results[0]["batch"]
    head = (f"Probe cost vs one full fine-tuning step (AdamW), batch {batch[0]} x {args.length} tokens of "
            f"{args.task}, seed {args.seed}, {results[0]['threads']} threads, median of {args.repeats} after 1 warm-up; "
            "peak = resident set high-water mark during the operation, weights included. `time ratio`: the "
            "medians of separate fresh processes; `interleaved`: every operation timed round-robin in one process, "
            "the median over rounds of each round's ratio (robust to a machine whose load drifts; its FT step "
            "shares the process with the probes).")
    lines = [head, "", "| model | probe | probe s | FT step s | time ratio | interleaved | probe peak MB | FT peak MB "
             "| memory ratio | probe extra MB | FT extra MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['probe']} | {r['probe_s']:.2f} | {r['ft_step_s']:.2f} | "
                     f"{r['time_ratio']:.2f}x | **{r['interleaved_ratio']:.2f}x** | {r['probe_peak_mb']:.0f} | "
                     f"{r['ft_peak_mb']:.0f} | "
                     f"**{r['mem_ratio']:.2f}x** | {r['probe_extra_mb']:.0f} | {r['ft_extra_mb']:.0f} |")
    lines += ["", "Targets: without grasp <= 2.0x time and <= 1.3x peak memory (with the new signals <= 1.3x time); "
              "with grasp <= 4x time.",
              f"Command: python benchmarks/probe_cost.py --models {args.models} --repeats {args.repeats}"
              + ("" if modes == list(MODES) else f" --modes {','.join(modes[1:])}")]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"raw": results, "interleaved": rounds, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

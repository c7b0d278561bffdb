"""The single-metric study (the paper's Table 1): how well does each zero-shot metric alone rank layers?

For every model-task pair with ground truth in ``predictors/data``, the Kendall tau (tau-b, ties handled) between
the ground-truth contribution ranking and the ranking by each probe column. Taus are signed, as in the paper: a
strongly negative tau means the metric ranks layers well *in reverse*. The noise ceiling of a pair is the tau between
the ground truths of two seeds: no predictor can be expected to agree with one seed better than another seed does.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

try:  # the research extra; say which one before any work starts
    import pandas as pd
    from scipy.stats import kendalltau
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"zest_hf.research needs the research extra ({e.name} is missing): "
                      "pip install 'zest_hf[research]'") from None

from ..probe import ProbeResult
from .records import HEAD_ONLY, read_jsonl, task_slug

__all__ = ["load_ground_truth", "collection_status", "load_probe", "single_metric_taus", "noise_ceilings",
           "seed_noise", "head_only_gaps", "run_study"]


def load_ground_truth(data_dir: str | Path, complete_only: bool = True) -> pd.DataFrame:
    """All contribution lines under ``data_dir/contrib`` as one DataFrame (head-only rows included).

    ``complete_only``: keep only finished collections (:func:`collection_status`). The layers of an unfinished one
    are a biased sample (the collector goes block by block, lowest first) that would skew seed averages, noise
    ceilings and every ranking judged on it.
    """
    rows = []
    for path in sorted(Path(data_dir, "contrib").glob("*/*.jsonl")):
        rows.extend(read_jsonl(path))
    if not rows:
        raise FileNotFoundError(f"no ground truth under {Path(data_dir, 'contrib')}; run `zest contrib` first")
    df = pd.DataFrame(rows)
    return _complete(df, _status(df)) if complete_only else df


def _complete(df: pd.DataFrame, status: pd.DataFrame) -> pd.DataFrame:
    """The lines of ``df`` that belong to complete collections of ``status``."""
    done = status[status["complete"]][["model", "task", "seed"]]
    return df.merge(done, on=["model", "task", "seed"], how="inner")


def _status(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`collection_status` of lines already loaded."""
    rows = []
    for (model, task, seed), g in df.groupby(["model", "task", "seed"]):
        rows.append({"model": model, "task": task, "seed": int(seed),
                     "layers": int(g.loc[g["layer"] != HEAD_ONLY, "layer"].nunique()),
                     "has_head_only": bool((g["layer"] == HEAD_ONLY).any()),
                     "wall_h": g["wall_s"].sum() / 3600 if "wall_s" in g else float("nan")})
    out = pd.DataFrame(rows)
    full = out[out["has_head_only"]].groupby("model")["layers"].max()
    out["complete"] = [bool(r.has_head_only and r.layers >= full.get(r.model, 0)) for r in out.itertuples()]
    return out


def collection_status(data_dir: str | Path) -> pd.DataFrame:
    """One row per (model, task, seed) collection: layers collected, whether it is ``complete``, wall time so far.

    Complete means: it has its head-only line and as many layers as the model's largest collection (every layer,
    or the model's documented subset). The head-only line alone does not tell: the collector writes it after the
    last block, but a pilot (``zest contrib --layers ...``) writes one beside its one layer.
    """
    return _status(load_ground_truth(data_dir, complete_only=False))


def load_probe(data_dir: str | Path, model: str, task: str) -> ProbeResult | None:
    path = Path(data_dir, "probes", model, f"{task_slug(task)}.json")
    return ProbeResult.from_json(path) if path.exists() else None


def _mean_score(gt: pd.DataFrame) -> pd.Series:
    layers = gt[gt["layer"] != HEAD_ONLY]
    return layers.groupby("layer")["score"].mean()


def kendall(a, b) -> float:
    tau = kendalltau(np.asarray(a, float), np.asarray(b, float)).statistic
    return float(tau) if tau == tau else 0.0  # NaN when one side is constant: no ranking information


def single_metric_taus(gt: pd.DataFrame, data_dir: str | Path, min_layers: int = 10) -> pd.DataFrame:
    """Rows: probe columns; columns: ``model/task``; values: Kendall tau vs the seed-averaged ground truth."""
    out = {}
    for (model, task), g in gt.groupby(["model", "task"]):
        score = _mean_score(g)
        if len(score) < min_layers:
            continue
        pr = load_probe(data_dir, model, task)
        if pr is None:
            continue
        df = pr.to_pandas().set_index("name")
        common = [n for n in score.index if n in df.index]
        col = {}
        for c in pr.columns:
            col[c] = kendall(score[common].values, df.loc[common, c].values)
        out[f"{model}/{task}"] = col
    return pd.DataFrame(out)


def noise_ceilings(gt: pd.DataFrame) -> pd.DataFrame:
    """Seed-to-seed Kendall tau of the ground truth, for every model-task with two or more seeds."""
    rows = []
    for (model, task), g in gt.groupby(["model", "task"]):
        g = g[g["layer"] != HEAD_ONLY]
        per_seed = {s: d.set_index("layer")["score"] for s, d in g.groupby("seed")}
        for s1, s2 in itertools.combinations(sorted(per_seed), 2):
            common = per_seed[s1].index.intersection(per_seed[s2].index)
            if len(common) < 10:
                continue
            rows.append({"model": model, "task": task, "seeds": f"{s1},{s2}", "layers": len(common),
                         "tau": kendall(per_seed[s1][common], per_seed[s2][common])})
    return pd.DataFrame(rows)


def seed_noise(gt: pd.DataFrame) -> dict:
    """Seed-to-seed standard deviation of one layer's score, per model: ``std(s_seed0 - s_seed1) / sqrt(2)`` over
    the layers of every model-task with two seeds (pooled), keyed by ``(model, task)`` and by ``model``."""
    out, pooled = {}, {}
    for (model, task), g in gt.groupby(["model", "task"]):
        g = g[g["layer"] != HEAD_ONLY]
        per_seed = [d.set_index("layer")["score"] for _, d in g.groupby("seed")]
        if len(per_seed) < 2:
            continue
        common = per_seed[0].index.intersection(per_seed[1].index)
        diff = (per_seed[0][common] - per_seed[1][common]).to_numpy()
        if len(diff) >= 10:
            out[(model, task)] = float(diff.std(ddof=1) / np.sqrt(2))
            pooled.setdefault(model, []).append(diff)
    for model, diffs in pooled.items():
        d = np.concatenate(diffs)
        out[model] = float(d.std(ddof=1) / np.sqrt(2))
    return out


def head_only_gaps(gt: pd.DataFrame) -> pd.DataFrame:
    """Per model-task: head-only accuracy, best/median/worst single-layer accuracy (seed-averaged), and whether the
    best layers beat head-only beyond seed noise.

    ``gain_sd`` = (mean of the 5 best layers - head-only) / the seed-to-seed sd of one layer's score (the task's own
    when it has two seeds, else pooled over the model's two-seed tasks, else - a model with no two-seed task yet -
    the largest pooled sd of any other model, a conservative stand-in). The top-5 mean of 36 pure-noise draws sits
    ~1.2 sd above their mean, so a task ``separates`` when ``gain_sd > 2``: only then can it teach a predictor which
    layers matter.
    """
    noise = seed_noise(gt)
    pooled = [v for k, v in noise.items() if isinstance(k, str) and v == v]
    fallback = max(pooled) if pooled else float("nan")
    rows = []
    for (model, task), g in gt.groupby(["model", "task"]):
        head = g[g["layer"] == HEAD_ONLY]["val_acc"].mean()
        s = _mean_score(g)
        sd = noise.get((model, task), noise.get(model, fallback))
        gain = (s.nlargest(5).mean() - head) / sd if sd and sd == sd and head == head else float("nan")
        rows.append({"model": model, "task": task, "layers": len(s), "seeds": g["seed"].nunique(),
                     "head_only": head, "best": s.max(), "median": s.median(), "worst": s.min(), "seed_sd": sd,
                     "gain_sd": gain, "separates": bool(gain > 2) if gain == gain else None,
                     "wall_h": g["wall_s"].sum() / 3600})
    return pd.DataFrame(rows)


def run_study(data_dir: str | Path, out_dir: str | Path) -> dict:
    """Write ``single_metric_taus.md`` / ``.csv`` / ``.png`` into ``out_dir``; return the tables."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = load_ground_truth(data_dir, complete_only=False)  # read once: the tables and the in-progress list
    status = _status(raw)
    gt = _complete(raw, status)
    taus = single_metric_taus(gt, data_dir)
    ceil = noise_ceilings(gt)
    gaps = head_only_gaps(gt)
    lines = ["# Single zero-shot metrics vs ground truth (Kendall tau-b, signed)", "",
             "Ground truth: validation accuracy after fine-tuning one layer + head (seed-averaged where several "
             "seeds exist); metric: one probe batch of 16 training examples (seed 0). Reproduce: `zest study`.", ""]
    if not taus.empty:
        best = taus.abs().idxmax()
        lines += ["## Tau per metric and model-task", "", taus.round(2).to_markdown(), "",
                  "## Best single metric per model-task (by |tau|)", "",
                  pd.DataFrame({"metric": best, "tau": [taus.loc[m, c] for c, m in best.items()]}).round(2).to_markdown(), "",
                  "## Mean |tau| over model-tasks, best first", "",
                  taus.abs().mean(axis=1).sort_values(ascending=False).round(3).to_frame("mean |tau|").to_markdown(), ""]
    lines += ["## Noise ceiling: seed-to-seed tau of the ground truth", "",
              ceil.round(3).to_markdown(index=False) if not ceil.empty else "(needs two seeds of a model-task)", "",
              "## Does fine-tuning one layer beat head-only?", "", gaps.round(3).to_markdown(index=False), ""]
    partial = status[~status["complete"]]
    if not partial.empty:
        lines += ["## Still being collected (left out of every table above)", "",
                  partial.round(2).to_markdown(index=False), ""]
    text = "\n".join(lines)
    (out_dir / "single_metric_taus.md").write_text(text)
    taus.to_csv(out_dir / "single_metric_taus.csv")
    if not taus.empty:
        _heatmap(taus, out_dir / "single_metric_taus.png")
    (out_dir / "noise_ceiling.json").write_text(json.dumps(ceil.to_dict(orient="records"), indent=1))
    return {"taus": taus, "ceiling": ceil, "gaps": gaps, "status": status, "markdown": text}


def _heatmap(taus: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * taus.shape[1] + 3, 0.28 * taus.shape[0] + 1.5))
    im = ax.imshow(taus.values, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_yticks(range(taus.shape[0]), taus.index, fontsize=7)
    ax.set_xticks(range(taus.shape[1]), [c.replace("bigbench:", "") for c in taus.columns], rotation=45, ha="right",
                  fontsize=7)
    for i in range(taus.shape[0]):
        for j in range(taus.shape[1]):
            ax.text(j, i, f"{taus.values[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, label="Kendall tau")
    ax.set_title("single zero-shot metric vs one-layer fine-tuning ground truth")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""Training a predictor: RankNet's pairwise logistic loss over layers of the same model-task."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .model import ZestPredictor, layer_features

__all__ = ["ModelTask", "train_predictor", "top_k_precision"]


@dataclass
class ModelTask:
    """Training material of one model-task: its features' raw inputs and ground-truth scores."""

    model: str
    task: str
    layers: list[dict]
    values: dict[str, list[float]]
    scores: np.ndarray  # ground truth, aligned with layers

    @property
    def key(self) -> str:
        return f"{self.model}/{self.task}"


# The predictor is built and trained on the CPU: the caller's CPU generator is restored afterwards.
@torch.random.fork_rng(devices=[])
def train_predictor(
    data: Sequence[ModelTask],
    metrics: Sequence[str],
    *,
    normalization: str = "rank",
    arch: str = "mlp",
    hidden: int = 32,
    prior: bool = True,
    depth_knots: int = 5,
    steps: int = 1500,
    batch_pairs: int = 256,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    tie_eps: float = 1e-9,
) -> ZestPredictor:
    """Fit a :class:`ZestPredictor` with RankNet's pairwise loss on within-model-task pairs (seeded, CPU, seconds).
    The caller's random state is left as it was."""
    if not data:
        raise ValueError("no training model-tasks")
    for d in data:
        scores = np.asarray(d.scores, dtype=float)
        if scores.ndim != 1 or len(scores) != len(d.layers):
            raise ValueError(f"model-task {d.key} has {len(d.layers)} layers but scores of shape {scores.shape}: "
                             "give one ground-truth score per layer, in the order of its layers")
        bad = [d.layers[i]["name"] for i in np.where(~np.isfinite(scores))[0][:3]]
        if bad:
            raise ValueError(f"model-task {d.key} has NaN/inf ground-truth scores (layers {bad}); drop those layers "
                             "or the model-task")
    torch.default_generator.manual_seed(seed)  # not torch.manual_seed, which reseeds every GPU's generator too
    rng = np.random.default_rng(seed)
    model = ZestPredictor(list(metrics), normalization=normalization, arch=arch, hidden=hidden, prior=prior,
                          depth_knots=depth_knots,
                          trained_on={"model_tasks": [d.key for d in data], "seed": seed, "steps": steps})
    feats = [torch.from_numpy(layer_features(d.layers, d.values, model.metrics, normalization, prior,
                                             model.depth_knots)) for d in data]
    pairs = []
    for d in data:
        s = d.scores
        i, j = np.where(s[:, None] - s[None, :] > tie_eps)  # i better than j
        pairs.append((i, j))
    usable = [k for k, (i, _) in enumerate(pairs) if len(i)]
    if not usable:
        raise ValueError("every training model-task has all layers tied: nothing to learn from")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    # A network this small gains nothing from intra-op threads, and loses a lot when the cores are busy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fit(model, opt, feats, pairs, usable, rng, steps, batch_pairs)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model


def _fit(model, opt, feats, pairs, usable, rng, steps, batch_pairs) -> None:
    for _ in range(steps):
        ks = rng.choice(usable, size=batch_pairs)
        xi, xj = [], []
        for k in np.unique(ks):
            n = int((ks == k).sum())
            i, j = pairs[k]
            pick = rng.integers(0, len(i), size=n)
            xi.append(feats[k][i[pick]])
            xj.append(feats[k][j[pick]])
        xi, xj = torch.cat(xi), torch.cat(xj)
        loss = nn.functional.softplus(-(model(xi) - model(xj))).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def top_k_precision(pred: np.ndarray, truth: np.ndarray, k: int = 5) -> float:
    """|top-k by prediction  intersect  top-k by ground truth| / k."""
    k = min(k, len(pred))
    a = set(np.argsort(-pred, kind="stable")[:k])
    b = set(np.argsort(-truth, kind="stable")[:k])
    return len(a & b) / k if k else math.nan

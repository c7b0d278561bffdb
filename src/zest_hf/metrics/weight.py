"""Static metrics: the weight itself, before any data (the paper's "Avg. Wt" and "Std. Wt")."""

import torch

from .base import register_metric, std_mean, total


@register_metric(
    "weight",
    source="weight",
    columns=("weight_mean", "weight_std", "weight_abs_mean"),
    group="static",
    doc="mean, std (unbiased) and mean |.| of the weight's entries",
)
def weight(w: torch.Tensor, _=None) -> dict:
    std, mean = std_mean(w, correction=1 if w.numel() > 1 else 0)
    return {"weight_mean": mean, "weight_std": std, "weight_abs_mean": total(w.abs()) / w.numel()}

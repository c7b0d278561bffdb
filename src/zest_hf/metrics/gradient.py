"""Backward metrics: statistics of the weight gradient ``g = dL/dW`` (the paper's "Avg. Grad", "Std. Grad")."""

import torch

from .base import register_metric, std_mean


@register_metric(
    "gradient",
    source="grad",
    columns=("grad_mean", "grad_std", "grad_abs_mean", "grad_abs_std"),
    group="backward",
    doc="mean and std (unbiased) of dL/dW's entries, and of their absolute values",
)
def gradient(_w, g: torch.Tensor) -> dict:
    c = 1 if g.numel() > 1 else 0
    std, mean = std_mean(g, correction=c)
    astd, amean = std_mean(g.abs(), correction=c)
    return {"grad_mean": mean, "grad_std": std, "grad_abs_mean": amean, "grad_abs_std": astd}

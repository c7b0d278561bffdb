"""grad_norm (zero-cost-nas): the gradient's L2 norm, and its size-normalised form (the RMS entry).

Also ``rgn``: ||g|| / ||W||, the relative gradient norm surgical fine-tuning (Lee et al. 2022) uses to pick layers.
"""

import math

import torch

from .base import register_metric


@register_metric(
    "grad_norm",
    source="grad",
    columns=("grad_norm", "grad_norm_mean", "rgn"),
    group="backward",
    doc="||dL/dW||_2; per-entry RMS = ||g|| / sqrt(n); rgn = ||g|| / ||W||",
)
def grad_norm(w: torch.Tensor, g: torch.Tensor) -> dict:
    gn = torch.linalg.vector_norm(g).item()
    wn = torch.linalg.vector_norm(w).item()
    return {"grad_norm": gn, "grad_norm_mean": gn / math.sqrt(g.numel()), "rgn": gn / wn if wn > 0 else float("inf")}

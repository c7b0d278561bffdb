"""plain: the signed first-order Taylor term ``g * W`` (zero-cost-nas "plain"), summed over the layer."""

import torch

from .base import register_metric, total


@register_metric(
    "plain",
    source="grad",
    columns=("plain", "plain_mean"),
    group="backward",
    doc="sum of dL/dW * W (signed); _mean divides by the number of entries",
)
def plain(w: torch.Tensor, g: torch.Tensor) -> dict:
    s = total(g * w)
    return {"plain": s, "plain_mean": s / w.numel()}

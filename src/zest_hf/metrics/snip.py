"""snip (Lee et al. 2018): connection sensitivity ``|g * W|``, summed over the layer."""

import torch

from .base import register_metric, total


@register_metric(
    "snip",
    source="grad",
    columns=("snip", "snip_mean"),
    group="backward",
    doc="sum of |dL/dW * W|; _mean divides by the number of entries",
)
def snip(w: torch.Tensor, g: torch.Tensor) -> dict:
    s = total((g * w).abs_())
    return {"snip": s, "snip_mean": s / w.numel()}

"""fisher (Theis et al. 2018, as zero-cost-nas computes it): channel saliency from activations times their gradients.

For each output channel c: ``F_c = 0.5 * mean over samples of (sum over tokens of y_c * dL/dy_c)^2``. zero-cost-nas
broadcasts ``F_c`` to every weight of channel c and sums, so the raw layer value is ``in_features * sum_c F_c``
(kept for comparability with the reference); ``fisher_mean`` is the per-entry mean, i.e. the mean of ``F_c`` over
channels, which does not grow with the layer's width.
"""

import torch

from .base import register_metric


@register_metric(
    "fisher",
    source="fisher",
    columns=("fisher", "fisher_mean"),
    group="backward",
    doc="in_features * sum_c 0.5 * mean_b (sum_t y * dL/dy)^2; _mean = mean over output channels",
)
def fisher(w: torch.Tensor, s: torch.Tensor) -> dict:
    per_channel = 0.5 * s.float().pow(2).mean(0)  # (out_features,)
    out_features = per_channel.numel()
    in_features = w.numel() // out_features
    total_c = per_channel.sum().item()
    return {"fisher": in_features * total_c, "fisher_mean": total_c / out_features}

"""grad_snr: how much the micro-batches of the probe batch agree on a layer's gradient.

With ``G_m`` the gradient parts of the ``M`` micro-batches (:class:`~zest_hf.metrics.GradParts`),
``grad_snr = sum_e mean_m(G_m[e])^2 / sum_e var_m(G_m[e])`` (variance with ``M - 1``), summed over the weight's
entries ``e``: the squared signal over the noise of the per-micro-batch gradient, the inverse of the "simple"
gradient noise scale of McCandlish et al. (2018) up to the micro-batch size. High: a direction every part of the
batch wants, which a few steps on more data will keep. No extra tokens: the parts come from the probe's own backward.
Not in ``metrics="default"``.
"""

import torch

from .base import GradParts, register_metric, total


@register_metric(
    "grad_snr",
    source="grad_parts",
    columns=("grad_snr",),
    group="backward",
    doc="sum_e mean_m(G_m)^2 / sum_e var_m(G_m) over the probe batch's micro-batch gradient parts",
    default=False,
)
def grad_snr(w: torch.Tensor, parts: GradParts) -> dict:
    if len(parts.parts) < 2:
        return {"grad_snr": float("nan")}  # one micro-batch: no spread to measure
    # two passes over the parts, no stacked copy: on a CPU var_mean along a new axis costs ~25x this
    m = len(parts.parts)
    mean = parts.total.div_(m)  # with two or more parts, total is a fresh tensor
    noise = sum(total(torch.sub(g, mean).square_()) for g in parts.parts) / (m - 1)
    signal = total(mean.square())
    return {"grad_snr": signal / noise if noise > 0 else (float("inf") if signal > 0 else 0.0)}

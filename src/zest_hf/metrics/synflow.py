"""synflow (Tanaka et al. 2020): data-free synaptic flow ``|W * dR/dW|``, summed over the layer.

``R`` is the sum of the model's output logits for an all-ones input (``inputs_embeds`` of ones, batch of one) after
every floating-point parameter has been replaced by its absolute value. The probe flips signs in place and restores
them bit for bit in ``finally`` (it keeps one bit per weight, not a copy of the model). The reference runs in
float64; here the model's own dtype is used, so on very deep models the objective can overflow: the probe reports
that as a non-finite metric rather than ranking with it.
"""

import torch

from .base import register_metric, total


@register_metric(
    "synflow",
    source="synflow",
    columns=("synflow", "synflow_mean"),
    group="backward",
    doc="sum of |W * dR/dW| with R = sum of outputs of the all-positive model on an all-ones input",
)
def synflow(w: torch.Tensor, g: torch.Tensor) -> dict:
    s = total((w * g).abs_())
    return {"synflow": s, "synflow_mean": s / w.numel()}

"""Forward metrics: statistics of the layer's OUTPUT activations ``y = W x (+ b)`` over the probe batch.

Only real tokens count: positions where the batch's ``attention_mask`` is 0 (padding) are left out, since their
values depend on the padding length, not on the task. Std is the unbiased one.
"""

from .base import ActStats, register_metric


@register_metric(
    "activation",
    source="forward",
    columns=("act_mean", "act_std", "act_abs_mean", "act_abs_std"),
    group="forward",
    doc="mean and std of the layer's outputs, and of their absolute values, over non-padding tokens",
)
def activation(_w, s: ActStats) -> dict:
    return {"act_mean": s.mean, "act_std": s.std(), "act_abs_mean": s.abs_mean, "act_abs_std": s.abs_std()}

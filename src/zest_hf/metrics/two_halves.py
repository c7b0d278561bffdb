"""two_halves: does a step learned on one half of the probe batch help on the other half?

The batch's micro-batches split into two disjoint halves A and B with gradient parts ``g_A`` and ``g_B``
(:class:`~zest_hf.metrics.GradParts`). Adam's first step on a layer is ``-lr * sign(g)`` whatever the gradient's
scale, so the first-order change of B's loss after the layer's first step on A is ``-lr * sum(g_B * sign(g_A))``.
Symmetrised over the two halves, per unit learning rate:

* ``gen_sign = (sum(g_B * sign(g_A)) + sum(g_A * sign(g_B))) / 2``: the predicted loss decrease on held-out data
  (grows with the layer's size, as snip does); ``gen_sign_mean`` divides by the number of entries;
* ``gen_agree = gen_sign / ((sum|g_A| + sum|g_B|) / 2)``, in [-1, 1]: the share of that decrease the other half
  keeps (1: the halves agree on every sign; 0: a step on one half does nothing for the other).

A generalisation signal from the probe batch alone. Not in ``metrics="default"``.
"""

import torch

from .base import GradParts, register_metric, total


@register_metric(
    "two_halves",
    source="grad_parts",
    columns=("gen_sign", "gen_sign_mean", "gen_agree"),
    group="backward",
    doc="loss decrease on one half of the batch predicted from an Adam (sign) step on the other, symmetrised",
    default=False,
)
def two_halves(w: torch.Tensor, parts: GradParts) -> dict:
    if len(parts.parts) < 2:
        nan = float("nan")
        return {"gen_sign": nan, "gen_sign_mean": nan, "gen_agree": nan}
    a, b = parts.halves
    cross = 0.5 * (total(b * torch.sign(a)) + total(a * torch.sign(b)))
    scale = 0.5 * (total(a.abs()) + total(b.abs()))
    return {"gen_sign": cross, "gen_sign_mean": cross / a.numel(),
            "gen_agree": cross / scale if scale > 0 else 0.0}

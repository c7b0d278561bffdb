"""grasp (Wang et al. 2020): ``-W * (H g)``, summed over the layer.

``H g`` is the Hessian-gradient product of the batch loss, obtained with one double backward: the first backward is
taken with ``create_graph=True``, then ``z = sum(g . stop_grad(g))`` is differentiated once more. Opt-in
(``metrics="all"`` or ``"grasp"``): it roughly doubles the probe's cost and needs attention kernels that support
double backward (the probe forces PyTorch's math SDPA kernel while it runs).
"""

import torch

from .base import register_metric, total


@register_metric(
    "grasp",
    source="hessian",
    columns=("grasp", "grasp_mean"),
    group="backward",
    doc="sum of -W * (H dL/dW) (one double backward); _mean divides by the number of entries",
    default=False,
)
def grasp(w: torch.Tensor, hg: torch.Tensor) -> dict:
    s = -total(w * hg)
    return {"grasp": s, "grasp_mean": s / w.numel()}

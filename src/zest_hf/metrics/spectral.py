"""Data-free spectral statistics of the weight: what Spectrum, AlphaLoRA and OwLore rank layers by.

From the singular values ``s_1 >= ... >= s_r`` of ``W`` (``r = min(out, in)``):

* ``spectral_snr``: Spectrum's score (arXiv 2406.06623; ``compute_snr`` in cognitivecomputations/spectrum,
  spectrum.py). The noise scale is estimated from the spread of the singular values, ``sigma = IQR(s) / 1.349``;
  the Marchenko-Pastur bulk edge of a ``out x in`` noise matrix at that scale is ``sigma * (1 + sqrt(beta))`` with
  ``beta = min / max`` of the two sizes; the score is (sum of the singular values above the edge) / (sum of those at
  or below it), divided by ``s_1`` as Spectrum does. High: structure beyond noise.
* ``log_cond``: ``log10(s_1 / s_r)``, the condition number on a log scale (``s_r`` floored at ``s_1 * 1e-12`` so
  that a rank-deficient weight gives a large finite value rather than infinity).
* ``alpha_hill``: the heavy-tail exponent of the eigenvalue spectrum ``lambda = s^2`` of ``W^T W``, by the Hill
  estimator with the tail starting at the median eigenvalue (AlphaPruning's and OwLore's ``xmin_mid`` variant of
  WeightWatcher's alpha): ``1 + k / sum_{i in tail} log(lambda_i / lambda_min_tail)`` over the ``k`` tail
  eigenvalues. Lower alpha: heavier tail, a better-trained layer in WeightWatcher's reading.

One SVD per layer (``torch.linalg.svdvals`` in fp32), no data. Not in ``metrics="default"``.
"""

import math

import torch

from .base import register_metric


@register_metric(
    "spectral",
    source="weight",
    columns=("spectral_snr", "log_cond", "alpha_hill"),
    group="static",
    doc="Spectrum's singular-value SNR about the Marchenko-Pastur edge; log10 condition number; Hill alpha of W^T W",
    default=False,
)
def spectral(w: torch.Tensor, _=None) -> dict:
    s = torch.linalg.svdvals(w.float())  # descending
    s_max = s[0].item()
    if s_max == 0.0:
        return {"spectral_snr": 0.0, "log_cond": 0.0, "alpha_hill": float("nan")}
    sigma = (torch.quantile(s, 0.75) - torch.quantile(s, 0.25)).item() / 1.349
    rows, cols = w.shape
    beta = min(rows, cols) / max(rows, cols)
    edge = sigma * (1.0 + math.sqrt(beta))
    signal = s[s > edge].sum().item()
    noise = s[s <= edge].sum().item()
    snr = (signal / noise if noise > 0 else float("inf")) / s_max
    log_cond = math.log10(s_max / max(s[-1].item(), s_max * 1e-12))
    lam = (s.double() ** 2).flip(0)  # ascending
    lam = lam[lam > 0]
    start = len(lam) // 2  # the median eigenvalue opens the tail
    tail = lam[start:].log()
    k = tail.numel()
    spread = (tail - tail[0]).sum().item()
    alpha = 1.0 + k / spread if spread > 0 else float("inf")
    return {"spectral_snr": snr, "log_cond": log_cond, "alpha_hill": alpha}

"""Zero-shot metrics, one file each, registered by name. See :mod:`zest_hf.metrics.base`.

The import order below is the registry order, which is the probe table's column order: static, forward, backward,
then grasp and the signals left out of "default" (spectral, grad_snr, two_halves), so that "default" keeps a
stable column order. Adding a metric is one new file and
one name here.
"""

from . import weight, activation, gradient, grad_norm, plain, snip, fisher, synflow, grasp  # noqa: F401  (registers)
from . import spectral, grad_snr, two_halves  # noqa: F401,E402  (registers; after grasp: not in "default")
from .base import METRICS, SOURCES, ActStats, GradParts, Metric, default_columns, register_metric, resolve_metrics

__all__ = ["METRICS", "SOURCES", "ActStats", "GradParts", "Metric", "default_columns", "register_metric", "resolve_metrics"]

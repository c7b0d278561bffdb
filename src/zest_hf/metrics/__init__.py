"""Zero-shot metrics, one file each, registered by name. See :mod:`zest_hf.metrics.base`.

The import order below is the registry order, which is the probe table's column order: static, forward, backward,
and grasp last, so that "default" (all but grasp) keeps a stable column order. Adding a metric is one new file and
one name here.
"""

from . import weight, activation, gradient, grad_norm, plain, snip, fisher, synflow, grasp  # noqa: F401  (registers)
from .base import METRICS, SOURCES, ActStats, Metric, default_columns, register_metric, resolve_metrics

__all__ = ["METRICS", "SOURCES", "ActStats", "Metric", "default_columns", "register_metric", "resolve_metrics"]

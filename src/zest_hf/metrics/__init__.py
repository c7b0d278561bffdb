"""Zero-shot metrics, one file each, registered by name. See :mod:`zest_hf.metrics.base`."""

from . import activation, fisher, grad_norm, gradient, grasp, plain, snip, synflow, weight  # noqa: F401  (registers)
from .base import METRICS, SOURCES, ActStats, Metric, register_metric, resolve_metrics

# Registry order is the table order: static, forward, backward; grasp stays last so "default" (all but grasp)
# keeps a stable column order.
_ORDER = ["weight", "activation", "gradient", "grad_norm", "plain", "snip", "fisher", "synflow", "grasp"]
_reordered = {name: METRICS[name] for name in _ORDER if name in METRICS}
_reordered.update({k: v for k, v in METRICS.items() if k not in _reordered})
METRICS.clear()
METRICS.update(_reordered)

__all__ = ["METRICS", "SOURCES", "ActStats", "Metric", "register_metric", "resolve_metrics"]

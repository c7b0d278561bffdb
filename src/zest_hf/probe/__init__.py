"""Stage 2, the probe: one forward and one backward on one batch give every candidate layer a row of metrics.

* :mod:`.batch` - which loss is differentiated, and the checks a batch passes before any pass touches the model;
* :mod:`.state` - borrowing the model and giving it back bit for bit (flags, ``.grad``, modes, hooks);
* :mod:`.run` - :func:`probe` itself: the passes the requested metrics need;
* :mod:`.result` - :class:`ProbeResult`, the table and its JSON form.

Names load on first use, so ``import zest_hf`` stays free of torch until a probe runs.
"""

from .._lazy import lazy_exports

__all__ = ["probe", "ProbeResult", "NonFiniteError", "MissingLabelsError", "check_batch", "prepare_batch",
           "model_loss", "is_causal_lm"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "probe": ".run",
    "ProbeResult": ".result",
    "NonFiniteError": "zest_hf.errors",
    "MissingLabelsError": "zest_hf.errors",
    "check_batch": ".batch",
    "prepare_batch": ".batch",
    "model_loss": ".batch",
    "is_causal_lm": "zest_hf.modeling",
})

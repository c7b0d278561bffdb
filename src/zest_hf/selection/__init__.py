"""Stage 5, selection: from a ranking to the exact list of modules to train, and a resolved ZestConfig.

* :mod:`.rank` - probe one batch and score every candidate with a predictor (:class:`Ranking`, best first);
* :mod:`.rules` - pure functions from ranked rows and a size (``top_k``, ``budget``, ``cost_weight``) to the chosen
  ``(name, score)`` pairs: plain data that can be written to JSON or broadcast, so every process trains the same
  layers;
* :mod:`.resolve` - :func:`select`: probe, rank, choose, and return the config resolved (the model left as it was).

Every check that can fail (sizes, candidates, head, labels) runs before the probe's first pass.
"""

from .._lazy import lazy_exports

__all__ = ["choose", "cost_aware", "backward_cost", "check_size", "select", "SelectionError"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "choose": ".rules", "cost_aware": ".rules", "backward_cost": ".rules",
    "check_size": "zest_hf.validation", "SelectionError": "zest_hf.errors", "select": ".resolve",
})

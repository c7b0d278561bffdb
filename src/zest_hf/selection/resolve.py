"""Resolving a ZestConfig: probe one batch, rank the candidates, apply the selection rule, record how."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..validation import check_cost_weight, check_size
from .rules import backward_cost, choose, num_blocks_of

__all__ = ["select"]


def select(model: nn.Module, batch: Mapping, config, *, progress: bool = False):
    """Probe ``model`` on ``batch``, rank its candidates and return ``config`` resolved (a new object).

    Args:
        model: A transformers model with a loss head (a ``PeftModel`` is unwrapped); it is left exactly as it was.
        batch: One collated batch, as the model's training loop would see it (labels included unless a causal LM).
        config: A :class:`~zest_hf.peft_method.ZestConfig`. If it is already resolved it is returned as is: no
            probe, no chance of another choice.
        progress: Show a progress bar over the probe's passes.

    Returns:
        The resolved config, ready for ``peft.get_peft_model(model, config)``.

    Example::

        >>> cfg = zest_hf.ZestConfig(top_k=4, predictor="metric:grad_norm")   # doctest: +SKIP
        >>> cfg = zest_hf.select(model, batch, cfg)           # doctest: +SKIP
        >>> peft_model = peft.get_peft_model(model, cfg)   # doctest: +SKIP
    """
    from .._version import __version__
    from ..modeling import base_model, find_head
    from ..peft_method.model import check_heads
    from ..probe.batch import check_batch
    from ..targets import find_targets
    from .rank import rank

    if config.is_resolved:
        return config
    check_cost_weight(config.cost_weight, error=ValueError)  # a value set after the config was built
    base = base_model(model)
    targets = find_targets(base, config.candidates, config.exclude_modules)
    check_size(config.top_k, config.budget, len(targets))
    head = list(config.modules_to_save) if config.modules_to_save is not None else find_head(base)
    check_heads(base, head)  # a misspelt head would be found only when the adapter is built, after the probe
    check_batch(base, batch)
    ranking = rank(base, batch, config.predictor, revision=config.predictor_revision, targets=targets,
                   seed=config.probe_seed, progress=progress)
    chosen = choose(ranking.layers, top_k=config.top_k, budget=config.budget,
                    cost_weight=config.cost_weight)
    sizes = {r["name"]: int(r["num_params"]) for r in ranking.layers}
    blocks = {r["name"]: int(r["block"]) for r in ranking.layers}
    probe_meta = ranking.meta.get("probe", {})
    info = {
        "predictor": ranking.predictor,
        "predictor_revision": config.predictor_revision,
        "num_candidates": len(targets),
        "candidate_params": sum(sizes.values()),
        "selected_params": sum(sizes[n] for n, _ in chosen),
        "backward_cost": backward_cost([blocks[n] for n, _ in chosen], num_blocks_of(ranking.layers)),
        "probe": {k: probe_meta.get(k) for k in ("model_class", "batch_shape", "loss", "seed", "dtype")},
        "zest_hf_version": __version__,
    }
    return config.resolved(chosen, modules_to_save=head, info=info)

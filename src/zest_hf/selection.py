"""Selection: from a ranking to the exact list of modules to train.

Two steps, kept apart on purpose:

* :func:`choose` is a pure function of the ranked rows (best first, each with ``name``, ``score``, ``num_params``)
  and the requested size (``top_k`` or a parameter ``budget``). It returns ``[(name, score), ...]``: plain data that
  can be written to JSON, or computed on one process and broadcast to the others, so that every process trains the
  same layers.
* :func:`select` runs the probe and the predictor on one batch (:func:`zest_hf.rank.rank`, which leaves the model as
  it was) and returns a *resolved* :class:`~zest_hf.peft_method.ZestConfig`: the same config with
  ``selected_modules``, ``selection_scores`` and ``modules_to_save`` filled in. A resolved config never probes again.

Every check that can fail (sizes, candidates, head, labels) runs before the probe's first pass.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

from torch import nn

__all__ = ["choose", "check_size", "select", "SelectionError"]


class SelectionError(ValueError):
    """A selection that cannot be made or applied: bad ``top_k``/``budget``, or modules the model does not have."""


def check_size(top_k: int | None = None, budget: float | None = None, num_candidates: int | None = None) -> None:
    """Validate the requested selection size; with ``num_candidates``, also that ``top_k`` fits.

    Raises:
        SelectionError: ``top_k`` not an integer >= 1 (or more than the candidates), ``budget`` outside (0, 1], both
            or neither given.
    """
    if top_k is not None and budget is not None:
        raise SelectionError(f"give either top_k ({top_k}) or budget ({budget}), not both")
    if top_k is None and budget is None:
        raise SelectionError("give top_k=<number of layers> or budget=<fraction of the candidates' parameters>")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
            raise SelectionError(f"top_k must be an integer >= 1, got {top_k!r}")
        if top_k < 1:
            raise SelectionError(f"top_k must be >= 1, got {top_k}: ZEST trains at least one layer besides the head")
        if num_candidates is not None and top_k > num_candidates:
            raise SelectionError(
                f"top_k={top_k} but the model has only {num_candidates} candidate layers; lower top_k, or widen the "
                "candidates (ZestConfig(candidates=...))."
            )
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not 0 < float(budget) <= 1:
            raise SelectionError(
                f"budget must be a fraction in (0, 1] of the candidate layers' parameters, got {budget!r} "
                "(e.g. budget=0.05 trains the best layers that together hold at most 5% of them)."
            )


def choose(layers: Sequence[Mapping], *, top_k: int | None = None, budget: float | None = None
           ) -> list[tuple[str, float]]:
    """The selected ``(name, score)`` pairs, best first.

    Args:
        layers: Every candidate, best first (``Ranking.layers``): mappings with ``name``, ``score`` and, for a
            budget, ``num_params``.
        top_k: Take the ``top_k`` best layers.
        budget: Take the longest run of best layers whose parameters add up to at most ``budget`` times those of
            all candidates. The run stops at the first layer that does not fit (no smaller layer further down
            jumps the queue), so a budget selection is always the top-k for some k.

    Raises:
        SelectionError: invalid sizes, a non-finite score, or a budget too small for even the best layer.

    Example::

        >>> rows = [{"name": "a", "score": 3.0, "num_params": 10}, {"name": "b", "score": 1.0, "num_params": 30}]
        >>> choose(rows, top_k=1)
        [('a', 3.0)]
        >>> choose(rows, budget=0.5)
        [('a', 3.0)]
    """
    check_size(top_k, budget, len(layers))
    bad = [r["name"] for r in layers if not math.isfinite(float(r["score"]))]
    if bad:
        raise SelectionError(f"non-finite scores for {bad[:3]}; they cannot be ranked (re-probe in fp32/bf16)")
    if top_k is not None:
        return [(str(r["name"]), float(r["score"])) for r in layers[:top_k]]
    total = sum(int(r["num_params"]) for r in layers)
    allowed = float(budget) * total
    chosen, used = [], 0
    for r in layers:
        if used + int(r["num_params"]) > allowed:
            break
        chosen.append((str(r["name"]), float(r["score"])))
        used += int(r["num_params"])
    if not chosen:
        first = layers[0]
        raise SelectionError(
            f"budget={budget} allows {int(allowed)} of the candidates' {total} parameters, but the best layer "
            f"({first['name']}) alone has {first['num_params']}; raise the budget to at least "
            f"{int(first['num_params']) / total:.4g} or use top_k."
        )
    return chosen


def select(model: nn.Module, batch: Mapping, config):
    """Probe ``model`` on ``batch``, rank its candidates and return ``config`` resolved (a new object).

    Args:
        model: A transformers model with a loss head (a ``PeftModel`` is unwrapped); it is left exactly as it was.
        batch: One collated batch, as the model's training loop would see it (labels included unless a causal LM).
        config: A :class:`~zest_hf.peft_method.ZestConfig`. If it is already resolved it is returned as is: no
            probe, no chance of another choice.

    Returns:
        The resolved config, ready for ``peft.get_peft_model(model, config)``.

    Example::

        >>> cfg = zest_hf.ZestConfig(top_k=4, predictor="metric:grad_norm")   # doctest: +SKIP
        >>> cfg = zest_hf.select(model, batch, cfg)           # doctest: +SKIP
        >>> peft_model = peft.get_peft_model(model, cfg)   # doctest: +SKIP
    """
    from . import __version__
    from .heads import find_head
    from .loss import check_batch
    from .rank import rank
    from .targets import _unwrap, find_targets

    if config.is_resolved:
        return config
    get_base = getattr(model, "get_base_model", None)
    base = _unwrap(get_base() if callable(get_base) else model)
    targets = find_targets(base, config.candidates, config.exclude_modules)
    check_size(config.top_k, config.budget, len(targets))
    head = list(config.modules_to_save) if config.modules_to_save is not None else find_head(base)
    check_batch(base, batch)
    ranking = rank(base, batch, config.predictor, revision=config.predictor_revision, targets=targets,
                   seed=config.probe_seed)
    chosen = choose(ranking.layers, top_k=config.top_k, budget=config.budget)
    sizes = {r["name"]: int(r["num_params"]) for r in ranking.layers}
    probe_meta = ranking.meta.get("probe", {})
    info = {
        "predictor": ranking.predictor,
        "predictor_revision": config.predictor_revision,
        "num_candidates": len(targets),
        "candidate_params": sum(sizes.values()),
        "selected_params": sum(sizes[n] for n, _ in chosen),
        "probe": {k: probe_meta.get(k) for k in ("model_class", "batch_shape", "loss", "seed", "dtype")},
        "zest_hf_version": __version__,
    }
    return config.resolved(chosen, modules_to_save=head, info=info)

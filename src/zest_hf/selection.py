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
from collections.abc import Mapping, Sequence

from torch import nn
from .errors import SelectionError
from .validation import check_cost_weight, check_size

__all__ = ["choose", "cost_aware", "backward_cost", "check_size", "select", "SelectionError"]



def choose(layers: Sequence[Mapping], *, top_k: int | None = None, budget: float | None = None,
           cost_weight: float = 0.0) -> list[tuple[str, float]]:
    """The selected ``(name, score)`` pairs, best first.

    Args:
        layers: Every candidate, best first (``Ranking.layers``): mappings with ``name``, ``score`` and, for a
            budget, ``num_params``; for ``cost_weight``, ``block``.
        top_k: Take the ``top_k`` best layers.
        budget: Take the longest run of best layers whose parameters add up to at most ``budget`` times those of
            all candidates. The run stops at the first layer that does not fit (no smaller layer further down
            jumps the queue), so a budget selection is always the top-k for some k.
        cost_weight: Trade predicted importance against the cost of a training step (see :func:`cost_aware`).
            ``0`` (default) is plain top-k / budget.

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
    check_cost_weight(cost_weight, error=SelectionError)
    if cost_weight > 0:
        return cost_aware(layers, top_k=top_k, budget=budget, cost_weight=float(cost_weight))
    return _prefix(layers, top_k, budget, sum(int(r["num_params"]) for r in layers) if budget is not None else 0)


def _prefix(layers: Sequence[Mapping], top_k: int | None, budget: float | None, total: int) -> list[tuple[str, float]]:
    """Plain selection from ``layers`` (best first): the first ``top_k``, or the budget's longest prefix."""
    if top_k is not None:
        return [(str(r["name"]), float(r["score"])) for r in layers[:top_k]]
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


def backward_cost(blocks: Sequence[int], num_blocks: int) -> float:
    """Fraction of the blocks a backward pass must run through to reach the lowest of ``blocks``: a training
    step's compute and activation memory beyond the forward grow with it (frozen blocks below it need neither)."""
    return (num_blocks - min(blocks)) / num_blocks


def cost_aware(layers: Sequence[Mapping], *, top_k: int | None = None, budget: float | None = None,
               cost_weight: float = 1.0) -> list[tuple[str, float]]:
    """Cost-aware selection: predicted importance minus ``cost_weight`` x the step's backward depth.

    A step's cost is set by the LOWEST selected layer: backward has to run from the loss down to it, through every
    block in between, and keep their activations. So for every possible floor block ``f``, take the plain selection
    (``top_k`` or ``budget``) among the layers at or above ``f``, and keep the floor that maximises

        utility(S) / |S_plain|  -  cost_weight * backward_cost(S)

    where ``utility`` sums the layers' rank utilities ``1 - rank / (n - 1)`` (best layer 1, worst 0: the predictor's
    scores have no common scale, ranks do), ``|S_plain|`` is the size of the unconstrained selection, and
    ``backward_cost`` is the fraction of blocks backward traverses (:func:`backward_cost`). ``cost_weight = 0`` is
    plain top-k; a large one keeps every selected layer in the top blocks. Ties go to the cheaper floor.
    """
    if any("block" not in r for r in layers):
        raise SelectionError("cost-aware selection needs each layer's 'block' (rank rows from zest_hf.rank have it)")
    n = len(layers)
    utility = {str(r["name"]): 1.0 - i / max(n - 1, 1) for i, r in enumerate(layers)}
    num_blocks = max(int(r["block"]) for r in layers) + 1
    total = sum(int(r["num_params"]) for r in layers) if budget is not None else 0
    plain = _prefix(layers, top_k, budget, total)
    blocks = {str(r["name"]): int(r["block"]) for r in layers}
    best, best_value = plain, None
    for floor in sorted({int(r["block"]) for r in layers}, reverse=True):  # cheapest floor first: ties keep it
        allowed = [r for r in layers if int(r["block"]) >= floor]
        if top_k is not None and len(allowed) < top_k:
            continue
        try:
            chosen = _prefix(allowed, top_k, budget, total)
        except SelectionError:
            continue
        value = (sum(utility[nm] for nm, _ in chosen) / len(plain)
                 - cost_weight * backward_cost([blocks[nm] for nm, _ in chosen], num_blocks))
        if best_value is None or value > best_value + 1e-12:
            best, best_value = chosen, value
    return best


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
    from ._version import __version__
    from .loss import check_batch
    from .rank import rank
    from .modeling import base_model, find_head
    from .targets import find_targets

    if config.is_resolved:
        return config
    base = base_model(model)
    targets = find_targets(base, config.candidates, config.exclude_modules)
    check_size(config.top_k, config.budget, len(targets))
    head = list(config.modules_to_save) if config.modules_to_save is not None else find_head(base)
    check_batch(base, batch)
    ranking = rank(base, batch, config.predictor, revision=config.predictor_revision, targets=targets,
                   seed=config.probe_seed)
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
        "backward_cost": backward_cost([blocks[n] for n, _ in chosen], max(blocks.values()) + 1),
        "probe": {k: probe_meta.get(k) for k in ("model_class", "batch_shape", "loss", "seed", "dtype")},
        "zest_hf_version": __version__,
    }
    return config.resolved(chosen, modules_to_save=head, info=info)

"""Selection rules: from ranked rows (best first) and a requested size to the exact ``(name, score)`` pairs.

Pure functions of plain data, so the result can be written to JSON, or computed on one process and broadcast to the
others, so that every process trains the same layers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..errors import SelectionError
from ..validation import check_cost_weight, check_size

__all__ = ["choose", "cost_aware", "backward_cost", "fill"]


def choose(layers: Sequence[Mapping], *, top_k: int | None = None, budget: float | None = None,
           cost_weight: float = 0.0) -> list[tuple[str, float]]:
    """The selected ``(name, score)`` pairs, best first.

    Args:
        layers: Every candidate, best first (``Ranking.layers``): mappings with ``name``, ``score`` and, for a
            budget, ``num_params``; for ``cost_weight``, ``block``.
        top_k: Take the ``top_k`` best layers.
        budget: Take the best layers whose parameters add up to at most ``budget`` times those of all candidates:
            down the ranking, a layer is taken when it still fits, so a small layer further down can fill what a
            large one would overflow (as a user with a parameter budget expects; a strict prefix would leave most of
            a small budget empty whenever the best layer is a large MLP matrix).
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
    """Plain selection from ``layers`` (best first): the first ``top_k``, or the best layers that fit the budget."""
    if top_k is not None:
        return [(str(r["name"]), float(r["score"])) for r in layers[:top_k]]
    allowed = float(budget) * total
    chosen = [(str(r["name"]), float(r["score"])) for r in fill(layers, allowed)]
    if not chosen:
        smallest = min(layers, key=lambda r: int(r["num_params"]))
        raise SelectionError(
            f"budget={budget} allows {int(allowed)} of the candidates' {total} parameters, but the smallest layer "
            f"({smallest['name']}) alone has {smallest['num_params']}; raise the budget to at least "
            f"{int(smallest['num_params']) / total:.4g} or use top_k."
        )
    return chosen


def fill(layers: Sequence[Mapping], allowed: float) -> list[Mapping]:
    """The rows of ``layers``, in their order, that fit in ``allowed`` parameters: each is taken when it still fits
    beside those taken before it, so the total falls short of ``allowed`` by less than the smallest row left out."""
    chosen, used = [], 0
    for r in layers:
        if used + int(r["num_params"]) <= allowed:
            chosen.append(r)
            used += int(r["num_params"])
    return chosen


def num_blocks_of(layers: Sequence[Mapping]) -> int:
    """The model's number of blocks, from rank rows: the candidates may sit in some blocks only, and a row's
    ``depth = block / (num_blocks - 1)`` says how many the model has."""
    for r in layers:
        depth = float(r.get("depth", 0.0))
        if depth > 0:
            return round(int(r["block"]) / depth) + 1
    return max(int(r["block"]) for r in layers) + 1


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
    num_blocks = num_blocks_of(layers)
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

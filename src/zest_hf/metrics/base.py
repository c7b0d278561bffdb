"""The metric registry: every zero-shot metric is a small pure function registered by name.

A metric is called once per layer, at the moment the probe has what it needs (its ``source``), and returns one or
more named columns. Keeping each metric a pure function over tensors keeps the probe's side effects (hooks,
requires_grad flips, weight sign flips) in one place, ``probe.py``, where they are undone in ``finally``.

Sources, in the order the probe produces them:

=========  =====================================================================================================
source     what the function receives besides the weight ``w`` (fp32)
=========  =====================================================================================================
weight     nothing (``x`` is None): static metrics
forward    :class:`ActStats` of the layer's output over the batch's real (non-padding) tokens
grad       ``g = dL/dW`` (fp32, same layout as ``w``) from the ordinary backward pass
grad_parts :class:`GradParts`: the same gradient split by micro-batch of the probe batch's rows (no extra tokens)
fisher     ``s`` of shape (batch, out_features): per sample and output channel, ``sum over tokens of y * dL/dy``
hessian    ``Hg``: the Hessian-gradient product, from one extra double backward
synflow    ``dR/dW`` of synflow's data-free objective (all weights made positive, all-ones input)
=========  =====================================================================================================

Every function must accept ``w`` in fp32; the probe casts one layer at a time so a bf16 model never holds a second
fp32 copy of itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["ActStats", "GradParts", "Metric", "register_metric", "METRICS", "SOURCES", "resolve_metrics",
           "default_columns", "moments", "std_mean"]

SOURCES = ("weight", "forward", "grad", "grad_parts", "fisher", "hessian", "synflow")


@dataclass
class ActStats:
    """Streaming mean/variance of a layer's outputs and of their absolute values (Chan's parallel update).

    A module may run several times in one forward pass (shared layers); statistics merge exactly across calls.
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    abs_mean: float = 0.0
    abs_m2: float = 0.0

    def update(self, y: torch.Tensor) -> None:
        y = y.detach().float().reshape(-1)
        n_b = y.numel()
        if n_b == 0:
            return
        # moments on the device in fp32, merged in float64 on the host: exact enough and one sync per call
        mean_b, m2_b = moments(y)
        amean_b, am2_b = moments(y.abs())
        mean_b, m2_b, amean_b, am2_b = torch.stack([mean_b, m2_b, amean_b, am2_b]).tolist()
        self.mean, self.m2 = _merge(self.n, self.mean, self.m2, n_b, mean_b, m2_b)
        self.abs_mean, self.abs_m2 = _merge(self.n, self.abs_mean, self.abs_m2, n_b, amean_b, am2_b)
        self.n += n_b

    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0

    def abs_std(self) -> float:
        return math.sqrt(self.abs_m2 / (self.n - 1)) if self.n > 1 else 0.0


class GradParts:
    """A layer's weight gradient ``dL/dW`` split into the parts of ``groups`` micro-batches of the probe batch.

    The rows (examples) of the batch are split into up to ``groups`` contiguous micro-batches; part ``m`` is
    ``sum over its rows and tokens of (dL/dy) x^T``, in the weight's own layout, so the parts sum to the gradient of
    the whole batch's loss (they are contributions to it, not per-micro-batch mean gradients). The first half of the
    micro-batches and the second half are two disjoint halves of the batch. A module called several times in one
    forward adds every call's rows to the same micro-batches.
    """

    def __init__(self, groups: int = 4):
        self.max_groups = groups
        self.parts: list[torch.Tensor] = []

    def add(self, dy: torch.Tensor, x: torch.Tensor, transposed: bool = False) -> None:
        """Add one call's contribution: ``dy`` and ``x`` are the output gradient and the input, rows first."""
        rows = dy.shape[0] if dy.dim() > 2 else 1
        dy = dy.reshape(rows, -1, dy.shape[-1])
        x = x.reshape(rows, -1, x.shape[-1])
        k = min(self.max_groups, rows)
        bounds = [round(j * rows / k) for j in range(k + 1)]
        for m in range(k):
            d = dy[bounds[m]:bounds[m + 1]].reshape(-1, dy.shape[-1]).float()
            a = x[bounds[m]:bounds[m + 1]].reshape(-1, x.shape[-1]).float()
            g = a.T @ d if transposed else d.T @ a  # transformers' Conv1D stores its weight as (in, out)
            if m < len(self.parts):
                self.parts[m] += g
            else:
                self.parts.append(g)

    @property
    def total(self) -> torch.Tensor:
        """``dL/dW`` of the whole batch."""
        if len(self.parts) == 1:
            return self.parts[0]
        out = self.parts[0].clone()  # summed in place: stacking would hold every part twice
        for part in self.parts[1:]:
            out += part
        return out

    @property
    def halves(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The gradient parts of the first and the second half of the batch (needs at least two micro-batches)."""
        h = (len(self.parts) + 1) // 2
        return sum(self.parts[:h]), sum(self.parts[h:])


def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sum of squared deviations of every entry of ``x`` (0-dim tensors, not synced), in two passes.

    As exact as ``torch.var_mean`` (the deviations are taken from the mean, not from zero), and on a CPU ~7x faster:
    there ``var_mean`` runs a scalar Welford update per element, which made it the probe's costliest operation
    after the matrix products.
    """
    f = x.reshape(-1)
    mean = f.sum() / max(f.numel(), 1)
    return mean, (f - mean).square_().sum()


def std_mean(x: torch.Tensor, correction: int = 1) -> tuple[float, float]:
    """``torch.std_mean(x)`` over every entry, as Python floats (one sync), through :func:`moments`."""
    mean, m2 = moments(x)
    mean_v, m2_v = torch.stack([mean, m2]).tolist()
    dof = x.numel() - correction
    return (math.sqrt(max(m2_v, 0.0) / dof) if dof > 0 else float("nan")), mean_v


def _merge(n_a: int, mean_a: float, m2_a: float, n_b: int, mean_b: float, m2_b: float) -> tuple[float, float]:
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * n_b / n
    m2 = m2_a + m2_b + delta * delta * n_a * n_b / n
    return mean, m2


@dataclass(frozen=True)
class Metric:
    """A registered metric.

    Attributes:
        name: Registry name, as passed to ``probe(metrics=[...])``.
        source: What it needs (see the module docstring).
        columns: The columns it returns, in order.
        fn: ``fn(w, x) -> dict[column, float]``.
        group: The paper's family: "static", "forward" or "backward".
        doc: One line for tables and the README.
        default: Whether ``metrics="default"`` includes it (grasp, for its cost, and metrics still being judged on
            held-out tasks are left to ``"all"`` or their names).
    """

    name: str
    source: str
    columns: tuple[str, ...]
    fn: Callable[[torch.Tensor, object], dict[str, float]] = field(repr=False)
    group: str = "backward"
    doc: str = ""
    default: bool = True


METRICS: dict[str, Metric] = {}


def register_metric(name: str, *, source: str, columns: tuple[str, ...], group: str, doc: str = "",
                    default: bool = True):
    """Decorator: register ``fn(w, x) -> dict`` under ``name``. Adding a metric is one new file with one function."""
    if source not in SOURCES:
        raise ValueError(f"unknown metric source {source!r}; expected one of {SOURCES}")

    def wrap(fn):
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = Metric(name=name, source=source, columns=tuple(columns), fn=fn, group=group, doc=doc,
                               default=default)
        return fn

    return wrap


def resolve_metrics(metrics) -> list[Metric]:
    """Turn a user's ``metrics=`` argument into registered metrics, in registry order.

    ``None`` or ``"default"``: every metric registered with ``default=True``: all but grasp (a double backward, ~2x
    the probe's cost) and the signals still being judged (spectral, grad_snr, two_halves). ``"all"``: every metric.
    A list: those names (a column name such as ``"snip_mean"`` selects its metric).
    """
    if metrics is None or metrics == "default":
        names = [m for m, spec in METRICS.items() if spec.default]
    elif metrics == "all":
        names = list(METRICS)
    else:
        if isinstance(metrics, str):
            metrics = [metrics]
        by_column = {c: m.name for m in METRICS.values() for c in m.columns}
        names = []
        for req in metrics:
            name = req if req in METRICS else by_column.get(req)
            if name is None:
                raise ValueError(
                    f"unknown metric {req!r}. Known metrics: {sorted(METRICS)} (or any of their columns, "
                    f"or 'default' / 'all')."
                )
            if name not in names:
                names.append(name)
    order = list(METRICS)
    return [METRICS[n] for n in sorted(names, key=order.index)]


def default_columns() -> list[str]:
    """Every column the default probe produces, in table order: what a predictor reads unless told otherwise."""
    return [c for m in resolve_metrics("default") for c in m.columns]


def total(x: torch.Tensor) -> float:
    """Sum of a tensor as a Python float, accumulated in fp32 (or wider) whatever the tensor's dtype."""
    return x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32).item()

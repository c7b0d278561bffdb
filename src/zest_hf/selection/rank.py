"""Ranking for users: probe one batch, score every layer with a predictor, best first."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from ..predictor.family import AUTO
from ..predictor.hub import load_predictor, resolve_name
from ..serialization import JsonSerializable, check_keys
from ..probe.result import ProbeResult
from ..probe.run import probe

__all__ = ["Ranking", "rank", "rank_probe", "probe_metrics", "SPECTRUM"]

#: ``predictor=SPECTRUM``: Spectrum's data-free selection (see :func:`_rank_result_spectrum`).
SPECTRUM = "spectrum"


@dataclass
class Ranking(JsonSerializable):
    """Layers best first. ``layers[i]`` has ``name``, ``score``, ``type``, ``block``, ``depth``, ``num_params``."""

    layers: list[dict]
    predictor: str
    meta: dict = field(default_factory=dict)

    def top(self, k: int) -> list[str]:
        if not 1 <= k <= len(self.layers):
            raise ValueError(f"top_k must be between 1 and the number of candidates ({len(self.layers)}), got {k}")
        return [r["name"] for r in self.layers[:k]]

    def to_dict(self) -> dict:
        return {"format": "zest_hf.Ranking/1", "predictor": self.predictor, "meta": self.meta, "layers": self.layers}

    json_what = "ranking"

    @classmethod
    def from_dict(cls, d: dict, source: str = "the ranking") -> "Ranking":
        if d.get("format") != "zest_hf.Ranking/1":
            raise ValueError(f"{source} is not a zest_hf ranking (format={d.get('format')!r})")
        check_keys(d, ("format", "predictor", "meta", "layers"), "ranking", source)
        return cls(layers=d["layers"], predictor=d["predictor"], meta=d.get("meta", {}))


def rank_probe(result: ProbeResult, predictor=None, revision: str | None = None) -> Ranking:
    """Score the layers of an existing probe result (``predictor`` as in :func:`rank`, ``metric:<column>``
    included). The probe must hold the columns the predictor reads."""
    if isinstance(predictor, str) and predictor.startswith("metric:"):
        return _rank_result_by_column(result, predictor)
    if predictor == SPECTRUM:
        return _rank_result_spectrum(result)
    if not isinstance(predictor, nn.Module):
        predictor = resolve_name(predictor, result.layers)
    pred = load_predictor(predictor, revision=revision)
    scores = pred.score(result)
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keys = ("name", "type", "block", "depth", "num_params")
    layers = [dict({k: result.layers[i][k] for k in keys}, score=float(scores[i])) for i in order]
    label = str(predictor) if not isinstance(predictor, nn.Module) else "given"
    meta = {"probe": result.meta, "predictor_metrics": pred.metrics, "revision": revision}
    return Ranking(layers=layers, predictor=label, meta=meta)


def rank(model: nn.Module, batch, predictor=None, *, revision: str | None = None, **probe_kwargs) -> Ranking:
    """Probe ``model`` on ``batch`` with the metrics the predictor needs, and rank its layers.

    Args:
        model: Any transformers model with a loss head; left exactly as it was.
        batch: One collated batch (with ``labels`` unless a causal LM).
        predictor: A :class:`~zest_hf.predictor.ZestPredictor`, a local directory, a bundled name, or a Hub repo
            id; ``None`` or ``"auto"`` for the bundled predictor of the model's family (``zest-decoder`` for a
            Llama-style decoder, ``zest-universal`` otherwise: :mod:`zest_hf.predictor.family`);
            ``"metric:<column>"`` to rank by one probe column; or ``"spectrum"`` for Spectrum's data-free choice
            (the batch is not used).
        revision: Hub revision of the predictor (pin it for reproducible selections).
        **probe_kwargs: Passed to :func:`zest_hf.probe` (``targets``, ``target_modules``, ``seed``...).

    Example::

        >>> from zest_hf.selection.rank import rank
        >>> ranking = rank(model, batch)                   # doctest: +SKIP
        >>> ranking.top(5)                                 # doctest: +SKIP
    """
    if isinstance(predictor, str) and predictor.startswith("metric:"):
        return _rank_by_column(model, batch, predictor, **probe_kwargs)
    if predictor == SPECTRUM:
        return _rank_result_spectrum(probe(model, batch, probe_metrics(SPECTRUM), **probe_kwargs))
    if not isinstance(predictor, nn.Module) and resolve_name(predictor) == AUTO:
        # "auto": the family is in the candidates' types, known before the probe (which needs the metrics)
        if probe_kwargs.get("targets") is None:
            from ..targets import find_targets

            probe_kwargs["targets"] = find_targets(model, probe_kwargs.pop("target_modules", None),
                                                   probe_kwargs.pop("exclude_modules", None))
        predictor = resolve_name(predictor, [t.type for t in probe_kwargs["targets"]])
    pred = load_predictor(predictor, revision=revision)
    metrics = _metrics_for(pred.metrics)
    result = probe(model, batch, metrics, **probe_kwargs)
    r = rank_probe(result, pred, revision=revision)
    r.predictor = str(predictor) if not isinstance(predictor, nn.Module) else "given"
    return r


def _rank_by_column(model, batch, spec: str, **probe_kwargs) -> Ranking:
    """``metric:<column>`` (largest first) or ``metric:-<column>`` (smallest first): one zero-shot metric, no
    predictor. The baseline a predictor must beat, and a fallback when no predictor is at hand."""
    return _rank_result_by_column(probe(model, batch, probe_metrics(spec), **probe_kwargs), spec)


def _rank_result_by_column(result: ProbeResult, spec: str) -> Ranking:
    column = spec.split(":", 1)[1]
    descending = not column.startswith("-")
    column = column.lstrip("-")
    if column not in result.values:
        raise ValueError(f"{spec!r}: the probe has no column {column!r}; its columns: {result.columns}")
    vals = result.column(column)
    order = result.ranking(column, descending=descending)
    idx = {n: i for i, n in enumerate(result.names)}
    keys = ("name", "type", "block", "depth", "num_params")
    sign = 1.0 if descending else -1.0
    layers = [dict({k: result.layers[idx[n]][k] for k in keys}, score=sign * vals[idx[n]]) for n in order]
    return Ranking(layers=layers, predictor=spec, meta={"probe": result.meta})


def _rank_result_spectrum(result: ProbeResult) -> Ranking:
    """Spectrum (arXiv 2406.06623; cognitivecomputations/spectrum): within each projection type, layers ordered by
    the signal-to-noise ratio of their singular values (``spectral_snr``), and the top fraction of EVERY type kept.
    As one ranking: a layer's score is ``1 - j / n`` for the j-th best (from 0) of its type's n layers, ties broken
    by the SNR, so the top ``k`` hold each type's best ``k / types`` layers (Spectrum's per-type fraction) and any
    budget ZEST takes (``top_k``, a parameter fraction) cuts it the same way."""
    if "spectral_snr" not in result.values:
        raise ValueError("predictor='spectrum' needs the probe's 'spectral_snr' column: probe with "
                         "metrics=['spectral'] (or 'all')")
    snr = result.column("spectral_snr")
    by_type: dict[str, list[int]] = {}
    for i, layer in enumerate(result.layers):
        by_type.setdefault(layer["type"], []).append(i)
    score = [0.0] * len(snr)
    for members in by_type.values():
        members.sort(key=lambda i: (-snr[i], i))
        for j, i in enumerate(members):
            score[i] = 1.0 - j / len(members)
    order = sorted(range(len(snr)), key=lambda i: (-score[i], -snr[i], i))
    keys = ("name", "type", "block", "depth", "num_params")
    # an SNR with no noise below the edge (all singular values alike) is inf, as in the reference: it ranks first,
    # and is written as the text "inf" (JSON has no infinity)
    layers = [dict({k: result.layers[i][k] for k in keys}, score=score[i],
                   spectral_snr=snr[i] if math.isfinite(snr[i]) else str(snr[i])) for i in order]
    return Ranking(layers=layers, predictor=SPECTRUM, meta={"probe": result.meta})


def probe_metrics(predictor=None, types=(), revision: str | None = None) -> list[str]:
    """The metrics a probe must compute for ``predictor`` (as in :func:`rank`) to rank its result with
    :func:`rank_probe`; ``types``: the candidates' types, which ``"auto"`` picks the predictor's family from."""
    if isinstance(predictor, str) and predictor.startswith("metric:"):
        return _metrics_for([predictor.split(":", 1)[1].lstrip("-")])
    if predictor == SPECTRUM:
        return ["spectral"]
    if not isinstance(predictor, nn.Module):
        predictor = resolve_name(predictor, list(types))
    return _metrics_for(load_predictor(predictor, revision=revision).metrics)


def _metrics_for(columns: list[str]) -> list[str]:
    from ..metrics import METRICS

    by_column = {c: m.name for m in METRICS.values() for c in m.columns}
    unknown = [c for c in columns if c not in by_column]
    if unknown:
        raise ValueError(f"the predictor reads columns {unknown} that no registered metric produces; it was trained "
                         "with another zest_hf or with custom metrics: register them first")
    return sorted({by_column[c] for c in columns}) or ["weight"]

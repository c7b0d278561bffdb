"""The probe's result: one row per candidate layer, one column per metric value, and its JSON form."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import NonFiniteError
from ..serialization import JsonSerializable, check_keys

__all__ = ["ProbeResult"]


@dataclass
class ProbeResult(JsonSerializable):
    """A table: one row per candidate layer (model order), one column per metric value.

    Attributes:
        layers: Per layer: ``name``, ``type``, ``block``, ``depth``, ``num_params``, ``in_features``,
            ``out_features`` (see :class:`zest_hf.targets.Target`).
        values: Column name -> one float per layer (NaN where a metric was not finite; see ``nonfinite``).
        metrics: The registry names that produced the columns.
        meta: How it was measured: model class and path, dtype, device, batch shape, loss, seed, versions, timings.
        nonfinite: ``(layer, column)`` pairs whose value was NaN or inf. Ranking by such a column raises.
    """

    layers: list[dict]
    values: dict[str, list[float]]
    metrics: list[str]
    meta: dict = field(default_factory=dict)
    nonfinite: list[tuple[str, str]] = field(default_factory=list)

    # ---- access
    @property
    def columns(self) -> list[str]:
        return list(self.values)

    @property
    def names(self) -> list[str]:
        return [row["name"] for row in self.layers]

    def __len__(self) -> int:
        return len(self.layers)

    def column(self, column: str) -> list[float]:
        if column not in self.values:
            raise KeyError(f"no column {column!r} in this probe result; columns: {self.columns}")
        return self.values[column]

    def to_pandas(self):
        """A ``pandas.DataFrame`` with the layer description and one column per metric value (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("ProbeResult.to_pandas needs pandas, which zest_hf does not require: "
                              "pip install pandas (or pip install 'zest_hf[research]')") from None

        df = pd.DataFrame(self.layers)
        for col, vals in self.values.items():
            df[col] = vals
        return df

    def ranking(self, column: str, descending: bool = True) -> list[str]:
        """Layer names ordered by ``column`` (largest first by default). Raises on non-finite values."""
        vals = self.column(column)
        bad = [n for n, c in self.nonfinite if c == column]
        if bad:
            raise NonFiniteError(
                f"column {column!r} is NaN or inf for {len(bad)} layer(s), e.g. {bad[:3]}; it cannot rank layers. "
                "Rank by another column, or re-probe in higher precision / with another batch."
            )
        order = sorted(range(len(vals)), key=lambda i: (-vals[i] if descending else vals[i], i))
        return [self.layers[i]["name"] for i in order]

    # ---- serialisation (strict JSON: non-finite floats are written as strings)
    def to_dict(self) -> dict:
        return {
            "format": "zest_hf.ProbeResult/1",
            "metrics": list(self.metrics),
            "meta": self.meta,
            "layers": self.layers,
            "values": {k: [_enc(v) for v in vs] for k, vs in self.values.items()},
            "nonfinite": [list(p) for p in self.nonfinite],
        }

    json_what = "probe result"

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "the probe result") -> "ProbeResult":
        if d.get("format") != "zest_hf.ProbeResult/1":
            raise ValueError(f"{source} is not a zest_hf probe result (format={d.get('format')!r})")
        check_keys(d, ("format", "metrics", "meta", "layers", "values", "nonfinite"), "probe result", source)
        n = len(d["layers"])
        values = {k: [_dec(v) for v in vs] for k, vs in d["values"].items()}
        for k, vs in values.items():
            if len(vs) != n:
                raise ValueError(f"column {k!r} has {len(vs)} values for {n} layers")
        return cls(
            layers=[dict(r) for r in d["layers"]],
            values=values,
            metrics=list(d["metrics"]),
            meta=dict(d.get("meta", {})),
            nonfinite=[tuple(p) for p in d.get("nonfinite", [])],
        )


def _enc(v: float):
    return v if math.isfinite(v) else str(v)  # "nan", "inf", "-inf"


def _dec(v) -> float:
    return float(v)

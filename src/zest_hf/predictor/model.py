"""The ZEST predictor: a small network that scores a layer from its zero-shot metrics.

Inputs, per layer (built by :func:`layer_features` from one :class:`~zest_hf.ProbeResult`):

* the probe columns named in ``metrics``, normalised WITHIN the model-task so that one predictor serves models of any
  size: ``"rank"`` maps each column to its percentile rank in [0, 1] (ties averaged); ``"zscore"`` z-scores
  ``sign(x) * log1p(|x| / median|x|)`` (a log so that sums over matrices of very different sizes stay comparable);
* optionally the data-free description of the layer: canonical type as a 7-way one-hot (q, k, v, o, gate, up, down;
  a fused ``qkv`` spreads 1/3 over q, k, v and ``gate_up`` 1/2 over gate, up), relative depth, the layer's
  log-size z-scored within the model, and (``depth_knots=K > 1``) a piecewise-linear profile of relative depth:
  K-1 tent functions centred on the knots 0, 1/(K-1), ..., (K-2)/(K-1) (each 1 at its knot, falling linearly to 0 at
  the neighbouring knots; the tent at depth 1 is left out, as it is their sum's complement). They are there because
  contribution is not monotone in depth (on most of our MiniLM tasks the middle blocks help most), which a linear
  score of depth alone cannot say, and tents rather than bins so that neighbouring blocks share weight smoothly.

Architecture: ``arch="linear"`` (one linear map to a score) or ``arch="mlp"`` (two hidden layers of ``hidden``
units, GELU). Loss (:func:`train_predictor`): RankNet's pairwise logistic loss ``softplus(-(s_i - s_j))`` over pairs
of layers FROM THE SAME model-task where layer i's contribution score is higher than j's; pairs with equal scores are
skipped; every batch mixes model-tasks, each model-task equally likely.

A predictor is its ``__init__`` arguments (``config.json``) plus its weights (``model.safetensors``), shipped with
huggingface_hub's ``PyTorchModelHubMixin``; loading is strict and never unpickles anything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .._version import __version__
from ..errors import PredictorError
from .card import CARD_TEMPLATE

__all__ = ["ZestPredictor", "PredictorError", "layer_features", "TYPE_SLOTS", "WEIGHTS_FILE"]

#: The one weights file a predictor has (huggingface_hub's name for it).
WEIGHTS_FILE = "model.safetensors"
#: One-hot slots of the canonical types, and how fused types spread over them.
TYPE_SLOTS = ("q", "k", "v", "o", "gate", "up", "down")
_FUSED = {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}
NORMALISATIONS = ("rank", "zscore")
ARCHS = ("linear", "mlp")



def _release(version: str) -> tuple[int, int]:
    """(major, minor) of a version string; features are only added in minor releases."""
    try:
        major, minor = str(version).split(".")[:2]
        return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
    except ValueError:
        raise PredictorError(f"config 'zest_hf_version' must look like '0.2.0', got {version!r}") from None


# ------------------------------------------------------------------------------------------------------ features
def _rank01(x: np.ndarray) -> np.ndarray:
    """Percentile ranks in [0, 1], ties given their average rank (``scipy.stats.rankdata(x, "average")``, rescaled)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return np.full(len(x), 0.5)
    if np.isnan(x).any():
        return np.full(len(x), np.nan)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    average = np.cumsum(counts) - (counts - 1) / 2  # 1-based average rank of each distinct value
    return (average[inverse.reshape(-1)] - 1) / (len(x) - 1)


def _zlog(x: np.ndarray) -> np.ndarray:
    scale = np.median(np.abs(x))
    if not scale > 0:
        scale = np.mean(np.abs(x)) or 1.0
    y = np.sign(x) * np.log1p(np.abs(x) / scale)
    sd = y.std()
    return (y - y.mean()) / sd if sd > 0 else np.zeros_like(y)


def _type_onehot(types: Sequence[str]) -> np.ndarray:
    out = np.zeros((len(types), len(TYPE_SLOTS)))
    for i, t in enumerate(types):
        slots = _FUSED.get(t, (t,))
        for s in slots:
            if s in TYPE_SLOTS:
                out[i, TYPE_SLOTS.index(s)] = 1.0 / len(slots)
    return out


def layer_features(layers: Sequence[dict], values: dict[str, Sequence[float]], metrics: Sequence[str],
                   normalization: str, prior: bool, depth_knots: int = 0) -> np.ndarray:
    """The predictor's input matrix (layers x features) for one model-task."""
    cols = []
    for m in metrics:
        x = np.asarray(values[m], dtype=float)
        if not np.isfinite(x).all():
            bad = [layers[i]["name"] for i in np.where(~np.isfinite(x))[0][:3]]
            raise PredictorError(f"metric {m!r} is NaN/inf for layers {bad}; the predictor cannot score them")
        cols.append(_rank01(x) if normalization == "rank" else _zlog(x))
    feats = [np.stack(cols, 1)] if cols else []
    if prior:
        depth = np.asarray([float(r["depth"]) for r in layers])[:, None]
        size = np.log(np.asarray([float(r["num_params"]) for r in layers]))
        size = (size - size.mean()) / (size.std() or 1.0)
        feats += [_type_onehot([r["type"] for r in layers]), depth, size[:, None]]
        if depth_knots > 1:
            knots = np.linspace(0.0, 1.0, depth_knots)[:-1]
            feats.append(np.clip(1.0 - np.abs(depth - knots[None, :]) * (depth_knots - 1), 0.0, None))
    if not feats:
        raise PredictorError("a predictor needs metrics, the data-free prior, or both")
    return np.concatenate(feats, 1).astype(np.float32)


# --------------------------------------------------------------------------------------------------------- model
class ZestPredictor(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="zest_hf",
    tags=["zest", "sparse-fine-tuning", "layer-selection"],
    license="apache-2.0",
    model_card_template=CARD_TEMPLATE,
):
    """Scores layers from one-batch zero-shot metrics; higher = fine-tuning that layer is predicted to help more.

    Args:
        metrics: Probe columns it reads (e.g. ``["snip_mean", "fisher_mean", ...]``); ``[]`` for a data-free prior.
        normalization: ``"rank"`` or ``"zscore"`` (see the module docstring).
        arch: ``"linear"`` or ``"mlp"``.
        hidden: Hidden units per layer of the MLP.
        prior: Whether the data-free features (type, depth, size) are inputs too.
        zest_hf_version: The zest_hf version that wrote it (checked on load: one written by a newer minor or major
            release is refused, as it may use features this one lacks).
        trained_on: Free-form provenance (model-tasks, seeds); shown in the card.
        depth_knots: With ``prior``, also a piecewise-linear depth profile on this many knots (``0`` or ``1``: none,
            the layout of predictors written before zest_hf 0.2; :func:`train_predictor` uses 5).

    Example::

        >>> predictor = ZestPredictor(metrics=["snip_mean", "grad_norm"], arch="linear")
        >>> scores = predictor.score(probe_result)      # doctest: +SKIP
    """

    def __init__(self, metrics: list[str], normalization: str = "rank", arch: str = "mlp", hidden: int = 32,
                 prior: bool = True, zest_hf_version: str = __version__, trained_on: dict | None = None,
                 depth_knots: int = 0):
        super().__init__()
        if not isinstance(metrics, (list, tuple)) or not all(isinstance(m, str) for m in metrics):
            raise PredictorError(f"config 'metrics' must be a list of column names, got {metrics!r}")
        if normalization not in NORMALISATIONS:
            raise PredictorError(f"config 'normalization' must be one of {NORMALISATIONS}, got {normalization!r}")
        if arch not in ARCHS:
            raise PredictorError(f"config 'arch' must be one of {ARCHS}, got {arch!r}")
        if not isinstance(hidden, int) or hidden < 1:
            raise PredictorError(f"config 'hidden' must be a positive integer, got {hidden!r}")
        if _release(zest_hf_version) > _release(__version__):
            # a newer zest_hf may have added features (e.g. depth_knots in 0.2): refuse rather than mis-score
            raise PredictorError(f"this predictor was written by zest_hf {zest_hf_version}; installed {__version__}: "
                                 "upgrade zest_hf (pip install -U zest_hf)")
        self.metrics = list(metrics)
        self.normalization = normalization
        self.arch = arch
        self.hidden = hidden
        self.prior = bool(prior)
        if not isinstance(depth_knots, int) or depth_knots < 0:
            raise PredictorError(f"config 'depth_knots' must be a non-negative integer, got {depth_knots!r}")
        self.depth_knots = depth_knots if self.prior else 0
        self.zest_hf_version = zest_hf_version
        self.trained_on = trained_on or {}
        n_in = len(self.metrics) + (len(TYPE_SLOTS) + 2 + max(self.depth_knots - 1, 0) if self.prior else 0)
        if n_in == 0:
            raise PredictorError("a predictor needs metrics, the data-free prior, or both")
        self.n_features = n_in
        if arch == "linear":
            self.net = nn.Linear(n_in, 1)
        else:
            self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                     nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    # ---- using it
    def check_compatible(self, columns: Sequence[str]) -> None:
        missing = [m for m in self.metrics if m not in columns]
        if missing:
            raise PredictorError(
                f"this predictor was trained on metrics {self.metrics}, but the probe result lacks {missing}. "
                f"Probe with metrics that produce them (e.g. probe(..., metrics='all')), or use a predictor "
                "trained on the metrics you have."
            )

    def features(self, result) -> np.ndarray:
        """Feature matrix of a :class:`~zest_hf.ProbeResult` (or anything with ``layers`` and ``values``)."""
        self.check_compatible(list(result.values))
        return layer_features(result.layers, result.values, self.metrics, self.normalization, self.prior,
                              self.depth_knots)

    @torch.no_grad()
    def score(self, result) -> np.ndarray:
        """One score per layer of ``result``, in its order."""
        x = torch.from_numpy(self.features(result))
        p = next(self.parameters())
        return self(x.to(p.device, p.dtype)).float().cpu().numpy()

    # ---- the card: huggingface_hub's documented hook, filling the template of .card
    def generate_model_card(self, *args, held_out: str = "", notes: str = "", **kwargs):
        tasks = self.trained_on.get("model_tasks", [])
        return super().generate_model_card(
            *args, min_version=self.zest_hf_version, version=__version__, arch=self.arch,
            arch_note=f" (hidden {self.hidden})" if self.arch == "mlp" else " (one weight per feature)",
            normalization=self.normalization, prior=self.prior,
            knots_note=f" (with {self.depth_knots} depth knots)" if self.depth_knots > 1 else "",
            metrics=", ".join(self.metrics) or "none (data-free prior)", seed=self.trained_on.get("seed"),
            steps=self.trained_on.get("steps"), num_tasks=len(tasks), tasks=", ".join(tasks),
            held_out=held_out or "(not evaluated)", notes=notes, **kwargs)

    # ---- saving: huggingface_hub's writer, made atomic file by file
    def save_pretrained(self, save_directory, *, push_to_hub: bool = False, repo_id: str | None = None,
                        **kwargs):
        """huggingface_hub's ``save_pretrained`` (``config.json``, ``model.safetensors``, the card), written into a
        temporary directory beside ``save_directory`` and then moved in file by file with ``os.replace``: a process
        killed while saving leaves each file old or new, never torn. The weights go in before the config, and
        loading checks that the two match. An existing README.md is kept, as huggingface_hub does."""
        import shutil
        import tempfile

        target = Path(save_directory)
        target.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            config = kwargs.pop("config", None)
            super().save_pretrained(staging, config=config, model_card_kwargs=kwargs.pop("model_card_kwargs", None))
            order = sorted(staging.iterdir(), key=lambda f: (f.name == "config.json", f.name))
            for f in order:
                if f.name == "README.md" and (target / f.name).exists():
                    continue
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(f, target / f.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if push_to_hub:
            return self.push_to_hub(repo_id=repo_id or target.name, config=config, **kwargs)
        return None

    # ---- loading: huggingface_hub's documented hook, strict, safetensors only
    @classmethod
    def _from_pretrained(cls, *, model_id, revision, cache_dir, force_download, local_files_only, token,
                         map_location="cpu", strict=True, **model_kwargs):
        """Build the predictor from its ``config.json`` (``model_kwargs``) and load ``model.safetensors``, from a
        local directory or the Hub. Only that file is ever read: a pickled checkpoint is never loaded (it could
        run code), and every tensor must match the config exactly. The layers' initialisation, overwritten by the
        file, draws from a forked generator: loading leaves the caller's random state as it was."""
        with torch.random.fork_rng(devices=[]):
            model = cls(**model_kwargs)
        if os.path.isdir(model_id):
            model_file = os.path.join(model_id, WEIGHTS_FILE)
            if not os.path.isfile(model_file):
                raise PredictorError(f"{model_id} has no {WEIGHTS_FILE}: zest_hf predictors are loaded from "
                                     "safetensors only; a pickled checkpoint is never loaded (it could run code).")
        else:
            from huggingface_hub import hf_hub_download

            model_file = hf_hub_download(repo_id=model_id, filename=WEIGHTS_FILE, revision=revision,
                                         cache_dir=cache_dir, force_download=force_download, token=token,
                                         local_files_only=local_files_only)
        return _load_weights(model, model_file, map_location)


def _load_weights(model: "ZestPredictor", model_file: str, map_location) -> "ZestPredictor":
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(model_file, device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise PredictorError(f"{model_file} is not a readable safetensors file ({e}); re-download or re-save "
                             "the predictor") from None
    own = model.state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise PredictorError(
            f"{model_file} does not match its config.json (expected tensors "
            f"{ {k: tuple(v.shape) for k, v in own.items()} }, found { {k: tuple(v.shape) for k, v in state.items()} })"
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise PredictorError(f"{model_file} holds NaN or inf in {bad}: the predictor is broken (a diverged "
                             "training run?); retrain or re-download it")
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


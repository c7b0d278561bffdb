"""Saving and loading a sparse zeroth-order run: only the tuned coordinates (indices and values, safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..serialization import atomic_target, read_safetensors

__all__ = ["DELTA_FILE", "CONFIG_FILE", "save_sparse_delta", "read_sparse_delta", "apply_sparse_delta",
           "load_sparse_zo", "SAVED"]

DELTA_FILE = "sparse_delta.safetensors"
CONFIG_FILE = "sparse_zo_config.json"
FORMAT = "zest_hf.SparseDelta/1"


def save_sparse_delta(model: nn.Module, directory: str | Path, config=None) -> Path:
    """Write ``directory/sparse_delta.safetensors``: for every layer with tuned coordinates, ``<layer>.indices``
    (flat, int64), ``<layer>.values`` (fp32, the trained values) and ``<layer>.shape``; plus the config as JSON.
    Nothing else of the model is written: the base model is whatever it was loaded from."""
    from safetensors.torch import save_file

    from .layers import sparse_layers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, m in sparse_layers(model).items():
        if m.flat_idx.numel():
            tensors[f"{name}.indices"] = m.flat_idx.detach().cpu().contiguous()
            tensors[f"{name}.values"] = m.values.detach().float().cpu().contiguous()
            tensors[f"{name}.shape"] = torch.tensor([m.out_features, m.in_features], dtype=torch.int64)
    if not tensors:
        raise ValueError("the model has no tuned sparse coordinates to save; was it prepared by ZOTrainer "
                         "(or zest_hf.sparse_zo.attach_sparse)?")
    base = getattr(getattr(model, "config", None), "_name_or_path", "")
    meta = {"format": FORMAT, "base_model": str(base)}
    if config is not None:
        meta["config"] = json.dumps(config.to_dict())
        config.to_json(directory / CONFIG_FILE)
    path = directory / DELTA_FILE
    with atomic_target(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_sparse_delta(path: str | Path) -> tuple[dict, dict, dict, dict]:
    """``(indices, values, shapes, metadata)`` from a directory or a ``sparse_delta.safetensors`` file. A malformed
    file gives a clear error; nothing is unpickled."""
    path = Path(path)
    if path.is_dir():
        path = path / DELTA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no sparse delta at {path}; save one with ZOTrainer.save_model(dir)")
    meta, tensors = read_safetensors(path, "zest_hf sparse delta")
    keys = list(tensors)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a zest_hf sparse delta (metadata format {meta.get('format')!r})")
    names = sorted({k.rsplit(".", 1)[0] for k in keys})
    try:
        indices = {n: tensors[f"{n}.indices"].long() for n in names}
        values = {n: tensors[f"{n}.values"].float() for n in names}
        shapes = {n: tuple(int(v) for v in tensors[f"{n}.shape"].tolist()) for n in names}
    except KeyError as e:
        raise ValueError(f"{path} lacks tensor {e}; every layer needs .indices, .values and .shape") from e
    bad = [n for n in names if indices[n].shape != values[n].shape]
    if bad:
        raise ValueError(f"{path}: indices and values differ in length for {bad[:3]}")
    return indices, values, shapes, meta


def _check_against(model: nn.Module, indices: dict, shapes: dict, source) -> dict:
    modules = dict(model.named_modules())
    missing = [n for n in indices if n not in modules]
    if missing:
        raise ValueError(f"{source} tunes layers this model does not have: {missing[:3]}; it was trained on "
                         "another base model")
    for n, shape in shapes.items():
        m = modules[n]
        have = (m.out_features, m.in_features)
        if have != tuple(shape):
            raise ValueError(f"{source}: layer {n} is {have} here but {tuple(shape)} in the delta; another model")
        if indices[n].numel() and int(indices[n].max()) >= shape[0] * shape[1]:
            raise ValueError(f"{source}: indices of {n} exceed its {shape} weight")
    return modules


@torch.no_grad()
def apply_sparse_delta(model: nn.Module, path: str | Path) -> nn.Module:
    """Write the trained values into a plain (full- or half-precision) copy of the base model, in place: the result
    is an ordinary transformers model, savable and servable as such. Everything is checked before any weight
    changes."""
    indices, values, shapes, _ = read_sparse_delta(path)
    modules = _check_against(model, indices, shapes, path)
    for n, idx in indices.items():
        w = modules[n].weight
        w.view(-1).index_copy_(0, idx.to(w.device), values[n].to(device=w.device, dtype=w.dtype))
    return model


#: ``load_sparse_zo``'s default for each quantisation setting: what the saved run used.
SAVED = "saved"
_QUANT_FIELDS = {"quantize": "nf4", "blocksize": 64, "double_quant": True}  # what a delta without a config assumes


def load_sparse_zo(model: nn.Module, path: str | Path, *, quantize=SAVED, blocksize=SAVED, double_quant=SAVED,
                   target_modules=None) -> nn.Module:
    """Rebuild the trained sparse model on a fresh base: frozen weights quantised as the run had them, the trained
    coordinates exact in fp32 (for inference on little memory, or to continue zeroth-order training).

    ``quantize``, ``blocksize`` and ``double_quant`` default to the saved run's settings (its config, written by
    ``save_sparse_delta``); the rebuilt model then computes what the trained one did. A value given explicitly that
    differs from the saved one is an error: the trained coordinates were tuned against that quantised base.
    Everything is checked before the model changes."""
    from .layers import attach_sparse
    from .mask import SensitiveMask

    indices, values, shapes, meta = read_sparse_delta(path)
    saved = _saved_quantization(meta, path)
    asked = {"quantize": quantize, "blocksize": blocksize, "double_quant": double_quant}
    settings = {}
    for key, value in asked.items():
        have = saved.get(key, _QUANT_FIELDS[key])
        if value is not SAVED and key in saved and value != have:
            raise ValueError(
                f"{path} was trained with {key}={have!r}, and {key}={value!r} was asked for: its coordinates were "
                f"tuned against the {have!r} base and would compute something else on another. Leave {key} out to "
                "use the saved setting."
            )
        settings[key] = have if value is SAVED else value
    _check_against(model, indices, shapes, path)
    mask = SensitiveMask(indices=indices, shapes=shapes, percent=float("nan"))
    return attach_sparse(model, mask, target_modules=target_modules, values=values, **settings)


def _saved_quantization(meta: dict, path) -> dict:
    """The quantisation settings recorded in a delta's metadata (empty for a delta saved without a config)."""
    if "config" not in meta:
        return {}
    try:
        config = json.loads(meta["config"])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the saved config in its metadata is not valid JSON ({e}); re-save the run") from e
    return {k: config[k] for k in _QUANT_FIELDS if k in config}

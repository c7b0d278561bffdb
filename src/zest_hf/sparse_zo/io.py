"""Saving and loading a sparse zeroth-order run: only the tuned coordinates (indices and values, safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..serialization import atomic_target, read_safetensors

__all__ = ["DELTA_FILE", "CONFIG_FILE", "save_sparse_delta", "read_sparse_delta", "apply_sparse_delta",
           "load_sparse_zo", "load_sparse_values", "saved_config", "SAVED"]

DELTA_FILE = "sparse_delta.safetensors"
CONFIG_FILE = "sparse_zo_config.json"
FORMAT = "zest_hf.SparseDelta/1"


def save_sparse_delta(model: nn.Module, directory: str | Path, config=None) -> Path:
    """Write ``directory/sparse_delta.safetensors``: for every layer with tuned coordinates, ``<layer>.indices``
    (flat, int64, into the base module's weight as it stores it: (in, out) for a ``Conv1D``), ``<layer>.values``
    (fp32, the trained values) and ``<layer>.shape`` (that weight's shape); plus the config as JSON.
    Nothing else of the model is written: the base model is whatever it was loaded from."""
    from safetensors.torch import save_file

    from .layers import sparse_layers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, m in sparse_layers(model).items():
        if m.flat_idx.numel():
            tensors[f"{name}.indices"] = m.base_indices().detach().cpu().contiguous()
            tensors[f"{name}.values"] = m.values.detach().float().cpu().contiguous()
            tensors[f"{name}.shape"] = torch.tensor(m.base_shape, dtype=torch.int64)
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
    missing = [f"{n}.{part}" for n in names for part in ("indices", "values", "shape") if f"{n}.{part}" not in tensors]
    if missing:
        raise ValueError(f"{path} lacks tensor {missing[0]!r}; every layer needs .indices, .values and .shape")
    indices, values, shapes = {}, {}, {}
    for n in names:  # every layer is checked before any is returned, so nothing is written from a bad file
        idx, val, shape = (tensors[f"{n}.{part}"] for part in ("indices", "values", "shape"))
        problem = _layer_problem(idx, val, shape)
        if problem:
            raise ValueError(f"{path}: layer {n} {problem}; the file is damaged or was not written by "
                             "save_sparse_delta. Re-save the run.")
        indices[n], values[n] = idx.long(), val.float()
        shapes[n] = tuple(int(v) for v in shape.tolist())
    return indices, values, shapes, meta


def _layer_problem(idx: torch.Tensor, val: torch.Tensor, shape: torch.Tensor) -> str | None:
    """What is wrong with one layer's tensors of a delta, or None."""
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        return f"has {idx.dtype} indices (integers expected)"
    if not val.dtype.is_floating_point:
        return f"has {val.dtype} values (floating point expected)"
    if shape.dtype.is_floating_point or shape.dim() != 1 or shape.numel() != 2 or bool((shape < 1).any()):
        return f"has shape {shape.tolist()} (two positive integers expected)"
    if idx.dim() != 1 or val.dim() != 1 or idx.numel() != val.numel():
        return f"has indices of shape {tuple(idx.shape)} and values of shape {tuple(val.shape)} (equal, flat)"
    numel = int(shape[0]) * int(shape[1])
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel):
        return f"has indices from {int(idx.min())} to {int(idx.max())}, outside its {tuple(shape.tolist())} weight"
    if idx.numel() != torch.unique(idx).numel():
        return "repeats indices"
    return None


def _check_against(model: nn.Module, indices: dict, shapes: dict, source) -> dict:
    modules = dict(model.named_modules())
    missing = [n for n in indices if not isinstance(getattr(modules.get(n), "weight", None), torch.Tensor)]
    if missing:
        raise ValueError(f"{source} tunes layers this model does not have (as plain projections): {missing[:3]}; it "
                         "was trained on another base model")
    for n, shape in shapes.items():
        have = tuple(modules[n].weight.shape)
        if have != tuple(shape):
            raise ValueError(f"{source}: layer {n} is {have} here but {tuple(shape)} in the delta; another model")
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


#: ``load_sparse_zo``'s default for each setting of the rebuilt model: what the saved run used.
SAVED = "saved"
# what a delta without a config assumes
_SAVED_FIELDS = {"quantize": "nf4", "blocksize": 64, "double_quant": True, "target_modules": None}


def load_sparse_zo(model: nn.Module, path: str | Path, *, quantize=SAVED, blocksize=SAVED, double_quant=SAVED,
                   target_modules=SAVED) -> nn.Module:
    """Rebuild the trained sparse model on a fresh base: frozen weights quantised as the run had them, the trained
    coordinates exact in fp32 (for inference on little memory, or to continue zeroth-order training).

    ``quantize``, ``blocksize``, ``double_quant`` and ``target_modules`` default to the saved run's settings (its
    config, written by ``save_sparse_delta``); the rebuilt model then computes what the trained one did. A value given
    explicitly that differs from the saved one is an error: the trained coordinates were tuned against that quantised
    base. Everything is checked before the model changes."""
    from ..targets import find_targets
    from .layers import attach_sparse
    from .mask import SensitiveMask

    indices, values, shapes, meta = read_sparse_delta(path)
    config = saved_config(meta, path)
    saved = {k: config[k] for k in _SAVED_FIELDS if k in config}
    asked = {"quantize": quantize, "blocksize": blocksize, "double_quant": double_quant,
             "target_modules": target_modules}
    settings = {}
    for key, value in asked.items():
        have = saved.get(key, _SAVED_FIELDS[key])
        differs = value is not SAVED and key in saved and value != have
        if differs and key == "target_modules":  # another spelling of the same layers is the same base
            differs = {t.name for t in find_targets(model, value)} != {t.name for t in find_targets(model, have)}
        if differs:
            raise ValueError(
                f"{path} was trained with {key}={have!r}, and {key}={value!r} was asked for: its coordinates were "
                f"tuned on the model {key}={have!r} builds and would compute something else on another. Leave {key} "
                "out to use the saved setting."
            )
        settings[key] = have if value is SAVED else value
    _check_against(model, indices, shapes, path)
    mask = SensitiveMask(indices=indices, shapes=shapes, percent=float("nan"))
    return attach_sparse(model, mask, values=values, **settings)


@torch.no_grad()
def load_sparse_values(model: nn.Module, path: str | Path) -> nn.Module:
    """Write a saved delta's values into a model that already has its sparse layers (resuming a run, or loading its
    best checkpoint). The delta must tune exactly the coordinates the model's layers hold; that is checked for every
    layer before any value changes."""
    from .layers import sparse_layers

    indices, values, shapes, _ = read_sparse_delta(path)
    layers = {n: m for n, m in sparse_layers(model).items() if m.flat_idx.numel()}
    saved = {n for n, i in indices.items() if i.numel()}
    if saved != set(layers):
        other = sorted(saved ^ set(layers))
        raise ValueError(f"{path} tunes other layers than this model's sparse layers (e.g. {other[:3]}): it was saved "
                         "from another mask. Resume on a fresh copy of the base model, or from a checkpoint of this "
                         "run.")
    for n, m in layers.items():
        if shapes[n] != m.base_shape or not torch.equal(indices[n], m.base_indices().cpu()):
            raise ValueError(f"{path}: the coordinates of {n} differ from the ones this model tunes: it was saved "
                             "from another mask. Resume on a fresh copy of the base model, or from a checkpoint of "
                             "this run.")
    for n, m in layers.items():
        m.values.copy_(values[n])
    return model


def saved_config(meta: dict, path) -> dict:
    """The run config recorded in a delta's metadata, as a dict (empty for a delta saved without a config)."""
    if "config" not in meta:
        return {}
    try:
        config = json.loads(meta["config"])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the saved config in its metadata is not valid JSON ({e}); re-save the run") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the saved config in its metadata is not a JSON object; re-save the run")
    return config

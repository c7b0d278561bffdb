"""The sensitive mask: the top p% coordinates of the candidate weights by summed squared gradient.

The squared gradient summed over a few batches is a diagonal Fisher estimate; the coordinates where it is largest
are those whose change moves the loss most. The mask is computed once, on the full-precision model, and then fixed.
Like the probe, computing it leaves the model exactly as it was (weights, requires_grad, train/eval mode, grads).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["SensitiveMask", "sensitive_mask"]


@dataclass
class SensitiveMask:
    """Per layer, the flat indices (into ``weight.view(-1)``, sorted) of the tuned coordinates.

    ``shapes`` records each layer's weight shape, so a mask cannot be applied to a model it was not made for.
    """

    indices: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, int]]
    percent: float
    info: dict = field(default_factory=dict)

    @property
    def num_selected(self) -> int:
        return sum(int(i.numel()) for i in self.indices.values())

    def per_layer(self) -> dict[str, int]:
        return {n: int(i.numel()) for n, i in self.indices.items()}

    def save(self, path: str | Path) -> None:
        """safetensors: ``<layer>.indices`` (int64) and ``<layer>.shape``; percent and info in the metadata."""
        import json

        from safetensors.torch import save_file

        from ..serialization import atomic_target

        tensors = {}
        for name, idx in self.indices.items():
            tensors[f"{name}.indices"] = idx.detach().cpu().contiguous()
            tensors[f"{name}.shape"] = torch.tensor(self.shapes[name], dtype=torch.int64)
        with atomic_target(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "zest_hf.SensitiveMask/1", "percent": str(self.percent),
                                                   "info": json.dumps(self.info)})

    @classmethod
    def load(cls, path: str | Path) -> "SensitiveMask":
        import json

        from ..serialization import read_safetensors

        meta, tensors = read_safetensors(path, "zest_hf sensitive mask")
        if meta.get("format") != "zest_hf.SensitiveMask/1":
            raise ValueError(f"{path} is not a zest_hf sensitive mask (no 'zest_hf.SensitiveMask/1' metadata)")
        names = sorted({k.rsplit(".", 1)[0] for k in tensors})
        try:
            indices = {n: tensors[f"{n}.indices"] for n in names}
            shapes = {n: tuple(int(v) for v in tensors[f"{n}.shape"].tolist()) for n in names}
        except KeyError as e:
            raise ValueError(f"{path} lacks tensor {e}; every layer needs .indices and .shape") from None
        return cls(indices=indices, shapes=shapes, percent=float(meta["percent"]), info=json.loads(meta["info"]))


def sensitive_mask(
    model: nn.Module,
    batches: Iterable[Mapping],
    percent: float = 0.1,
    *,
    target_modules=None,
    layers: Sequence[str] | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> SensitiveMask:
    """Rank every coordinate of the candidate weights by its squared gradient summed over ``batches``; keep the top
    ``percent`` % of all candidate coordinates (one global threshold, so sensitive layers get more).

    Args:
        model: A transformers model with a loss head, in full precision (the gradients rank coordinates).
        batches: Collated batches (labels included unless a causal LM); task data or generic text.
        percent: In (0, 100].
        target_modules: Candidate filter, as for :func:`zest_hf.find_targets`.
        layers: Restrict the mask to these module names (e.g. ZEST's top-k selection).
        max_batches: Use at most this many batches.
        progress: Show a progress bar.

    Raises:
        ValueError: ``percent`` outside (0, 100], ``layers`` empty or naming no candidate, no batch given.
        NoTargetsError: The model has no candidate projections.
        NonFiniteError: A gradient is NaN or infinite (the mask would be meaningless).
    """
    from tqdm.auto import tqdm

    from ..errors import NonFiniteError
    from ..modeling import device_of
    from ..probe.batch import check_batch, model_loss, prepare_batch
    from ..probe.state import borrowed
    from ..targets import find_targets
    from ..validation import check_real

    check_real("percent", percent, low=0, high=100, low_open=True)
    targets = find_targets(model, target_modules)
    if layers is not None:
        wanted = set(layers)
        if not wanted:
            raise ValueError("layers is empty: a mask over no layer has nothing to rank. Name at least one candidate "
                             f"projection (e.g. {targets[0].name!r}), or pass "
                             "layers=None for all candidates.")
        unknown = sorted(wanted - {t.name for t in targets})
        if unknown:
            raise ValueError(f"layers {unknown} are not candidate projections of this model; candidates are e.g. "
                             f"{[t.name for t in targets[:3]]}")
        targets = [t for t in targets if t.name in wanted]
    weights = {t.name: t.module.weight for t in targets}
    total = sum(w.numel() for w in weights.values())
    k = max(1, math.ceil(total * percent / 100))
    device = device_of(model)

    sums = {n: torch.zeros(w.shape, dtype=torch.float32, device=w.device) for n, w in weights.items()}
    n_batches = 0
    # eval mode: no dropout, so the estimate does not depend on a random mask of activations
    with borrowed(model, weights.values(), train_mode=False) as session:
        for name, w in weights.items():
            # Square into the running sum as soon as a gradient lands, and drop it: never a full grad buffer
            # per layer on top of the sum.
            session.handles.append(w.register_post_accumulate_grad_hook(_square_into(sums[name])))
        bar = tqdm(batches, total=max_batches, desc="sensitive mask", unit="batch", disable=not progress)
        for batch in bar:
            if max_batches is not None and n_batches >= max_batches:
                break
            check_batch(model, batch)
            loss = model_loss(model, prepare_batch(model, batch, device))
            if not torch.isfinite(loss):
                raise NonFiniteError(f"the loss is {loss.item()} on mask batch {n_batches}; check the inputs and "
                                     "the model's dtype (fp16 overflows easily) before computing a mask")
            loss.backward()
            n_batches += 1
        bar.close()
        if n_batches == 0:
            raise ValueError("no batch to compute the sensitive mask from; pass at least one collated batch")
        bad = [n for n, s in sums.items() if not torch.isfinite(s).all()]
        if bad:
            raise NonFiniteError(f"non-finite squared gradients in {bad[:3]}{'...' if len(bad) > 3 else ''}; "
                                 "the mask would be meaningless. Check for overflow (fp16) or bad inputs.")
        indices = _global_top_k(sums, k)
    shapes = {n: tuple(w.shape) for n, w in weights.items()}
    info = {"num_batches": n_batches, "candidate_coordinates": total, "selected": k,
            "layers_with_coordinates": sum(1 for i in indices.values() if i.numel())}
    return SensitiveMask(indices=indices, shapes=shapes, percent=float(percent), info=info)


def _square_into(acc: torch.Tensor):
    def hook(p: torch.Tensor) -> None:
        acc.add_(p.grad.detach().float().pow(2))
        p.grad = None

    return hook


def _global_top_k(sums: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """The k largest entries over all layers. Each layer contributes at most its own top k, so only
    (layers x k) values are ever compared, never a concatenation of every coordinate."""
    names, vals, locs = [], [], []
    for i, (name, s) in enumerate(sums.items()):
        flat = s.view(-1)
        top = torch.topk(flat, min(k, flat.numel()), sorted=False)
        names.append(name)
        vals.append(top.values.cpu())
        locs.append(torch.stack([torch.full_like(top.indices.cpu(), i), top.indices.cpu()]))
    allv = torch.cat(vals)
    loc = torch.cat(locs, dim=1)
    keep = torch.topk(allv, k, sorted=False).indices
    layer_of, idx_of = loc[0, keep], loc[1, keep]
    out = {}
    for i, name in enumerate(names):
        sel = idx_of[layer_of == i]
        out[name] = torch.sort(sel).values.to(sums[name].device)
    return out

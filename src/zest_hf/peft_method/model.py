"""ZestModel: the peft tuner for ``peft_type="ZEST"``. It walks the model and wraps exactly the selected modules.

``mode="full"``: each selected projection becomes a :class:`~zest_hf.peft_method.layer.ZestLayer` whose own weight and
bias train in place; everything else is frozen. ``save_pretrained`` writes those weights
(``...q_proj.zest_layer.weight``) and the head; loading checks that the file holds exactly the selection.

``mode="lora"``: peft's own LoRA tuner is built from :meth:`ZestConfig.to_lora_config` instead (``ZestModel(...)``
returns a ``LoraModel``), so the adapter a LoRA-mode model saves is a stock LoRA adapter that any LoRA server loads.

Both modes check, before touching the model, that the config is resolved and that every selected module exists in it.
"""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from ..errors import SelectionError
from ..targets import _is_projection
from .config import PREFIX, ZestConfig
from .layer import ZEST_ATTR, ZestLayer
from ..modeling import peft_base

__all__ = ["ZestModel", "check_modules"]


def check_modules(model: nn.Module, config: ZestConfig) -> None:
    """Raise unless ``config`` is resolved and every selected module is a projection of ``model``. Changes nothing."""
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

    def __new__(cls, model, peft_config, adapter_name: str = "default", low_cpu_mem_usage: bool = False,
                state_dict=None):
        config = peft_config[adapter_name] if isinstance(peft_config, dict) else peft_config
        if getattr(config, "mode", "full") != "lora":
            return super().__new__(cls)
        # LoRA mode is peft's LoRA on the selected modules: returning a LoraModel here (its __init__ has run, ours
        # will not) makes PeftModel hold a stock LoraConfig, so what it saves is a stock LoRA adapter.
        from peft.tuners.lora import LoraModel

        check_modules(model, config)
        lora = config.to_lora_config()
        tuner = LoraModel(model, {adapter_name: lora} if isinstance(peft_config, dict) else lora, adapter_name,
                          low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)
        lora.target_modules = set(config.selected_modules)  # peft shortens lists of >= 20 names; keep them exact
        return tuner

    # ---- injection
    def _pre_injection_hook(self, model: nn.Module, config: ZestConfig, adapter_name: str) -> None:
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

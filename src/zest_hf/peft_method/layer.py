"""ZestLayer: the tuner layer of full mode. It wraps one selected projection and trains that projection's OWN weight
and bias, in place.

No second copy of the weight exists. The projection module is registered twice inside the layer: as
``zest_layer[adapter_name]`` (first, so parameter names are ``...q_proj.zest_layer.default.weight``, the form peft
and transformers recognise as adapter weights, which they then mark trainable, save and load with their own code) and as
``base_layer`` (what peft's protocol unwraps on ``merge_and_unload``). Both names point to the same module object,
so whatever replaces its parameters (``.to()``, FSDP2, a loader) updates both at once.

What training in place costs and rules out:

* merging is a no-op (the weights already are the trained ones), so ``merge_and_unload()`` simply unwraps;
* there is no base model to switch back to: ``disable_adapter()`` raises, and ``unload()`` keeps the trained
  weights. Use ``mode="lora"`` where the untouched base model must stay available (e.g. a DPO reference model).
"""

from __future__ import annotations

from typing import Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from ..errors import ZestAdapterError

__all__ = ["ZestLayer", "ZestAdapterError", "ZEST_ATTR"]

#: Attribute of a ZestLayer under which the selected projection's own parameters are trained and saved.
ZEST_ATTR = "zest_layer"



class ZestLayer(nn.Module, BaseTunerLayer):
    """One selected projection, trained in place.

    Args:
        base_layer: The projection (``nn.Linear``, transformers' ``Conv1D``...).
        adapter_name: Name of the ZEST adapter.
        score: The predictor's score of this layer (kept for inspection: ``layer.zest_score[adapter_name]``).
        inference_mode: Freeze the weights instead of training them.
    """

    adapter_layer_names: tuple[str, ...] = (ZEST_ATTR,)
    other_param_names: tuple[str, ...] = ("zest_score",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, score: float, inference_mode: bool = False):
        super().__init__()
        # Registered before base_layer: the first registration names the shared parameters (see module docstring).
        self.zest_layer = nn.ModuleDict({adapter_name: base_layer})
        self.base_layer = base_layer
        self.zest_score: dict[str, float] = {adapter_name: float(score)}
        self.merged_adapters: list[str] = []
        self._disable_adapters = False
        self.set_adapter(adapter_name, inference_mode=inference_mode)

    def enable_adapters(self, enabled: bool) -> None:
        if not enabled:
            raise ZestAdapterError(
                "full-mode ZEST trains the selected weights in place, so there is no untouched base model to switch "
                "back to (disable_adapter / disable_adapter_layers). Use ZestConfig(mode='lora') if you need one, "
                "e.g. as a DPO reference model."
            )
        super().enable_adapters(True)

    # ---- merging: the weights already are the trained ones
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        self.merged_adapters.extend(check_adapters_to_merge(self, adapter_names))

    def unmerge(self) -> None:
        self.merged_adapters.clear()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.base_layer(x, *args, **kwargs)

    def __repr__(self) -> str:
        return f"zest.ZestLayer(score={self.zest_score}, base_layer={self.base_layer!r})"

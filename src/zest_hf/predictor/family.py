"""Which bundled predictor serves a model: the one trained on its architecture family.

Held out task by task, a predictor trained on one family's ground truth ranks that family's layers better than one
trained on every model pooled (``results/predictor_eval.md``, protocol "leave-one-task-out" against "leave-one-task-out,
all models": SmolLM2 tau 0.518 vs 0.508 and top-5 precision 0.53 vs 0.30; MiniLM 0.453 vs 0.413). What separates the
families is visible in the layers a probe sees, so the choice needs nothing but the candidates: a gated MLP
(``gate_proj`` / a fused ``gate_up_proj``) is a Llama-style decoder, whose ground truth trains
:data:`DECODER_PREDICTOR`; every other model gets the pooled :data:`~zest_hf.defaults.DEFAULT_PREDICTOR`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["AUTO", "DECODER_PREDICTOR", "POOLED_PREDICTOR", "FAMILIES", "family_of", "predictor_for"]

#: ``predictor="auto"`` (the default): the bundled predictor of the model's family.
AUTO = "auto"
#: Trained on Llama-style decoders' ground truth only.
DECODER_PREDICTOR = "zest-decoder"
#: Trained on every model's ground truth: the choice for a family without its own predictor.
POOLED_PREDICTOR = "zest-universal"
#: Family -> the bundled predictor that serves it.
FAMILIES = {"decoder": DECODER_PREDICTOR, "other": POOLED_PREDICTOR}
_GATED = {"gate", "gate_up"}


def family_of(layers: Iterable[Mapping | str]) -> str:
    """``"decoder"`` when the candidates include a gated MLP's projection (Llama, Mistral, Qwen, SmolLM, Gemma...),
    else ``"other"``. ``layers``: the probe's layer records (with ``type``) or their canonical types."""
    types = {layer if isinstance(layer, str) else layer["type"] for layer in layers}
    return "decoder" if types & _GATED else "other"


def predictor_for(layers: Iterable[Mapping | str]) -> str:
    """The bundled predictor ``predictor="auto"`` resolves to for these candidates."""
    return FAMILIES[family_of(layers)]

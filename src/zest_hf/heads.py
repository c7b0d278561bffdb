"""The task head: the freshly initialised output layer that is always trained alongside the selected layers."""

from __future__ import annotations

from torch import nn

__all__ = ["find_head"]

# Direct children of a transformers task model that form its task head (peft's modules_to_save defaults use the
# same names: "classifier" and "score").
_HEAD_NAMES = ("pre_classifier", "classifier", "score", "qa_outputs")


def find_head(model: nn.Module) -> list[str]:
    """Module names of the task head, e.g. ``["classifier"]`` for BERT, ``["score"]`` for Llama classifiers.

    A causal LM has no separate head: its ``lm_head`` is usually tied to the input embeddings, so training it would
    train the embeddings too. It returns ``[]``.

    Raises:
        ValueError: a model that is neither a causal LM nor has a recognisable head; pass the head's names yourself.
    """
    get = getattr(model, "get_base_model", None)
    base = get() if callable(get) else model
    names = [n for n, _ in base.named_children() if n in _HEAD_NAMES]
    if names:
        return names
    cls = type(base).__name__
    if cls.endswith(("ForCausalLM", "LMHeadModel")):
        return []
    raise ValueError(
        f"cannot tell which modules of {cls} form its task head (looked for children named {_HEAD_NAMES}); "
        "pass them explicitly (modules_to_save=[...])."
    )

"""Which loss the probe differentiates, and the checks that run before any pass touches the model."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from ..errors import MissingLabelsError
from ..modeling import base_model, is_causal_lm

__all__ = ["MissingLabelsError", "check_batch", "prepare_batch", "model_loss", "is_causal_lm"]



def check_batch(model: nn.Module, batch: Mapping) -> None:
    """Raise a clear error if ``batch`` cannot give ``model`` a loss. Runs before any forward pass."""
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"the probe batch must be a mapping of tensors (what a transformers data collator returns), got "
            f"{type(batch).__name__}. Build one with zest_hf.tasks.make_batch(...) or your Trainer's collator."
        )
    if "input_ids" not in batch and "inputs_embeds" not in batch:
        raise ValueError(f"the probe batch has no 'input_ids' (keys: {sorted(batch)}); tokenise the text first.")
    labels = batch.get("labels")
    if labels is None:
        if is_causal_lm(model) and "input_ids" in batch:
            check_inputs(model, batch)
            return  # the language-modelling loss on the inputs themselves
        raise MissingLabelsError(
            f"the probe batch has no 'labels', and {type(base_model(model)).__name__} computes no loss without them. "
            "Add a 'labels' tensor (class ids for sequence classification, the correct choice for multiple choice, "
            "token ids with -100 on ignored positions for a causal LM)."
        )
    if not torch.is_tensor(labels):
        raise TypeError(f"batch['labels'] must be a tensor, got {type(labels).__name__}")
    if labels.dtype in (torch.long, torch.int, torch.int32) and labels.numel() and bool((labels == -100).all()):
        raise MissingLabelsError(
            "every entry of batch['labels'] is -100 (ignored), so the loss is empty. For a causal LM keep the "
            "answer tokens' ids; check that truncation did not cut them off."
        )
    base = base_model(model)
    num_labels = getattr(getattr(base, "config", None), "num_labels", None)
    name = type(base).__name__
    if name.endswith("ForSequenceClassification") and labels.dtype in (torch.long, torch.int, torch.int32) and (
            num_labels and labels.numel() and (int(labels.max()) >= num_labels or int(labels.min()) < 0)):
        raise ValueError(
            f"batch['labels'] holds class ids {int(labels.min())}..{int(labels.max())}, but {name} has "
            f"num_labels={num_labels}: load the model with num_labels set to the task's class count."
        )


def check_inputs(model: nn.Module, batch: Mapping) -> None:
    """A causal-LM batch whose every position is padding gives a NaN loss: refuse it before any pass."""
    if is_causal_lm(model) and batch.get("labels") is None and torch.is_tensor(batch.get("attention_mask")):
        if not bool(batch["attention_mask"].bool().any()):
            raise MissingLabelsError("the batch is all padding (attention_mask is 0 everywhere), so the language-"
                                     "modelling loss is empty; draw a batch with text in it")


def prepare_batch(model: nn.Module, batch: Mapping, device: torch.device) -> dict:
    """Move tensors to ``device``; for a causal LM without labels, label the inputs (padding ignored)."""
    out = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    if out.get("labels") is None and is_causal_lm(model):
        labels = out["input_ids"].clone()
        if "attention_mask" in out:
            labels = labels.masked_fill(out["attention_mask"] == 0, -100)
        out["labels"] = labels
    # A key-value cache is useless for one pass and would keep extra tensors alive.
    if is_causal_lm(model):
        out.setdefault("use_cache", False)
    return out


def model_loss(model: nn.Module, batch: Mapping) -> torch.Tensor:
    """The model's own loss on ``batch`` (already prepared). Raises if the model returned none."""
    out = model(**batch)
    loss = out["loss"] if isinstance(out, Mapping) else getattr(out, "loss", None)
    if loss is None:
        raise MissingLabelsError(
            f"{type(base_model(model)).__name__} returned no loss for this batch (keys: {sorted(batch)}). Pass labels its "
            "forward accepts."
        )
    return loss

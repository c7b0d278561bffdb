"""Small helpers shared by the demo, the examples and the benchmarks: count, freeze, predict, score.

Training itself is the stock ``transformers.Trainer``; these only do what a script does around it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from ..modeling import device_of, find_head

__all__ = ["trainable_params", "freeze_all_but_head", "predict_labels", "accuracy_metric"]


def trainable_params(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def freeze_all_but_head(model: nn.Module) -> list[str]:
    """Head-only training: the task head (the modules ZEST trains besides its selection) is all that trains.
    Returns the head's top-level module names."""
    head = find_head(model)
    for name, p in model.named_parameters():
        p.requires_grad = name.split(".")[0] in head
    return head


@torch.no_grad()
def predict_labels(model: nn.Module, dataset, collator, batch_size: int = 64) -> list[int]:
    """Argmax of the logits for every example, in order; the model is put in eval mode.

    A plain loop on this process (not ``trainer.predict``, which every process of an accelerate run would have to
    join), so a trained and a reloaded model see identical batches.
    """
    model.eval()
    device = device_of(model)
    preds: list[int] = []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collator):
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        preds += model(**batch).logits.argmax(-1).tolist()
    return preds


def accuracy_metric() -> tuple[str, Callable[[list, list], float]]:
    """``(source, fn)``, ``fn(predictions, references) -> accuracy``: the ``evaluate`` library's metric if it loads.

    ``evaluate.load("accuracy")`` fetches the metric's script from the Hugging Face Hub, so offline it raises
    (FileNotFoundError with ``HF_HUB_OFFLINE=1``, a connection error without network). Then the same number is
    computed with numpy. With ``HF_HUB_OFFLINE=1`` evaluate is not even imported: its import alone takes ~10 s.
    """
    from huggingface_hub import constants

    offline = "numpy; evaluate.load needs the Hub"
    if constants.HF_HUB_OFFLINE:
        return offline, _numpy_accuracy
    try:
        import evaluate

        metric = evaluate.load("accuracy")
    except ImportError:
        return "numpy; evaluate is not installed", _numpy_accuracy
    except OSError:  # FileNotFoundError, and requests' ConnectionError, are OSErrors
        return offline, _numpy_accuracy
    return "evaluate", lambda preds, refs: float(metric.compute(predictions=preds, references=refs)["accuracy"])


def _numpy_accuracy(preds, refs) -> float:
    return float(np.mean(np.asarray(preds) == np.asarray(refs)))

"""The fixed training budget of a contribution run: plain data, so the command line reads its defaults cheaply."""

from __future__ import annotations

from dataclasses import dataclass

from ..validation import check_int, check_real

__all__ = ["ContribBudget"]


@dataclass(frozen=True)
class ContribBudget:
    """The fixed training budget of one contribution run.

    Attributes:
        steps: Optimiser steps.
        batch_size: Training examples per step.
        max_length: Tokens per sequence (longer texts are truncated).
        lr_layer: AdamW learning rate of the trained layer's weight and bias.
        lr_head: AdamW learning rate of the task head (trained from scratch, so larger).
        eval_examples: Validation examples scored (the first ones of the seeded validation split).
        eval_batch_size: Batch size for validation.
        max_epochs: The stream of ``steps * batch_size`` training examples may cycle through the training split at
            most this many times; more is an error (the budget would be larger than the data).
    """

    steps: int = 60
    batch_size: int = 32
    max_length: int = 64
    lr_layer: float = 1e-3
    lr_head: float = 3e-3
    eval_examples: int = 512
    eval_batch_size: int = 64
    max_epochs: float = 2.0

    def validate(self) -> None:
        for name in ("steps", "batch_size", "max_length", "eval_examples", "eval_batch_size"):
            check_int(f"budget.{name}", getattr(self, name))
        for name in ("lr_layer", "lr_head", "max_epochs"):
            check_real(f"budget.{name}", getattr(self, name), low=0, low_open=True)

"""LISA (Pan et al. 2024, arXiv 2403.17919) as a Trainer callback: the baseline a ZEST selection is compared with.

LISA keeps the embeddings and the head always trainable and, every ``interval`` steps, draws ``n_layers`` of the
transformer blocks uniformly at random to train until the next draw; every other block is frozen. As LMFlow's and
Axolotl's implementations do, a draw only flips ``requires_grad``: the Trainer builds its optimizer over every block
(the first draw comes at ``on_train_begin``, after the optimizer exists), and a frozen parameter gets no gradient, so
AdamW skips it (its state, once made, stays).
"""

from __future__ import annotations

import numpy as np
from torch import nn
from transformers import TrainerCallback

from ..modeling import peft_base

__all__ = ["LisaCallback", "transformer_blocks"]


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (Llama ``model.layers``, BERT ``encoder.layer``, GPT-2 ``h``...)."""
    from ..targets import block_list, find_targets

    base = peft_base(model)
    return block_list(base, find_targets(base), "LISA")[1]


class LisaCallback(TrainerCallback):
    """Train ``n_layers`` randomly drawn blocks (plus embeddings and head), re-drawn every ``interval`` steps.

    Args:
        model: The model the Trainer trains (set ``requires_grad`` as wanted for embeddings and head before; LISA
            leaves every parameter outside the blocks as it finds it).
        n_layers: Blocks active at a time (LISA's gamma).
        interval: Steps between draws (LISA's K).
        seed: Seeds the draws (recorded in :attr:`history`). A run resumed from a checkpoint draws, at every step,
            the blocks the uninterrupted run drew.

    Attributes:
        history: ``(step, [block indices])`` of every draw.
    """

    def __init__(self, model: nn.Module, n_layers: int = 2, interval: int = 20, seed: int = 0):
        self.blocks = transformer_blocks(model)
        if not 1 <= n_layers <= len(self.blocks):
            raise ValueError(f"n_layers must be between 1 and the model's {len(self.blocks)} blocks, got {n_layers}")
        if interval < 1:
            raise ValueError(f"interval must be >= 1 step, got {interval}")
        self.n_layers, self.interval, self.seed = n_layers, interval, seed
        self.rng = np.random.default_rng(seed)
        self.history: list[tuple[int, list[int]]] = []

    def _choose(self) -> list[int]:
        return sorted(int(i) for i in self.rng.choice(len(self.blocks), size=self.n_layers, replace=False))

    def _draw(self, step: int) -> None:
        active = self._choose()
        for i, block in enumerate(self.blocks):
            for p in block.parameters():
                p.requires_grad_(i in active)
        self.history.append((step, active))

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0:
            # Resumed: the uninterrupted run drew once at step 0 and once at every multiple of interval since;
            # replay those draws so that this step gets the draw of the interval it falls in.
            self.rng = np.random.default_rng(self.seed)
            for _ in range(state.global_step // self.interval):
                self._choose()
        self._draw(state.global_step)  # the optimizer exists by now, built over every block
        return control

    def on_step_begin(self, args, state, control, **kwargs):
        step = state.global_step
        # not again at the step on_train_begin drew at (step 0, or a resumed run's first step)
        if step % self.interval == 0 and not (self.history and self.history[-1][0] == step):
            self._draw(step)
        return control

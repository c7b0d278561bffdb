"""Borrowing a model for a measurement, and giving it back exactly as it was.

Everything a measurement changes (``requires_grad`` flags, ``.grad`` contents, every module's train/eval mode, hooks)
is changed here and undone in a ``finally``, so the probe and the sensitive mask of :mod:`zest_hf.sparse_zo` share
one guarantee: afterwards the model is bit for bit what it was, also when the measurement raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["Session", "borrowed"]


class Session:
    """What the probe changed; everything here is reverted by :func:`borrowed`."""

    def __init__(self):
        self.handles: list = []
        self.phase = "idle"  # hooks act only in the pass they belong to (see the probe's data pass)
        self.kept_outputs: list[list] = []

    @contextlib.contextmanager
    def hooks(self):
        """Hooks registered through the yielded ``add`` live for one pass; :func:`borrowed` is the safety net."""
        mine = []

        def add(handle):
            mine.append(handle)
            self.handles.append(handle)

        try:
            yield add
        finally:
            for h in mine:
                h.remove()


@contextlib.contextmanager
def borrowed(model: nn.Module, trainable: Iterable[torch.Tensor], train_mode: bool):
    """Borrow ``model``: only ``trainable`` require grad, no stale ``.grad``, every module in ``train_mode``.

    Yields a :class:`Session` whose hooks and kept outputs are released on exit; then every parameter's flag and
    ``.grad`` (the same tensor object) and every module's own mode come back as they were.
    """
    params = list(model.parameters())
    saved_flags = [p.requires_grad for p in params]
    saved_grads = [p.grad for p in params]
    saved_modes = [(m, m.training) for m in model.modules()]
    session = Session()
    try:
        trainable = list(trainable)
        wanted = {id(w) for w in trainable}
        for p in params:
            p.grad = None
            p.requires_grad_(id(p) in wanted)
        for w in trainable:  # a weight may live outside model.parameters() only if shared oddly; be explicit
            w.requires_grad_(True)
        model.train(train_mode)
        yield session
    finally:
        for h in session.handles:
            h.remove()
        for holder in session.kept_outputs:
            holder.clear()
        for p, flag, g in zip(params, saved_flags, saved_grads):
            p.requires_grad_(flag)
            p.grad = g
        for m, mode in saved_modes:
            m.training = mode

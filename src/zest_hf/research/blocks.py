"""Run a model from block ``b`` on, fed with cached block inputs: the ground-truth collector's speed trick.

When only layers in blocks >= b train, the inputs of block b never change, so they are computed once per task and
reused: each step then costs forward and backward over blocks >= b only. This works on any transformers model whose
blocks sit in one ``nn.ModuleList`` (BERT ``encoder.layer``, Llama ``model.layers``, GPT-2 ``transformer.h``...):

* :meth:`BlockRunner.capture` runs the full model (no grad) and stops at block b, returning its input;
* :meth:`BlockRunner.start_at` temporarily replaces the list by its tail ``[b:]`` and swaps the cached tensor in as
  the first remaining block's ``hidden_states``. Embeddings still run (a lookup; negligible) and everything the
  model builds for its blocks (attention masks, rotary position embeddings) is built as usual, so the result is the
  same as a full forward.

Both undo their changes in ``finally``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..targets import Target, block_list

__all__ = ["BlockRunner"]


class _Stop(Exception):
    """Raised by the capture hook to end a forward pass early."""


class BlockRunner:
    """Blocks of ``model`` as found from its targets (all targets must share one block list)."""

    def __init__(self, model: nn.Module, targets: list[Target]):
        self.model = model
        self.path, self.blocks = block_list(model, targets, "block caching")
        parent_path, _, self.attr = self.path.rpartition(".")
        self.parent = model.get_submodule(parent_path) if parent_path else model

    def __len__(self) -> int:
        return len(self.blocks)

    @torch.no_grad()
    def capture(self, b: int, batch: Mapping, start: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
        """The hidden states entering block ``b`` for ``batch`` (no grad, the forward stops there). With ``start``
        = ``(b0, h0)``, the inputs of a lower block ``b0`` captured before, only blocks ``b0 .. b-1`` run: walking
        up the blocks costs one forward pass in all, not one per block."""
        if start is not None:
            b0, h0 = start
            if b0 > b:
                raise ValueError(f"cannot capture block {b}'s input from block {b0}'s, which lies above it")
            if b0 == b:
                return h0
        box = {}

        def hook(module, args, kwargs):
            box["h"] = (args[0] if args else kwargs["hidden_states"]).detach()
            raise _Stop

        handle = self.blocks[b].register_forward_pre_hook(hook, with_kwargs=True)
        ctx = self.start_at(start[0], lambda: start[1]) if start is not None else contextlib.nullcontext()
        try:
            with ctx:
                self.model(**batch)
        except _Stop:
            pass
        finally:
            handle.remove()
        if "h" not in box:
            raise RuntimeError(f"block {b} of {self.path} never ran in the forward pass")
        return box["h"]

    @contextlib.contextmanager
    def start_at(self, b: int, feed: Callable[[], torch.Tensor]):
        """Within the context, a forward pass runs blocks ``b..`` only, block b receiving ``feed()``."""
        first = self.blocks[b]

        def hook(module, args, kwargs):
            h = feed()
            if args:
                return (h, *args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = h
            return args, kwargs

        handle = first.register_forward_pre_hook(hook, with_kwargs=True)
        setattr(self.parent, self.attr, nn.ModuleList(list(self.blocks)[b:]))
        try:
            yield
        finally:
            setattr(self.parent, self.attr, self.blocks)
            handle.remove()

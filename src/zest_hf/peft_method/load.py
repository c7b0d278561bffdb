"""Loading a saved ZEST adapter all or nothing: :func:`load_adapter`.

``peft.PeftModel.from_pretrained`` wraps the base model in place first and reads the weights afterwards, so a load
that fails half way leaves tuner layers, frozen flags and a ``peft_config`` behind. For a LoRA-mode adapter stock
peft also skips target modules the base lacks without a word. This loader checks the saved selection against the
base before anything changes, and puts every module, flag and value back if peft fails after wrapping.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .config import ZestConfig, ZestLoraConfig, hub_kwargs
from .model import check_modules

__all__ = ["load_adapter"]


def load_adapter(model: nn.Module, path: str | os.PathLike, *, adapter_name: str = "default",
                 is_trainable: bool = False, **kwargs):
    """Load a ZEST adapter saved by ``save_pretrained`` (either mode) onto ``model``; returns the ``PeftModel``.

    Args:
        model: The base transformers model the adapter was trained from (same architecture and size).
        path: The adapter directory or Hub repo id (full mode: a ZEST ``adapter_config.json``; LoRA mode: the stock
            LoRA adapter with ``zest_selection.json`` beside it).
        adapter_name / is_trainable / kwargs: As for ``peft.PeftModel.from_pretrained`` (``subfolder``, ``revision``,
            ``token``...), but for ``config``: the adapter's own is used. A LoRA-mode adapter's config is a
            :class:`ZestLoraConfig` that keeps the selection when the model is saved again.

    Raises:
        SelectionError: the weights file is torn or holds another selection than its config, or the selection names
            modules ``model`` lacks. Nothing was changed.

    On any failure, also one raised inside peft after it wrapped the model, ``model`` is given back exactly as it
    was: the same module objects in the same places, ``requires_grad`` flags, values, no ``peft_config``.
    """
    import peft

    if "config" in kwargs:
        raise TypeError("load_adapter reads the config saved with the adapter; to load the weights under another "
                        "config, call peft.PeftModel.from_pretrained(model, path, config=...)")
    # reads the selection (subfolder and Hub kwargs as peft reads the adapter) and checks the weights file against it
    config = ZestConfig.from_pretrained(path, **kwargs)
    check_modules(model, config)
    peft_config = config
    if config.mode == "lora":
        # the stock LoRA config as saved, carrying the selection: a loaded adapter saved again keeps its
        # zest_selection.json
        saved = peft.PeftConfig.from_pretrained(path, subfolder=kwargs.get("subfolder"), **hub_kwargs(kwargs))
        peft_config = ZestLoraConfig.from_lora(saved, config)
    touched = set(config.selected_modules) | set(config.modules_to_save or [])
    with _restored_on_failure(model, touched):
        return peft.PeftModel.from_pretrained(model, path, adapter_name=adapter_name, is_trainable=is_trainable,
                                              config=peft_config, **kwargs)


class _restored_on_failure:
    """Remember what loading an adapter can change in ``model``; on an exception put all of it back.

    Module objects are remembered by place (peft wraps them, keeping the original inside the wrapper), flags for
    every parameter, values only of the modules the adapter writes into (the selection and the head): a full-mode
    load writes the selected weights in place.
    """

    def __init__(self, model: nn.Module, touched: set[str]):
        self.model = model
        self.touched = touched

    def __enter__(self):
        m = self.model
        self.children = [(parent, name, child) for parent in m.modules() for name, child in parent.named_children()]
        self.flags = [(p, p.requires_grad) for p in m.parameters()]
        self.values = [(p, p.detach().clone()) for name, mod in m.named_modules()
                       if any(name == t or name.endswith(f".{t}") for t in self.touched)
                       for p in mod.parameters()]
        self.had_config = "peft_config" in vars(m)
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return False
        for parent, name, child in self.children:
            if getattr(parent, name, None) is not child:
                setattr(parent, name, child)
        with torch.no_grad():
            for p, v in self.values:
                p.copy_(v)
        for p, flag in self.flags:
            p.requires_grad_(flag)
        if not self.had_config:
            vars(self.model).pop("peft_config", None)
        return False

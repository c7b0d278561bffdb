"""ZEST as a peft method: ``peft.get_peft_model(model, ZestConfig(...))`` and ``PeftModel.from_pretrained``.

One folder, as peft's own tuners: ``config.py`` (what to select and how to train it), ``layer.py`` (one selected
projection, trained in place), ``model.py`` (walks the model, wraps the selection, saves and loads it), ``load.py`` (loading a saved
adapter all or nothing), ``save.py`` (saving one, from sharded processes too).

peft's ``PeftType`` enum is closed to other packages (``register_peft_method`` refuses unknown names), so
:func:`register` adds ``"ZEST"`` to the dicts peft looks methods up in. Importing this package calls it, and
``import zest_hf`` makes sure this package is imported as soon as peft is (``zest_hf._hooks``).
"""

from __future__ import annotations

import importlib

from .config import MODES, PEFT_TYPE, PREFIX, SELECTION_FILE, ZestConfig, ZestLoraConfig, ZestNotSelectedError
from .layer import ZestAdapterError, ZestLayer
from .load import load_adapter
from .model import ZestModel, check_modules
from .save import save_adapter

__all__ = [
    "MODES",
    "PEFT_TYPE",
    "PREFIX",
    "SELECTION_FILE",
    "ZestAdapterError",
    "ZestConfig",
    "ZestLayer",
    "ZestLoraConfig",
    "ZestModel",
    "ZestNotSelectedError",
    "check_modules",
    "load_adapter",
    "register",
    "save_adapter",
]

# (module, dict, value): where peft versions keep their method registries. A dict missing in the installed peft is
# skipped; the same dict reachable from two modules is simply set twice.
_REGISTRIES = (
    ("peft.mapping", "PEFT_TYPE_TO_CONFIG_MAPPING", ZestConfig),
    ("peft.mapping", "PEFT_TYPE_TO_TUNER_MAPPING", ZestModel),
    ("peft.mapping", "PEFT_TYPE_TO_PREFIX_MAPPING", PREFIX),
    ("peft.peft_model", "PEFT_TYPE_TO_MODEL_MAPPING", ZestModel),  # peft < 0.14
    ("peft.utils.constants", "PEFT_TYPE_TO_PREFIX_MAPPING", PREFIX),  # older peft kept prefixes here
)


def register() -> list[str]:
    """Make peft know ``peft_type="ZEST"``. Idempotent; returns the registries it wrote to.

    A peft whose registries are all unknown gets a warning, not an error: probing and ranking need no peft.
    """
    done = []
    for module_name, attr, value in _REGISTRIES:
        try:
            registry = getattr(importlib.import_module(module_name), attr, None)
        except ImportError:
            continue
        if isinstance(registry, dict):
            registry[PEFT_TYPE] = value
            done.append(f"{module_name}.{attr}")
    if not any(d.endswith("CONFIG_MAPPING") for d in done) or not any("TUNER" in d or "MODEL_MAPPING" in d
                                                                       for d in done):
        import warnings

        import peft

        warnings.warn(f"peft {peft.__version__} has no method registry zest_hf knows: ZestConfig will not work with "
                      "get_peft_model / PeftModel.from_pretrained", RuntimeWarning, stacklevel=2)
    return done


register()

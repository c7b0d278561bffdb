"""The two things ``import zest_hf`` does to Python's import system, in one place.

1. **Registering ZEST with peft when peft loads.** ``import zest_hf`` must not import peft: peft imports
   bitsandbytes and scipy, and takes seconds, which the command line and a plain probe do not need. But a user's
   ``PeftModel.from_pretrained(base, zest_adapter)`` must find ``peft_type="ZEST"`` without touching any zest_hf
   name. So the registration runs right after peft's own import finishes (or at once, if peft is already loaded).
2. **Old module paths.** Modules that moved in zest_hf 0.3 stay importable under their 0.2 names (``MOVED``):
   ``import zest_hf.contrib`` gives the very module ``zest_hf.research.contrib``, so patching one patches both.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["install", "MOVED"]

#: zest_hf 0.2 module path -> where it lives now.
MOVED = {
    "zest_hf.loss": "zest_hf.probe.batch",
    "zest_hf.heads": "zest_hf.modeling",
    "zest_hf.rank": "zest_hf.selection.rank",
    "zest_hf.hub": "zest_hf.predictor.hub",
    "zest_hf.callback": "zest_hf.train.callback",
    "zest_hf.finetune": "zest_hf.train.finetune",
    "zest_hf.contrib": "zest_hf.research.contrib",
    "zest_hf.blocks": "zest_hf.research.blocks",
    "zest_hf.study": "zest_hf.research.study",
    "zest_hf.evaluation": "zest_hf.research.evaluation",
}


def _register_with_peft() -> None:
    if "zest_hf.peft_method" in sys.modules:
        return  # loaded, or loading (it imported peft): the package registers itself as its import completes
    try:
        importlib.import_module("zest_hf.peft_method")
    except Exception as e:  # never break the user's `import peft`
        warnings.warn(f"zest_hf could not register peft_type='ZEST' with peft ({type(e).__name__}: {e}); ZEST "
                      "adapters will not load through peft", RuntimeWarning, stacklevel=2)


class _Alias(importlib.abc.Loader):
    """Loads an old module path as the module at its new path (the same object)."""

    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass


class _AfterLoad(importlib.abc.Loader):
    """Wraps peft's own loader: runs it, then registers ZEST. Everything else is the wrapped loader's."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _register_with_peft()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, _Alias(MOVED[fullname]))
        if fullname != "peft":
            return None
        for finder in sys.meta_path:  # the finder that would have found peft without us
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _AfterLoad(spec.loader)
                return spec
        return None


def install() -> None:
    """Idempotent: put the finder first on ``sys.meta_path``, and register with an already loaded peft."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    if "peft" in sys.modules:
        _register_with_peft()

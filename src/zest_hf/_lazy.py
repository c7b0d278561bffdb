"""Names of a package that load on first use (PEP 562), so importing the package costs nothing until they do.

``import zest_hf`` must be cheap and quiet: the ``zest`` command line answers ``--help`` without torch, and nothing
imports pandas, scipy, matplotlib or bitsandbytes until a command needs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, names: Mapping[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` that import ``names[name]`` (a module, relative to ``package``
    when it starts with a dot) the first time ``package.name`` is read, and cache the value on the package."""

    def __getattr__(name: str):
        where = names.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(where, package if where.startswith(".") else None)
        value = getattr(module, name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(names) | set(importlib.import_module(package).__dict__))

    return __getattr__, __dir__

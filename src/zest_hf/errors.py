"""Every error zest_hf raises on purpose, in one leaf module.

Each subclasses the built-in a caller would already catch (``ValueError`` for a bad input, ``ImportError`` for a
missing package...), so ``except ValueError`` keeps working; the message always names what was wrong and what to do.
The classes stay importable from the module that raises them (``zest_hf.selection.SelectionError`` etc.).
"""

from __future__ import annotations

__all__ = [
    "MissingLabelsError", "NoTargetsError", "NonFiniteError", "SelectionError", "ZestNotSelectedError",
    "ZestAdapterError", "PredictorError", "PredictorNotFoundError", "ZestTrainerError", "MissingModelPackageError",
    "MissingDataPackageError",
]


class MissingLabelsError(ValueError):
    """The batch has no ``labels`` and the model's loss needs them."""


class NoTargetsError(ValueError):
    """Raised when a model has no candidate projection; the message says how to pass a pattern."""


class NonFiniteError(FloatingPointError):
    """The loss or a gradient was NaN/inf; the message names where. The model is left as it was."""


class SelectionError(ValueError):
    """A selection that cannot be made or applied: bad ``top_k``/``budget``, or modules the model does not have."""


class ZestNotSelectedError(SelectionError):
    """A ZestConfig without a selection was asked to build a model; the message says how to resolve it."""


class ZestAdapterError(RuntimeError):
    """An adapter operation that full-mode ZEST cannot do because it trains the base weights in place."""


class PredictorError(ValueError):
    """A predictor that cannot be used as asked (bad config, other metrics than the probe gives...)."""


class PredictorNotFoundError(PredictorError, FileNotFoundError):
    """No predictor under that name, path or repo id (or the Hub is unreachable and it is not cached)."""


class ZestTrainerError(RuntimeError):
    """The Trainer is in a state where ZEST cannot choose what it trains (optimizer already built, model wrapped...)."""


class MissingModelPackageError(ImportError):
    """A packaged model was asked for but its pip package is not installed; the message has the pip command."""


class MissingDataPackageError(ImportError):
    """A task's data comes from a pip package that is not installed. The message holds the pip command."""

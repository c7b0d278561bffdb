"""zest_hf: zero-shot sparse fine-tuning (ZEST) for the Hugging Face stack.

From ONE minibatch, rank every linear projection of a pretrained transformer by how much fine-tuning it would help,
then train only the top-k.

    >>> import zest_hf
    >>> targets = zest_hf.find_targets(model)            # doctest: +SKIP
    >>> result = zest_hf.probe(model, batch)             # doctest: +SKIP

Training only the selection, with peft or a stock Trainer (once peft is imported, ``peft_type="ZEST"`` is
registered with it)::

    >>> cfg = zest_hf.select(model, batch, zest_hf.ZestConfig(top_k=8))   # doctest: +SKIP
    >>> model = peft.get_peft_model(model, cfg)                          # doctest: +SKIP
    >>> zest_hf.prepare_trainer(trainer, zest_hf.ZestConfig(top_k=8))    # doctest: +SKIP

The package follows the data, one subpackage a stage: ``targets`` -> ``probe`` -> ``metrics`` -> ``predictor`` ->
``selection`` -> ``peft_method`` (apply) -> ``train``; ``sparse_zo`` is the second, zeroth-order mode. Every public
name loads on first use, so ``import zest_hf`` imports neither torch nor peft.
"""

from . import _hooks
from . import probe as _probe_stage  # noqa: F401  (loaded now, so its name can go to the probe() function below)
from ._lazy import lazy_exports
from ._version import __version__
from .errors import MissingLabelsError, NonFiniteError, NoTargetsError, SelectionError

# The stage package `zest_hf.probe` and the function `zest_hf.probe()` share a name; the attribute is the function
# (loaded by __getattr__ on first use), and later imports of the package leave the attribute alone.
del probe  # noqa: F821  (bound by the import of the stage above)

_hooks.install()

__all__ = [
    "__version__",
    "CANONICAL_TYPES",
    "METRICS",
    "MissingLabelsError",
    "NoTargetsError",
    "NonFiniteError",
    "ProbeResult",
    "SelectionError",
    "Target",
    "ZestCallback",
    "ZestConfig",
    "find_targets",
    "load_adapter",
    "prepare_trainer",
    "probe",
    "register_metric",
    "resolve_metrics",
    "save_adapter",
    "select",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "CANONICAL_TYPES": ".targets", "Target": ".targets", "find_targets": ".targets",
    "METRICS": ".metrics", "register_metric": ".metrics", "resolve_metrics": ".metrics",
    "ProbeResult": ".probe.result", "probe": ".probe.run",
    "select": ".selection.resolve",
    "ZestConfig": ".peft_method.config", "load_adapter": ".peft_method.load",
    "save_adapter": ".peft_method.save",
    "ZestCallback": ".train.callback", "prepare_trainer": ".train.callback",
})

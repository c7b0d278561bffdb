"""zest_hf: zero-shot sparse fine-tuning (ZEST) for the Hugging Face stack.

From ONE minibatch, rank every linear projection of a pretrained transformer by how much fine-tuning it would help,
then train only the top-k.

    >>> import zest_hf
    >>> targets = zest_hf.find_targets(model)            # doctest: +SKIP
    >>> result = zest_hf.probe(model, batch)             # doctest: +SKIP

Training only the selection, with peft or a stock Trainer (``import zest_hf`` registers ``peft_type="ZEST"``)::

    >>> cfg = zest_hf.select(model, batch, zest_hf.ZestConfig(top_k=8))   # doctest: +SKIP
    >>> model = peft.get_peft_model(model, cfg)                          # doctest: +SKIP
    >>> zest_hf.prepare_trainer(trainer, zest_hf.ZestConfig(top_k=8))    # doctest: +SKIP
"""

from ._version import __version__

from .loss import MissingLabelsError
from .metrics import METRICS, register_metric, resolve_metrics
from .probe import NonFiniteError, ProbeResult, probe
from .targets import CANONICAL_TYPES, NoTargetsError, Target, find_targets
from .selection import SelectionError, select
from .peft_method import ZestConfig, register as _register_peft_method
from .callback import ZestCallback, prepare_trainer

_register_peft_method()

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
    "prepare_trainer",
    "probe",
    "register_metric",
    "resolve_metrics",
    "select",
]

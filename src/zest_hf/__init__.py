"""zest_hf: zero-shot sparse fine-tuning (ZEST) for the Hugging Face stack.

From ONE minibatch, rank every linear projection of a pretrained transformer by how much fine-tuning it would help,
then train only the top-k.

    >>> import zest_hf
    >>> targets = zest_hf.find_targets(model)            # doctest: +SKIP
    >>> result = zest_hf.probe(model, batch)             # doctest: +SKIP
"""

__version__ = "0.1.0"

from .loss import MissingLabelsError
from .metrics import METRICS, register_metric, resolve_metrics
from .probe import NonFiniteError, ProbeResult, probe
from .targets import CANONICAL_TYPES, NoTargetsError, Target, find_targets

__all__ = [
    "__version__",
    "CANONICAL_TYPES",
    "METRICS",
    "MissingLabelsError",
    "NoTargetsError",
    "NonFiniteError",
    "ProbeResult",
    "Target",
    "find_targets",
    "probe",
    "register_metric",
    "resolve_metrics",
]

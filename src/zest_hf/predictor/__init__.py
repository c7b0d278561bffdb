"""Stage 4, the predictor: a small network that scores each layer from its probe metrics.

* :mod:`.model` - :class:`ZestPredictor` and the features it reads (``config.json`` + ``model.safetensors``);
* :mod:`.train` - fitting one on ground truth with a pairwise ranking loss;
* :mod:`.hub` - where predictors come from: a directory, a bundled name, or a Hub repo id;
* :mod:`.card` - the model card it is saved with.
"""

from .._lazy import lazy_exports
from ..defaults import DEFAULT_PREDICTOR

__all__ = ["ZestPredictor", "PredictorError", "PredictorNotFoundError", "layer_features", "TYPE_SLOTS",
           "train_predictor", "ModelTask", "top_k_precision", "load_predictor", "bundled_predictors",
           "push_predictor", "write_card", "DEFAULT_PREDICTOR"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "ZestPredictor": ".model", "layer_features": ".model", "TYPE_SLOTS": ".model",
    "PredictorError": "zest_hf.errors", "PredictorNotFoundError": "zest_hf.errors",
    "train_predictor": ".train", "ModelTask": ".train", "top_k_precision": ".train",
    "load_predictor": ".hub", "bundled_predictors": ".hub", "push_predictor": ".hub", "write_card": ".card",
})

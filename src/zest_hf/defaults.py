"""Defaults shared by the API, the command line and the demo, each written once."""

__all__ = ["DEFAULT_PREDICTOR", "DEFAULT_MODEL", "DEFAULT_TASK"]

#: The predictor used when none is named: ``"auto"``, the bundled predictor of the model's architecture family
#: (:mod:`zest_hf.predictor.family`: ``predictors/zest-decoder`` for Llama-style decoders, ``predictors/zest-universal``
#: for any other model), so it works offline.
DEFAULT_PREDICTOR = "auto"
#: The packaged model and task the command line and the demo use when none is named.
DEFAULT_MODEL = "minilm"
DEFAULT_TASK = "bbc_news"

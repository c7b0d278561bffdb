"""Defaults shared by the API, the command line and the demo, each written once."""

__all__ = ["DEFAULT_PREDICTOR", "DEFAULT_MODEL", "DEFAULT_TASK"]

#: The predictor used when none is named: bundled with zest_hf (``predictors/zest-universal``), so it works offline.
DEFAULT_PREDICTOR = "zest-universal"
#: The packaged model and task the command line and the demo use when none is named.
DEFAULT_MODEL = "minilm"
DEFAULT_TASK = "bbc_news"

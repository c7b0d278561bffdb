"""Stage 7, training: the selection trained by a stock ``transformers.Trainer`` (or TRL's, which is one).

* :mod:`.callback` - :func:`prepare_trainer` (probe one batch of the Trainer's own data, apply the selection before
  the optimizer exists) and :class:`ZestCallback` (checks at ``on_train_begin`` that training runs on it);
* :mod:`.lisa` - :class:`LisaCallback`, the LISA baseline (random blocks re-drawn every K steps);
* :mod:`.finetune` - small helpers for scripts: freeze all but the head, count trainable parameters, predict.
"""

from .._lazy import lazy_exports

__all__ = ["ZestCallback", "prepare_trainer", "ZestTrainerError", "LisaCallback"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "ZestCallback": ".callback", "prepare_trainer": ".callback", "ZestTrainerError": "zest_hf.errors",
    "LisaCallback": ".lisa",
})

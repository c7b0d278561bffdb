"""Zeroth-order fine-tuning of extremely sparse "sensitive" weights over a 4-bit frozen model.

After "Zeroth-Order Fine-Tuning of LLMs with Extreme Sparsity" (arXiv 2406.02913), with MeZO's SPSA step:

1. :func:`sensitive_mask`: the top p% (default 0.1%) coordinates of the candidate projections by squared gradient
   summed over a few batches (a diagonal Fisher estimate), optionally inside ZEST's top-k layers only;
2. :func:`attach_sparse`: every candidate projection's frozen weights go to 4 bit (bitsandbytes NF4), the sensitive
   coordinates stay apart in exact fp32 and are written over the dequantised weight in the forward pass;
3. :func:`zo_step`: two forward passes with +-eps z on the sensitive values (z from a seed, never stored), exact
   restore, update with the regenerated z; no gradients, no optimizer state;
4. :class:`ZOTrainer` runs 1-3 inside a stock Trainer; ``save_model`` writes only the tuned coordinates
   (:func:`save_sparse_delta`), :func:`apply_sparse_delta` writes them into a plain base model and
   :func:`load_sparse_zo` rebuilds the 4-bit + sparse model.
"""

from .config import SparseZOConfig
from .io import (
    apply_sparse_delta,
    load_sparse_values,
    load_sparse_zo,
    read_sparse_delta,
    save_sparse_delta,
)
from .layers import SparseQuantLinear, attach_sparse, sparse_layers, tunable_values
from .mask import SensitiveMask, sensitive_mask
from .step import perturb, step_seed, zo_step
from .trainer import MASK_FILE, ZOTrainer

__all__ = [
    "MASK_FILE",
    "SensitiveMask",
    "SparseQuantLinear",
    "SparseZOConfig",
    "ZOTrainer",
    "apply_sparse_delta",
    "attach_sparse",
    "load_sparse_values",
    "load_sparse_zo",
    "perturb",
    "read_sparse_delta",
    "save_sparse_delta",
    "sensitive_mask",
    "sparse_layers",
    "step_seed",
    "tunable_values",
    "zo_step",
]

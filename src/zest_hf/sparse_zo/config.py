"""``SparseZOConfig``: zeroth-order fine-tuning of a few "sensitive" weights over a 4-bit frozen model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Optional, Union

from ..defaults import DEFAULT_PREDICTOR
from ..serialization import JsonSerializable, check_keys
from ..validation import check_int, check_real

__all__ = ["SparseZOConfig"]

QUANT_TYPES = ("nf4", "fp4")
#: The block sizes bitsandbytes' 4-bit quantisation accepts (on every backend it has).
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def check_quantization(quantize, blocksize) -> None:
    """Refuse a quantisation setting bitsandbytes would reject, before anything is built or frozen."""
    if quantize is not None and quantize not in QUANT_TYPES:
        raise ValueError(f"quantize must be one of {QUANT_TYPES} or None, got {quantize!r}")
    check_int("blocksize", blocksize, hint=" (bitsandbytes' 4-bit block size; 64 is its default)")
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize must be one of {BLOCKSIZES} (the block sizes bitsandbytes' 4-bit quantisation "
                         f"accepts), got {blocksize}; 64 is its default")


@dataclass
class SparseZOConfig(JsonSerializable):
    """What :class:`~zest_hf.sparse_zo.ZOTrainer` tunes and how (after "Zeroth-Order Fine-Tuning of LLMs with
    Extreme Sparsity", arXiv 2406.02913, with MeZO's in-place SPSA step).

    The learning rate, the number of steps, the batch size and the schedule are the Trainer's own
    (``TrainingArguments``); this config holds what is specific to the method.

    Args:
        percent: Share of the candidate weights' coordinates that are tuned, in percent, in (0, 100]. The default
            0.1 tunes one coordinate in a thousand.
        mask_batches: Training batches whose squared gradients are summed to rank coordinates (a diagonal Fisher
            estimate). Computed once, before training, on the full-precision model; fixed for the whole run.
        target_modules: Candidate projections (module-name suffixes or full names); ``None``: every projection
            ``zest_hf.find_targets`` knows for the architecture.
        zest_top_k: Restrict the mask to ZEST's top-k layers for the task, chosen from one training batch with
            ``predictor`` (the two ideas combined). ``None``: the mask may fall anywhere in the candidates.
        predictor: ZEST predictor used when ``zest_top_k`` is set (``"auto"``: the bundled one of the model's
            family; a bundled name, directory, Hub id or ``metric:<column>``).
        quantize: ``"nf4"`` (default) or ``"fp4"``: every candidate projection's frozen weights are held in 4 bit
            by bitsandbytes; ``None`` keeps them in the model's precision (for comparisons).
        blocksize: Quantisation block size: a power of two from 32 to 4096 (bitsandbytes: 64 is its default for 4 bit).
        double_quant: Quantise the per-block scales too (QLoRA's "double quantisation"; ~0.4 bit per weight less).
        eps: SPSA perturbation scale (MeZO: 1e-3).
        weight_decay: Decoupled weight decay on the tuned values, as MeZO applies it.
        zo_seed: Base seed of the perturbations; step ``t`` draws its z from ``hash(zo_seed, t)``, so any step can be
            replayed from this number alone.
    """

    percent: float = 0.1
    mask_batches: int = 4
    target_modules: Optional[Union[list[str], str]] = None
    zest_top_k: Optional[int] = None
    predictor: str = DEFAULT_PREDICTOR
    quantize: Optional[str] = "nf4"
    blocksize: int = 64
    double_quant: bool = True
    eps: float = 1e-3
    weight_decay: float = 0.0
    zo_seed: int = 0
    # Filled in when the mask is computed: where it came from (batches, model, counts), for the saved run.
    mask_info: dict = field(default_factory=dict)

    def __post_init__(self):
        check_real("percent", self.percent, low=0, high=100, low_open=True,
                   hint=" (a share of the candidate coordinates, in percent; the method's default is 0.1)")
        check_int("mask_batches", self.mask_batches)
        check_quantization(self.quantize, self.blocksize)
        check_int("zest_top_k", self.zest_top_k, optional=True, hint=" (or None for no restriction)")
        check_real("eps", self.eps, low=0, low_open=True)
        check_real("weight_decay", self.weight_decay, low=0)
        check_int("zo_seed", self.zo_seed, minimum=0)

    def to_dict(self) -> dict:
        return asdict(self)

    json_what = "SparseZOConfig"

    @classmethod
    def from_dict(cls, d: dict, source: str = "the config") -> "SparseZOConfig":
        check_keys(d, {f.name for f in fields(cls)}, "SparseZOConfig", source)
        return cls(**d)

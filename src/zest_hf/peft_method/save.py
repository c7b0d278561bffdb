"""Saving a ZEST adapter from any process layout: :func:`save_adapter`.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) every parameter is a DTensor holding one shard per process, and
``PeftModel.save_pretrained`` cannot read it ("Attempted to access the data pointer on an invalid python storage").
What an adapter holds is exactly the trainable parameters (the selected projections and the head in full mode, the
LoRA matrices in LoRA mode), so only those are gathered, into full CPU tensors, collectively on every process; the
main process then writes them with peft's own ``save_pretrained``. Under DeepSpeed ZeRO-3 every parameter is
partitioned across the processes (what a process holds of it is empty), and the same trainable parameters are gathered
with DeepSpeed's own ``GatheredParameters`` for the write.
"""

from __future__ import annotations

import os

from torch import nn

from ..modeling import FSDP2, ZERO3, sharded_by

__all__ = ["save_adapter", "is_sharded"]


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is an FSDP2 DTensor (one shard per process)."""
    return any(sharded_by(p) == FSDP2 for p in model.parameters())


def save_adapter(model: nn.Module, directory: str | os.PathLike, **kwargs) -> None:
    """``model.save_pretrained(directory)`` for a peft model (ZEST or LoRA), sharded by FSDP2 or DeepSpeed ZeRO-3 or
    not.

    Sharded: call it on EVERY process (the gather is a collective); only rank 0 writes. ``kwargs`` go to peft's
    ``save_pretrained``. An unsharded model is saved as peft saves it.

    Raises:
        ValueError: a sharded model with no trainable parameter (loaded with ``is_trainable=False``): what its
            adapter holds is gathered as the trainable parameters, so there would be nothing to write.
    """
    sharded, zero3 = is_sharded(model), any(sharded_by(p) == ZERO3 for p in model.parameters())
    if not (sharded or zero3):
        model.save_pretrained(directory, **kwargs)
        return
    import torch.distributed as dist

    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("this sharded model has no trainable parameter, so no adapter weight would be gathered: "
                         "load the adapter with is_trainable=True to save it from a sharded run, or save it from "
                         "an unsharded model")
    main = not dist.is_initialized() or dist.get_rank() == 0
    if zero3:
        import deepspeed

        # every process takes part in the gather; the gathered tensors are whole only inside the context
        with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None):
            if main:
                model.save_pretrained(directory, is_main_process=True, **kwargs)
        if dist.is_initialized():
            dist.barrier()
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # the frozen base is never saved in an adapter, so it is never gathered either
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                ignore_frozen_params=True))
    if main:
        model.save_pretrained(directory, state_dict=full, is_main_process=True, **kwargs)
    if dist.is_initialized():
        dist.barrier()  # the files exist for every process once this returns

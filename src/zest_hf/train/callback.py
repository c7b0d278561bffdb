"""ZEST in a stock ``transformers.Trainer`` script: two added lines.

.. code-block:: python

    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)   # as before
    zest_hf.prepare_trainer(trainer, zest_hf.ZestConfig(top_k=8))                            # + this line
    trainer.train()

:func:`prepare_trainer` runs after the Trainer is built and before ``train()``, which is the only window where all of
this holds at once: the Trainer's own data pipeline exists (``get_train_dataloader()`` gives one batch of its training
data, columns pruned, collated by its own collator, on its device), while the optimizer, the LR schedule and the
DDP/accelerate wrapping do not exist yet. So the optimizer is then built over exactly the selected weights plus the
head, its schedule applies to them, and DDP registers exactly them. A callback cannot do this alone: callbacks never
see the Trainer, and at ``on_init_end`` the dataloader does not exist.

:class:`ZestCallback` (added by :func:`prepare_trainer`) then only checks and fixes things at ``on_train_begin``:
activation checkpointing must not make backward run through the frozen lower blocks, the optimizer must hold exactly
the trainable tensors, and a resumed run must continue on the checkpoint's selection.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import warnings

import torch
from transformers import TrainerCallback

from ..peft_method import ZestConfig, check_modules
from ..selection.resolve import select
from ..errors import SelectionError, ZestTrainerError
from ..modeling import device_of, input_grad_hooks, peft_base, training_autocast, uses_reentrant_checkpointing

__all__ = ["ZestCallback", "prepare_trainer", "ZestTrainerError"]



class ZestCallback(TrainerCallback):
    """Makes a Trainer run on the ZEST selection; holds no reference to the Trainer.

    Two uses. Added by :func:`prepare_trainer` (with the resolved config), it checks at ``on_train_begin`` that
    training runs on the selection. Passed by hand with a model from ``peft.get_peft_model(model,
    ZestConfig(top_k=k))`` (unresolved), ``Trainer(..., callbacks=[ZestCallback()])``, it makes the selection itself
    at ``on_train_begin``: one batch of the Trainer's own training data (its dataset, columns and collator), before
    the first optimizer step, and the optimizer is left holding exactly the selection and the head.

    Args:
        config: The resolved :class:`~zest_hf.peft_method.ZestConfig` the model was built from; ``None``: the
            model's own ZEST config.
    """

    def __init__(self, config: ZestConfig | None = None):
        self.config = config

    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        from peft import PeftModel

        if model is not None and isinstance(model, PeftModel) and getattr(model.base_model, "zest_pending", False):
            self.config = _select_at_train_begin(model, optimizer, train_dataloader, args)
        elif self.config is None and isinstance(model, PeftModel):
            found = [c for c in model.peft_config.values() if isinstance(c, ZestConfig)]
            self.config = found[0] if found else None
        if self.config is None or not self.config.is_resolved or (
                model is not None and not isinstance(model, PeftModel)):
            raise ZestTrainerError(
                "ZestCallback found no ZEST model to train: build the model with peft.get_peft_model(model, "
                "ZestConfig(...)), or call zest_hf.prepare_trainer(trainer, config) after building the Trainer "
                "(it adds this callback itself)."
            )
        self._check_resumed_selection(args, state)
        if model is not None:
            _keep_backward_above_selection(model)
            if optimizer is not None and not (args.deepspeed or args.fsdp):
                _check_optimizer(model, optimizer)

    def _check_resumed_selection(self, args, state) -> None:
        # Resuming from checkpoint-N puts global_step at N before training begins.
        ckpt = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.global_step == 0 or not os.path.isdir(ckpt):
            return
        try:
            saved = ZestConfig.from_pretrained(ckpt)
        except SelectionError:
            return
        if set(saved.selected_modules) != set(self.config.selected_modules):
            raise ZestTrainerError(
                f"resuming from {ckpt}, which trained {saved.selected_modules}, but this run selected "
                f"{self.config.selected_modules}. Pass the checkpoint to zest_hf.prepare_trainer(trainer, config, "
                "resume_from_checkpoint=...) too, so that the run continues on the checkpoint's selection."
            )


def prepare_trainer(trainer, config: ZestConfig, *, resume_from_checkpoint: str | bool | None = None) -> ZestConfig:
    """Select with one batch of the Trainer's own training data and make ``trainer`` train only the selection.

    Call it after building the Trainer and before ``trainer.train()``. It replaces ``trainer.model`` by a
    ``PeftModel`` around the same transformers model (full mode: the selected weights train in place; LoRA mode:
    a stock LoRA adapter on the selected modules), so ``trainer.save_model()`` and every checkpoint save only the
    selection and the head, and ``train(resume_from_checkpoint=...)`` reloads them.

    Args:
        trainer: A ``transformers.Trainer`` (or subclass) built with the plain transformers model, no optimizer.
        config: A :class:`~zest_hf.peft_method.ZestConfig`. If it is resolved, no probe runs.
        resume_from_checkpoint: The value you will pass to ``trainer.train`` (a checkpoint directory, or ``True``
            for the last one in ``args.output_dir``). The selection is then read from that checkpoint: no probe, no
            chance of a different choice. Defaults to ``args.resume_from_checkpoint``.

    Returns:
        The resolved config (write it with ``.to_json(path)`` to reuse the selection elsewhere).

    Raises:
        ZestTrainerError: the optimizer already exists (``optimizers=`` was passed), the model is already wrapped or
            already a PeftModel, ``model_init`` is used, or DeepSpeed ZeRO-3 shards the model (select before).
        SelectionError, NoTargetsError, MissingLabelsError: bad sizes, no candidates, a batch without labels.
            Everything is checked before the Trainer or the model is changed.

    Example::

        >>> trainer = Trainer(model=model, args=args, train_dataset=train_ds)           # doctest: +SKIP
        >>> cfg = zest_hf.prepare_trainer(trainer, zest_hf.ZestConfig(top_k=8))       # doctest: +SKIP
        >>> trainer.train()                                                            # doctest: +SKIP
    """
    _check_trainer(trainer, config)
    resolved = _resolve(trainer, config, resume_from_checkpoint)
    if resolved.inference_mode:  # saved adapters are marked for inference; here they train
        resolved = dataclasses.replace(resolved, inference_mode=False)
    peft_model = _apply(trainer.model, resolved)
    # The Trainer has not wrapped or prepared anything yet (checked above): swapping its references is all it takes.
    trainer.model = trainer.model_wrapped = peft_model
    trainer.callback_handler.model = peft_model
    _no_unused_parameters(trainer)
    trainer.callback_handler.remove_callback(ZestCallback)
    trainer.add_callback(ZestCallback(resolved))
    return resolved


# ----------------------------------------------------------------------------------------------------- the steps
def _check_trainer(trainer, config: ZestConfig) -> None:
    from peft import PeftModel

    if trainer.optimizer is not None:
        raise ZestTrainerError(
            "the Trainer already holds an optimizer (passed with optimizers=...); it would not hold the weights ZEST "
            "selects. Build the Trainer without optimizers= (or with optimizer_cls_and_kwargs=...) and call "
            "prepare_trainer before train()."
        )
    if getattr(trainer, "model_init", None) is not None:
        raise ZestTrainerError("prepare_trainer does not support model_init (train() would build a new model); pass "
                               "the model itself")
    if trainer.model_wrapped is not trainer.model:
        raise ZestTrainerError("the Trainer's model is already wrapped (train() ran before?); call prepare_trainer on "
                               "a fresh Trainer, before train()")
    if isinstance(trainer.model, PeftModel):
        raise ZestTrainerError("the Trainer's model is already a PeftModel; give the Trainer the plain transformers "
                               "model and let prepare_trainer wrap it")
    plugin = getattr(getattr(trainer.accelerator, "state", None), "deepspeed_plugin", None)
    if not config.is_resolved and getattr(plugin, "zero_stage", None) == 3:
        raise ZestTrainerError(
            "DeepSpeed ZeRO-3 shards the weights while the model loads, so the probe cannot run on it. Select in a "
            "separate step without ZeRO-3 (`zest select --model M --task T --top-k K --config-out zest.json`, or "
            "zest_hf.select(model, batch, config).to_json('zest.json')) and pass ZestConfig.from_json('zest.json')."
        )


def _resolve(trainer, config: ZestConfig, resume_from_checkpoint) -> ZestConfig:
    ckpt = resume_from_checkpoint
    if ckpt is None or ckpt is False:
        ckpt = trainer.args.resume_from_checkpoint
    if ckpt in (True, "True", "true"):
        from transformers.trainer_utils import get_last_checkpoint

        ckpt = get_last_checkpoint(trainer.args.output_dir) if os.path.isdir(trainer.args.output_dir) else None
        if ckpt is None:
            raise ZestTrainerError(f"resume_from_checkpoint=True but {trainer.args.output_dir} holds no checkpoint")
    if ckpt:
        saved = ZestConfig.from_pretrained(ckpt)
        if saved.mode != config.mode or (config.is_resolved and set(config.selected_modules) != set(
                saved.selected_modules)):
            raise SelectionError(
                f"the checkpoint {ckpt} was trained with mode={saved.mode!r} on {saved.selected_modules}, which this "
                f"config (mode={config.mode!r}, selection {config.selected_modules}) contradicts. Resume with the "
                "checkpoint's selection: pass an unresolved config of the same mode, or "
                "ZestConfig.from_pretrained(ckpt)."
            )
        return saved
    if config.is_resolved:
        return config
    acc = trainer.accelerator
    if acc.num_processes == 1:
        batch = _probe_batch(trainer, config)
        with training_autocast(trainer.model, trainer.args):
            return select(trainer.model, batch, config)
    # Every rank draws a batch (the prepared dataloader may sync RNG across ranks, and shards the data, so the batches
    # differ); rank 0 alone selects and shares the resolved config, so that all ranks train the same layers. A
    # failure is shared too: a rank whose draw failed (a bad row in its shard) is known to all before any of them
    # waits for the config, and a selection error on rank 0 reaches the others, so every rank raises instead of
    # waiting for what never comes. tests/test_distributed.py runs this on 2 processes.
    from accelerate.utils import broadcast_object_list, gather_object

    batch, failure = None, None
    try:
        batch = _probe_batch(trainer, config)
    except Exception as err:
        failure = err
    drawn = gather_object([failure is None])
    if not all(drawn):
        if failure is not None:
            raise failure
        failed = [i for i, ok in enumerate(drawn) if not ok]
        raise ZestTrainerError(f"drawing the probe batch failed on process(es) {failed} (their own error says why); "
                               "nothing was selected")
    payload = [None]
    if acc.is_main_process:
        try:
            with training_autocast(trainer.model, trainer.args):
                payload[0] = select(trainer.model, batch, config).to_json()
        except Exception as err:
            failure = err
            payload[0] = _shareable(err)
    broadcast_object_list(payload, from_process=0)
    if failure is not None:
        raise failure
    if isinstance(payload[0], BaseException):
        raise payload[0]
    return ZestConfig.from_json(payload[0])


def _shareable(err: Exception) -> Exception:
    """``err`` if it survives pickling (what ``broadcast_object_list`` does), else a ZestTrainerError saying it."""
    try:
        return pickle.loads(pickle.dumps(err))
    except Exception:
        return ZestTrainerError(f"selection failed on the main process: {type(err).__name__}: {err}")


def _probe_batch(trainer, config: ZestConfig):
    """One batch from ``trainer.get_train_dataloader()``: the Trainer's data, column pruning, collator and device."""
    saved_size = getattr(trainer, "_train_batch_size", None)
    if config.probe_batch_size is not None and saved_size is None:
        warnings.warn("this Trainer has no _train_batch_size; probe_batch_size is ignored", RuntimeWarning,
                      stacklevel=3)
    # The draw happens under its own seed and leaves the random state training starts from untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.probe_seed)
        try:
            if config.probe_batch_size is not None and saved_size is not None:
                trainer._train_batch_size = config.probe_batch_size
            return next(iter(trainer.get_train_dataloader()))
        finally:
            if saved_size is not None:
                trainer._train_batch_size = saved_size


def _apply(model, config: ZestConfig):
    """``PeftModel`` of ``model`` with the selection (full: ZEST tuner; lora: peft's LoRA, stock config)."""
    import peft

    check_modules(model, config)
    if config.mode == "full":
        return peft.get_peft_model(model, config)
    peft_model = peft.get_peft_model(model, config.to_lora_config())
    for cfg in peft_model.peft_config.values():
        cfg.target_modules = set(config.selected_modules)  # peft shortens lists of >= 20 names; keep them exact
    return peft_model


def _no_unused_parameters(trainer) -> None:
    """Every trainable tensor (selection + head) takes part in every forward, and frozen ones are not in DDP's
    reducer: ``find_unused_parameters=False``, unless the user chose otherwise. The Trainer would default to True
    for a PeftModel, which costs a graph traversal every step."""
    if trainer.args.ddp_find_unused_parameters is not None:
        return
    trainer.args.ddp_find_unused_parameters = False
    handler = getattr(trainer.accelerator, "ddp_handler", None)
    if handler is None:
        from accelerate import DistributedDataParallelKwargs

        trainer.accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=False)
    else:
        handler.find_unused_parameters = False


# ------------------------------------------------------------------------------------------ on_train_begin checks
def _keep_backward_above_selection(model) -> None:
    """Activation checkpointing turns on ``enable_input_require_grads`` (transformers, peft and TRL all do, some
    twice), which makes the embeddings' output require grad, so backward runs through every frozen block below the
    selection. With non-reentrant checkpointing those hooks are not needed: remove every one of them. Reentrant
    checkpointing needs them (no gradient reaches a checkpointed block whose input does not require grad), so they
    stay, with a warning."""
    base = peft_base(model)
    if not getattr(base, "is_activation_checkpointing", False):
        return
    if uses_reentrant_checkpointing(base):
        warnings.warn(
            "reentrant activation checkpointing needs the input embeddings to require grad, so backward runs through "
            "every frozen block below the ZEST selection. Pass activation_checkpointing_kwargs="
            "{'use_reentrant': False} to skip them.", RuntimeWarning, stacklevel=2)
        return
    for module, hook_id in input_grad_hooks(base):
        module._forward_hooks.pop(hook_id, None)
    for module in base.modules():  # the handles transformers keeps now point at removed hooks
        if getattr(module, "_require_grads_hooks", None):
            module._require_grads_hooks = []


def _select_at_train_begin(model, optimizer, train_dataloader, args) -> ZestConfig:
    """Resolve a pending ZEST model from one batch of the Trainer's data; drop the unselected from the optimizer."""
    tuner = model.base_model
    if train_dataloader is None:
        raise ZestTrainerError("the Trainer gave ZestCallback no training dataloader to probe a batch of")
    config = next(c for c in model.peft_config.values() if isinstance(c, ZestConfig))
    batch = _first_batch(train_dataloader, config, device_of(model))
    with training_autocast(model, args):
        resolved = tuner.resolve_pending(batch)
    if optimizer is not None:
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        keep = {id(p) for p in model.parameters() if p.requires_grad}
        for group in inner.param_groups:
            group["params"] = [p for p in group["params"] if id(p) in keep]
    return resolved


def _first_batch(dataloader, config: ZestConfig, device):
    """One batch of the dataloader's dataset through its own collator, drawn under ``config.probe_seed``; neither
    the dataloader's state nor the random state training starts from is touched."""
    dataset, collate = dataloader.dataset, dataloader.collate_fn
    size = config.probe_batch_size or getattr(dataloader, "total_batch_size", None) or dataloader.batch_size or 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.probe_seed)
        if isinstance(dataset, torch.utils.data.IterableDataset):
            rows = [row for _, row in zip(range(size), dataset)]
        else:
            idx = torch.randperm(len(dataset))[:size].tolist()
            rows = [dataset[i] for i in idx]
    batch = collate(rows)
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _check_optimizer(model, optimizer) -> None:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    held = {id(p) for group in inner.param_groups for p in group["params"]}
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    if held != set(trainable):
        extra = [n for i, n in trainable.items() if i not in held]
        raise ZestTrainerError(
            f"the optimizer does not hold exactly the ZEST selection and head: trainable but not optimised "
            f"{extra[:4]}, optimised but not trainable: {len(held - set(trainable))} tensor(s). Something changed "
            "requires_grad after prepare_trainer, or the optimizer was built before it."
        )

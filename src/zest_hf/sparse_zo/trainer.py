"""``ZOTrainer``: a ``transformers.Trainer`` whose steps are zeroth-order, over sparse fp32 values on a 4-bit model.

A stock Trainer script changes one class name and adds one config::

    trainer = ZOTrainer(model=model, args=args, train_dataset=train, data_collator=collator,
                        sparse_zo=SparseZOConfig(percent=0.1, zest_top_k=None))
    trainer.train()                 # mask from the first batches, 4-bit quantisation, then ZO steps
    trainer.save_model("out")       # out/sparse_delta.safetensors: only the tuned coordinates

Everything the Trainer schedules still applies: ``learning_rate`` and its scheduler (read from the optimizer's
param group at every step), ``max_steps``/epochs, logging, evaluation, checkpoints (which hold the sparse delta)
and resuming from them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import transformers

from ..modeling import training_autocast
from .config import SparseZOConfig
from .io import (
    CONFIG_FILE,
    DELTA_FILE,
    load_sparse_values,
    load_sparse_zo,
    read_sparse_delta,
    save_sparse_delta,
    saved_config,
)
from .layers import attach_sparse, sparse_layers, tunable_values
from .mask import sensitive_mask
from .step import step_seed, zo_step

__all__ = ["ZOTrainer", "MASK_FILE"]

MASK_FILE = "sensitive_mask.safetensors"


class ZOTrainer(transformers.Trainer):
    """Zeroth-order fine-tuning of the sensitive coordinates (see :class:`SparseZOConfig`).

    Args:
        sparse_zo: The method's settings; default ``SparseZOConfig()`` (0.1 %, NF4).
        mask_dataset: Data for the sensitive mask (e.g. generic text tokenised for a causal LM); default: the
            training data. Collated by the Trainer's ``data_collator``.
        *args, **kwargs: Those of ``transformers.Trainer``.

    Raises (at construction, before anything is computed):
        ValueError: gradient accumulation (a zeroth-order step has no gradient to accumulate: raise the batch size
            instead), more than one process, DeepSpeed or FSDP.
    """

    def __init__(self, *args, sparse_zo: SparseZOConfig | None = None, mask_dataset=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sparse_zo = sparse_zo if sparse_zo is not None else SparseZOConfig()
        self.mask_dataset = mask_dataset
        a = self.args
        if a.gradient_accumulation_steps != 1:
            raise ValueError(f"gradient_accumulation_steps={a.gradient_accumulation_steps}: zeroth-order steps have "
                             "no gradient to accumulate (each step is two forward passes on one batch). Set it to 1 "
                             "and raise per_device_train_batch_size instead.")
        if a.world_size > 1:
            raise ValueError(f"ZOTrainer runs in one process (found {a.world_size}); the zeroth-order step is "
                             "forward-only and needs little memory: launch it without accelerate/torchrun.")
        if a.deepspeed or a.fsdp:
            raise ValueError("ZOTrainer does not support DeepSpeed or FSDP: the frozen weights are held in 4 bit "
                             "and only ~0.1% of coordinates are tuned, so the model is not sharded.")

    # ------------------------------------------------------------------------------------------------- set-up
    def prepare_sparse(self, resume_from: str | Path | None = None) -> None:
        """Compute the mask and quantise (or, when resuming, rebuild from a checkpoint). Runs once; ``train()``
        calls it, and it can be called before to inspect the model. When resuming, the checkpoint's tuned values
        are loaded whether or not the model was prepared already."""
        cfg = self.sparse_zo
        if resume_from is not None:
            saved = self._check_checkpoint(resume_from)
            if sparse_layers(self.model):
                load_sparse_values(self.model, resume_from)
            else:
                load_sparse_zo(self.model, resume_from, quantize=cfg.quantize, blocksize=cfg.blocksize,
                               double_quant=cfg.double_quant, target_modules=cfg.target_modules)
            cfg.mask_info = saved.get("mask_info", {})  # the mask is the checkpoint's, so is where it came from
            return
        if sparse_layers(self.model):
            return
        loader = (self.get_train_dataloader() if self.mask_dataset is None else
                  torch.utils.data.DataLoader(self.mask_dataset, batch_size=self.args.per_device_train_batch_size,
                                              collate_fn=self.data_collator))
        batches = []
        for batch in loader:  # a handful of batches; held so that selection and mask see the same data
            batches.append(batch)
            if len(batches) >= cfg.mask_batches:
                break
        # a model of mixed dtypes (a bf16 body under an fp32 head) runs only under the autocast its training steps
        # run under; the mask's and the selection's passes, made before train() enters it, need it too
        with training_autocast(self.model, self.args):
            layers, mask = self._choose_coordinates(cfg, batches)
        del batches
        cfg.mask_info = dict(mask.info, percent=cfg.percent, source="mask_dataset" if self.mask_dataset is not None
                             else "train_dataset", zest_layers=layers)
        attach_sparse(self.model, mask, quantize=cfg.quantize, blocksize=cfg.blocksize,
                      double_quant=cfg.double_quant, target_modules=cfg.target_modules)
        self.sensitive_mask = mask
        if self.args.should_save:
            os.makedirs(self.args.output_dir, exist_ok=True)
            mask.save(Path(self.args.output_dir) / MASK_FILE)  # fixed for the run, and saved with it

    def _choose_coordinates(self, cfg, batches):
        """``(layers, mask)``: the ZEST layers (``zest_top_k``; None: every candidate) and the sensitive mask in them."""
        layers = None
        if cfg.zest_top_k is not None:
            from ..peft_method import ZestConfig
            from ..selection.resolve import select

            zcfg = select(self.model, batches[0], ZestConfig(top_k=cfg.zest_top_k, predictor=cfg.predictor,
                                                             candidates=cfg.target_modules,
                                                             probe_seed=self.args.seed))
            layers = list(zcfg.selected_modules)
        return layers, sensitive_mask(self.model, batches, cfg.percent, target_modules=cfg.target_modules,
                                      layers=layers)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        path = resume_from_checkpoint
        if path is True:
            path = transformers.trainer_utils.get_last_checkpoint(self.args.output_dir)
            if path is None:
                raise ValueError(f"resume_from_checkpoint=True but {self.args.output_dir} holds no checkpoint")
        self.prepare_sparse(resume_from=path)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    #: What a resumed run must share with the checkpoint for its steps to continue the same run.
    _RESUME_FIELDS = ("zo_seed", "eps", "weight_decay")

    def _check_checkpoint(self, path) -> dict:
        """The checkpoint's run config, after refusing one this run cannot continue (before anything is loaded)."""
        if not (Path(path) / DELTA_FILE).is_file():
            raise ValueError(f"{path} holds no {DELTA_FILE}: not a ZOTrainer checkpoint. Resume from a "
                             "checkpoint-<step> directory of a ZOTrainer run.")
        _, _, _, meta = read_sparse_delta(path)
        saved = saved_config(meta, path)
        if not saved:
            raise ValueError(f"{path}/{DELTA_FILE} records no SparseZOConfig: it was not saved by ZOTrainer, so "
                             "nothing says which run it continues. Resume from a checkpoint of a ZOTrainer run.")
        cfg = self.sparse_zo
        differ = {k: (saved.get(k), getattr(cfg, k)) for k in self._RESUME_FIELDS if saved.get(k) != getattr(cfg, k)}
        if differ:
            what = ", ".join(f"{k}={a!r} there but {b!r} here" for k, (a, b) in differ.items())
            raise ValueError(f"{path} was saved by a run with other settings ({what}): resumed steps would not "
                             "continue it. Resume with the checkpoint's settings in SparseZOConfig, or start a new "
                             "run.")
        return saved

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # The checkpoint was checked and its tuned values loaded by prepare_sparse (train() calls it first); there is
        # no full state dict to load.
        pass

    def _load_best_model(self):
        # A checkpoint holds only the sparse delta; the best one's values go into the layers, as on resuming.
        load_sparse_values(self.model, self.state.best_model_checkpoint)

    def create_optimizer(self, model=None):
        # No optimizer state: SGD over the tuned values only carries the learning rate the scheduler sets. It never
        # steps anything (the values have no .grad); training_step applies the zeroth-order update itself.
        if self.optimizer is None:
            params = tunable_values(self.model)
            if not params:
                raise ValueError("no tuned coordinates: the sensitive mask is empty")
            self.optimizer = torch.optim.SGD(params, lr=self.args.learning_rate)
        return self.optimizer

    # ------------------------------------------------------------------------------------------------ the step
    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        cfg = self.sparse_zo
        model.eval()  # both passes must see the same function: no dropout
        inputs = self._prepare_inputs(inputs)
        lr = self.optimizer.param_groups[0]["lr"]
        seed = step_seed(cfg.zo_seed, self.state.global_step)
        loss, grad = zo_step(lambda: self.compute_loss(model, inputs), tunable_values(model), lr=lr, eps=cfg.eps,
                             seed=seed, weight_decay=cfg.weight_decay, restore="copy")
        self.last_projected_grad = grad
        return torch.tensor(loss, device=self.args.device)

    # ---------------------------------------------------------------------------------------------- saving
    def _save(self, output_dir=None, state_dict=None):
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        save_sparse_delta(self.model, output_dir, self.sparse_zo)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)


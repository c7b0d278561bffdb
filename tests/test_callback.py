"""ZEST in a stock Trainer: the probe batch is the Trainer's own, the optimizer holds exactly selection + head,
frozen weights stay bit-identical, checkpointing does not reach frozen lower blocks, resume keeps the selection, and
bad inputs fail before anything changes."""

import copy

import datasets
import peft
import pytest
import torch
import transformers
from helpers import tiny_bert_cls, tiny_llama
from peft import PeftModel

import zest_hf
import zest_hf.rank
from zest_hf import MissingLabelsError, SelectionError, ZestCallback, ZestConfig
from zest_hf.callback import ZestTrainerError

PRED = "metric:grad_norm"


pytestmark = pytest.mark.usefixtures("one_thread")


def cls_data(n=32, length=10, seed=1, labels=True):
    g = torch.Generator().manual_seed(seed)
    cols = {"input_ids": torch.randint(3, 1000, (n, length), generator=g).tolist(),
            "attention_mask": [[1] * length] * n,
            "text": [f"example {i}" for i in range(n)]}  # a column the model does not take: the Trainer prunes it
    if labels:
        cols["label"] = torch.randint(0, 3, (n,), generator=g).tolist()
    return datasets.Dataset.from_dict(cols)


def lm_data(n=16, length=12, seed=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 1000, (n, length), generator=g).tolist()
    return datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * length] * n, "labels": ids})


def make_trainer(model, data, out, **kw):
    args = dict(output_dir=str(out), per_device_train_batch_size=8, max_steps=3, learning_rate=5e-3,
                lr_scheduler_type="linear", report_to="none", disable_tqdm=True, save_strategy="no",
                logging_strategy="no", use_cpu=True, seed=0)
    args.update(kw)
    return transformers.Trainer(model=model, args=transformers.TrainingArguments(**args), train_dataset=data)


def optimizer_ids(optimizer):
    inner = getattr(optimizer, "optimizer", optimizer)
    return {id(p) for g in inner.param_groups for p in g["params"]}


def selection_and_head(peft_model, cfg):
    base = peft_model.get_base_model()
    ids = {id(p) for n in cfg.selected_modules for p in base.get_submodule(n).base_layer.parameters()}
    for h in cfg.modules_to_save:
        ids |= {id(p) for p in base.get_submodule(h).modules_to_save["default"].parameters()}
    return ids


def test_probe_uses_the_trainers_own_batch_and_the_optimizer_holds_exactly_selection_plus_head(tmp_path,
                                                                                               monkeypatch):
    model = tiny_bert_cls()
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    trainer = make_trainer(model, cls_data(), tmp_path)
    seen = {}
    real_rank = zest_hf.rank.rank

    def spy(m, batch, *a, **k):
        seen.update(batch=batch, optimizer=trainer.optimizer, wrapped=trainer.model_wrapped is trainer.model)
        return real_rank(m, batch, *a, **k)

    monkeypatch.setattr(zest_hf.rank, "rank", spy)
    rng = torch.random.get_rng_state()
    cfg = zest_hf.prepare_trainer(trainer, ZestConfig(top_k=3, predictor=PRED, probe_batch_size=5))

    # the probe ran on one batch of the Trainer's training data, pruned and collated by the Trainer itself, before
    # any optimizer or wrapping existed; the random state training starts from is untouched
    batch = seen["batch"]
    assert seen["optimizer"] is None and seen["wrapped"]
    assert set(batch) == {"input_ids", "attention_mask", "labels"} and batch["input_ids"].shape == (5, 10)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.probe_seed)
        again = next(iter(trainer.get_train_dataloader()))  # the training batch size is back to 8
    assert again["input_ids"].shape == (8, 10) and all(torch.equal(batch[k], again[k][:5]) for k in batch)
    assert torch.equal(torch.random.get_rng_state(), rng)

    assert isinstance(trainer.model, PeftModel) and trainer.model.get_base_model() is model
    assert trainer.optimizer is None and any(isinstance(c, ZestCallback) for c in trainer.callback_handler.callbacks)
    assert trainer.args.ddp_find_unused_parameters is False
    assert trainer.accelerator.ddp_handler.find_unused_parameters is False
    expected = selection_and_head(trainer.model, cfg)
    assert len(expected) == 2 * 3 + 2
    assert optimizer_ids(trainer.create_optimizer()) == expected

    trainer.train()
    assert optimizer_ids(trainer.optimizer) == expected
    # the LR schedule drives exactly these tensors (linear decay to 0 over the 3 steps)
    assert optimizer_ids(trainer.lr_scheduler.optimizer) == expected
    groups = trainer.optimizer.param_groups
    assert trainer.lr_scheduler.get_last_lr() == [g["lr"] for g in groups] and {g["lr"] for g in groups} == {0.0}
    assert {g["initial_lr"] for g in groups} == {5e-3}
    selected = {f"{n}.{p}" for n in cfg.selected_modules for p in ("weight", "bias")}
    for n, p in params.items():
        if n in selected:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n  # frozen: bit-identical, the original head included


def test_activation_checkpointing_does_not_reach_frozen_lower_blocks(tmp_path):
    model = tiny_llama()
    trainer = make_trainer(model, lm_data(), tmp_path, activation_checkpointing=True, per_device_train_batch_size=4)
    cfg = zest_hf.prepare_trainer(trainer, ZestConfig(top_k=3, predictor=PRED, candidates=r"model\.layers\.1\..*"))
    lower = model.model.layers[0]
    reached = []
    handle = lower.register_forward_hook(lambda m, a, out: reached.append(out.requires_grad) if m.training else None)
    weights = {n: model.get_submodule(n).weight for n in cfg.selected_modules}
    before = {n: w.detach().clone() for n, w in weights.items()}
    trainer.train()
    handle.remove()
    assert model.is_activation_checkpointing
    assert reached and not any(reached)  # backward never had a path into block 0
    assert all(not torch.equal(w, before[n]) for n, w in weights.items())  # and gradients reached the selection
    # control: the hook transformers installs for checkpointing would have made block 0 part of backward
    model.enable_input_require_grads()
    model.train()
    out = {}
    h = lower.register_forward_hook(lambda m, a, o: out.update(grad=o.requires_grad))
    model(**{k: torch.tensor(v[:2]) for k, v in lm_data()[:2].items()})
    h.remove()
    assert out["grad"]


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_resume_from_a_checkpoint_keeps_the_selection(tmp_path, monkeypatch, mode):
    model = tiny_bert_cls()
    fresh = copy.deepcopy(model)
    data = cls_data()
    run = make_trainer(model, data, tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    cfg = zest_hf.prepare_trainer(run, ZestConfig(top_k=2, predictor=PRED, mode=mode))
    run.train()
    final = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}
    ckpt = tmp_path / "checkpoint-2"
    assert ZestConfig.from_pretrained(ckpt).selected_modules == cfg.selected_modules

    def no_probe(*a, **k):
        raise AssertionError("a resumed run probed again")

    monkeypatch.setattr(zest_hf.rank, "rank", no_probe)
    resumed = make_trainer(copy.deepcopy(fresh), data, tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    cfg2 = zest_hf.prepare_trainer(resumed, ZestConfig(top_k=2, predictor=PRED, mode=mode),
                                   resume_from_checkpoint=str(ckpt))
    assert cfg2.selected_modules == cfg.selected_modules
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == 4
    assert optimizer_ids(resumed.optimizer) == {id(p) for p in resumed.model.parameters() if p.requires_grad}
    now = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert set(now) == set(final)
    for n, p in now.items():
        assert torch.equal(p, final[n]), n  # bit-exact continuation

    # forgetting to tell prepare_trainer, with another selection, is refused before a single step
    other = [t.name for t in zest_hf.find_targets(fresh) if t.name not in cfg.selected_modules][:2]
    wrong = make_trainer(copy.deepcopy(fresh), data, tmp_path, max_steps=4)
    zest_hf.prepare_trainer(wrong, ZestConfig(selected_modules=other, modules_to_save=["classifier"], mode=mode))
    with pytest.raises((ZestTrainerError, SelectionError), match="selection"):
        wrong.train(resume_from_checkpoint=str(ckpt))


def test_bad_inputs_fail_before_the_trainer_or_model_changes(tmp_path):
    model = tiny_bert_cls()
    flags = [p.requires_grad for p in model.parameters()]
    unlabelled = make_trainer(model, cls_data(labels=False), tmp_path)
    with pytest.raises(MissingLabelsError, match="no 'labels'"):
        zest_hf.prepare_trainer(unlabelled, ZestConfig(top_k=2, predictor=PRED))
    too_many = make_trainer(model, cls_data(), tmp_path)
    with pytest.raises(SelectionError, match="top_k=40 but the model has only 12"):
        zest_hf.prepare_trainer(too_many, ZestConfig(top_k=40, predictor=PRED))
    for t in (unlabelled, too_many):
        assert t.model is model and t.model_wrapped is model
        assert not any(isinstance(c, ZestCallback) for c in t.callback_handler.callbacks)
    assert [p.requires_grad for p in model.parameters()] == flags

    opt = torch.optim.AdamW(model.parameters())
    prebuilt = transformers.Trainer(model=model, args=transformers.TrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True), train_dataset=cls_data(), optimizers=(opt, None))
    with pytest.raises(ZestTrainerError, match="already holds an optimizer"):
        zest_hf.prepare_trainer(prebuilt, ZestConfig(top_k=2, predictor=PRED))

    alone = transformers.Trainer(model=model, args=transformers.TrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=1), train_dataset=cls_data(),
        callbacks=[ZestCallback(ZestConfig(top_k=2, predictor=PRED))])
    with pytest.raises(ZestTrainerError, match="call zest_hf.prepare_trainer"):
        alone.train()  # a callback on its own would silently fine-tune everything


@pytest.mark.parametrize("with_callback", [True, False])
def test_an_unresolved_config_on_a_classifier_trains_its_head(tmp_path, with_callback):
    # the head is wrapped when the model is built, so the optimizer the Trainer builds before the first step holds
    # the very tensors that train after the selection is made (by the callback, or by the first training forward)
    torch.manual_seed(0)
    model = peft.get_peft_model(tiny_bert_cls(), ZestConfig(top_k=2, predictor=PRED))
    assert model.base_model.zest_pending
    head_before = {n: p.detach().clone() for n, p in model.named_parameters() if "classifier" in n}
    head_ids = {id(p) for n, p in model.named_parameters() if "classifier.modules_to_save" in n}
    assert len(head_ids) == 2 and all(p.requires_grad for n, p in model.named_parameters()
                                      if "classifier.modules_to_save" in n)
    trainer = make_trainer(model, cls_data(), tmp_path)
    if with_callback:
        trainer.add_callback(ZestCallback())
    trainer.train()
    cfg = model.peft_config["default"]
    assert cfg.is_resolved and not model.base_model.zest_pending
    assert head_ids <= optimizer_ids(trainer.optimizer)
    assert {id(p) for n, p in model.named_parameters() if "classifier.modules_to_save" in n} == head_ids
    trained = {n: p for n, p in model.named_parameters() if "classifier.modules_to_save" in n}
    assert all(not torch.equal(p.detach(), head_before[n]) for n, p in trained.items())
    if with_callback:
        assert optimizer_ids(trainer.optimizer) == selection_and_head(model, cfg)


@pytest.mark.parametrize("route", ["prepare_trainer", "callback"])
def test_a_mixed_dtype_model_is_selected_on_under_the_runs_autocast(tmp_path, route):
    # a bf16 body under an fp32 head runs only under the bf16 autocast the Trainer's steps run under: the selection,
    # made outside those steps, runs under it too
    torch.manual_seed(0)
    model = tiny_bert_cls().to(torch.bfloat16)
    model.classifier.float()
    if route == "callback":
        model = peft.get_peft_model(model, ZestConfig(top_k=2, predictor=PRED))
    trainer = make_trainer(model, cls_data(), tmp_path, bf16=True, logging_strategy="steps", logging_steps=1)
    if route == "callback":
        trainer.add_callback(ZestCallback())
    else:
        zest_hf.prepare_trainer(trainer, ZestConfig(top_k=2, predictor=PRED))
    trainer.train()
    cfg = trainer.model.peft_config["default"]
    assert cfg.is_resolved and len(cfg.selected_modules) == 2
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))

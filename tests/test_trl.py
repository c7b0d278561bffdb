"""TRL's SFTTrainer and the stock Trainer as ZEST routes, on a tiny Llama with activation checkpointing on.

Each route asserts the two things that make ZEST worth it: backward never reaches a block below the selection (a
backward hook on the lowest block never fires in a training step), and the optimizer holds, and keeps state for,
exactly the selection (plus the head, none for a causal LM).
"""

import peft
import pytest
import torch
import transformers
from datasets import Dataset

import zest_hf
from zest_hf import ZestCallback, ZestConfig

trl = pytest.importorskip("trl")

UPPER = r".*layers\.1\..*"  # the tiny Llama's top block: a selection there must never need block 0's backward


def _data(n=16):
    prompts = [f"Question {i}: what is {i} plus one?" for i in range(n)]
    return Dataset.from_dict({"prompt": prompts, "completion": [f" {i + 1}." for i in range(n)]})


def _tok(path):
    tok = transformers.AutoTokenizer.from_pretrained(path)
    tok.eos_token = tok.sep_token  # the MiniLM tokenizer has no EOS; SFT appends one
    return tok


def _model(path):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_pretrained(path)


def _sft_args(tmp_path, **kw):
    return trl.SFTConfig(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4,
                         learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                         max_length=32, gradient_checkpointing=True, seed=0, **kw)


class _BlockZeroBackward:
    """Counts backward passes through the lowest block made in training mode (the probe runs in eval mode)."""

    def __init__(self, model):
        base = zest_hf.modeling.base_model(model)
        self.block = base.model.layers[0]
        self.fired = 0
        self.handle = self.block.register_full_backward_hook(self._hook)

    def _hook(self, module, grad_in, grad_out):
        if module.training:
            self.fired += 1


def _trainable(model):
    return {id(p): n for n, p in model.named_parameters() if p.requires_grad}


def _optimizer_ids(trainer):
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return {id(p) for g in inner.param_groups for p in g["params"]}, {id(p) for p in inner.state}


def _selected_params(model, config):
    modules = dict(zest_hf.modeling.base_model(model).named_modules())
    return {id(p) for n in config.selected_modules for p in modules[n].parameters()}


def _train_with_spy(trainer):
    spy = _BlockZeroBackward(trainer.model)
    # by tensor, not by name: a selection made during train() wraps its modules, which renames their parameters
    before = {id(p): p.detach().clone() for p in trainer.model.parameters()}
    trainer.train()
    spy.handle.remove()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[id(p)], p.detach())}
    return spy, changed


def test_prepare_trainer_on_an_sft_trainer(tiny_llama_dir, tmp_path):
    trainer = trl.SFTTrainer(model=_model(tiny_llama_dir), args=_sft_args(tmp_path), train_dataset=_data(),
                             processing_class=_tok(tiny_llama_dir))
    cfg = zest_hf.prepare_trainer(trainer, ZestConfig(top_k=2, candidates=UPPER))
    spy, changed = _train_with_spy(trainer)
    held, state = _optimizer_ids(trainer)
    assert spy.fired == 0
    assert held == state == set(_trainable(trainer.model)) == _selected_params(trainer.model, cfg)
    assert changed and all(".layers.1." in n for n in changed)


def test_sft_trainer_with_a_resolved_zest_config(tiny_llama_dir, tmp_path):
    model = _model(tiny_llama_dir)
    names = [n for n, _ in model.named_modules() if n.endswith(("layers.1.mlp.down_proj", "layers.1.self_attn.v_proj"))]
    cfg = ZestConfig(selected_modules=names, modules_to_save=[])
    trainer = trl.SFTTrainer(model=model, args=_sft_args(tmp_path), train_dataset=_data(),
                             processing_class=_tok(tiny_llama_dir), peft_config=cfg)
    spy, changed = _train_with_spy(trainer)
    held, state = _optimizer_ids(trainer)
    assert spy.fired == 0, "backward ran through the frozen block below the selection"
    assert held == state == set(_trainable(trainer.model)) == _selected_params(trainer.model, cfg)
    assert changed and all(".layers.1." in n for n in changed)


def test_sft_trainer_with_an_unresolved_zest_config_selects_on_its_first_batch(tiny_llama_dir, tmp_path):
    trainer = trl.SFTTrainer(model=_model(tiny_llama_dir), args=_sft_args(tmp_path), train_dataset=_data(),
                             processing_class=_tok(tiny_llama_dir),
                             peft_config=ZestConfig(top_k=2, candidates=UPPER, predictor="metric:grad_norm"))
    assert trainer.model.base_model.zest_pending
    spy, changed = _train_with_spy(trainer)
    cfg = trainer.model.peft_config["default"]
    assert cfg.is_resolved and len(cfg.selected_modules) == 2 and not trainer.model.base_model.zest_pending
    held, state = _optimizer_ids(trainer)
    assert spy.fired == 0
    # the optimizer was built before the selection: it lists every candidate, but only the selection ever got a
    # gradient, so only the selection has state and only it changed
    assert state == set(_trainable(trainer.model)) == _selected_params(trainer.model, cfg) and state < held
    assert changed == {n for n, p in trainer.model.named_parameters() if id(p) in state}
    # the probe saw a batch of the SFT data as SFT builds it: completion-only labels
    assert cfg.selection_info["probe"]["batch_shape"][0] == 4


def test_get_peft_model_then_a_stock_trainer_with_zest_callback(tiny_llama_dir, tmp_path):
    tok = _tok(tiny_llama_dir)
    texts = [f"Question {i}: what is {i} plus one? {i + 1}." for i in range(16)]
    data = Dataset.from_dict(dict(tok(texts, truncation=True, max_length=32)))
    model = peft.get_peft_model(_model(tiny_llama_dir), ZestConfig(top_k=2, candidates=UPPER))
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4,
                                          learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True,
                                          gradient_checkpointing=True, seed=0)
    collator = transformers.DataCollatorForLanguageModeling(tok, mlm=False)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, data_collator=collator,
                                   callbacks=[ZestCallback()])
    spy, changed = _train_with_spy(trainer)
    cfg = model.peft_config["default"]
    held, state = _optimizer_ids(trainer)
    assert cfg.is_resolved and spy.fired == 0
    # selected at on_train_begin: the optimizer was trimmed to exactly the selection before the first step
    assert held == state == set(_trainable(model)) == _selected_params(model, cfg)
    assert changed and all(".layers.1." in n for n in changed)
    shape = cfg.selection_info["probe"]["batch_shape"]
    assert shape[0] == 4 and shape[1] <= 32  # a batch of the Trainer's data, through its collator


def test_an_unresolved_lora_config_is_refused_at_get_peft_model(tiny_llama_dir):
    with pytest.raises(zest_hf.peft_method.ZestNotSelectedError, match="prepare_trainer"):
        peft.get_peft_model(_model(tiny_llama_dir), ZestConfig(top_k=2, mode="lora"))


def test_zest_places_qlora_adapters_for_an_sft_trainer_over_a_4bit_base(tiny_llama_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    from zest_hf.models import quantize_projections_4bit
    from zest_hf.tasks.user import sft_batch

    tok = _tok(tiny_llama_dir)
    model, _ = quantize_projections_4bit(_model(tiny_llama_dir))
    data = _data()
    # a Trainer refuses a purely quantised model: select first, on a batch built as SFTTrainer builds its own
    batch = sft_batch(data, tok, shape="prompt_completion", columns={"prompt": "prompt", "completion": "completion"},
                      batch_size=4, max_length=32)
    cfg = zest_hf.select(model, batch, ZestConfig(top_k=2, candidates=UPPER, mode="lora", r=4, modules_to_save=[]))
    packed = {n: p.detach().clone() for n, p in model.named_parameters()}
    # activation checkpointing on, as QLoRA runs usually have it: backward must still stop at the selection
    trainer = trl.SFTTrainer(model=model, args=_sft_args(tmp_path), train_dataset=data, processing_class=tok,
                             peft_config=cfg)
    spy, changed = _train_with_spy(trainer)
    held, state = _optimizer_ids(trainer)
    trainable = _trainable(trainer.model)
    assert spy.fired == 0
    assert held == state == set(trainable)
    assert {n.split(".lora_")[0].removeprefix("base_model.model.") for n in trainable.values()} \
        == set(cfg.selected_modules)
    assert changed and all("lora_" in n for n in changed)
    base = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p
            for n, p in trainer.model.named_parameters() if "lora_" not in n}
    assert all(torch.equal(base[n], p) for n, p in packed.items())  # the 4-bit base never moved

"""ZEST as a peft method: registration, the config's checks, selection, full mode (in place, exact round trip, merge),
LoRA mode (a stock LoRA adapter that stock peft loads without zest_hf), and the bad inputs."""

import copy
import dataclasses
import functools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import peft
import pytest
import torch
import transformers
from helpers import tiny_bert_cls, tiny_llama, token_batch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from torch import nn

import zest_hf
import zest_hf.rank
from zest_hf import MissingLabelsError, NoTargetsError, SelectionError, ZestConfig
from zest_hf.peft_method import (PEFT_TYPE, SELECTION_FILE, ZestAdapterError, ZestLayer, ZestLoraConfig, ZestModel,
                                 register)
from zest_hf.peft_method.config import ZestNotSelectedError
from zest_hf.selection import choose

PRED = "metric:grad_norm"


pytestmark = pytest.mark.usefixtures("one_thread")


def cls_batch():
    b = token_batch()
    b["labels"] = torch.tensor([0, 1, 2, 1])
    return b


def resolved(model, batch, **kw):
    return zest_hf.select(model, batch, ZestConfig(predictor=PRED, **kw))


def train_steps(model, batch, steps=3, lr=0.05):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def storage_bytes(model):
    seen = {}
    for p in model.parameters():
        seen[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    return sum(seen.values())


# ------------------------------------------------------------------------------------------------ registration
def test_import_registers_zest_idempotently_and_tolerates_missing_registries(monkeypatch):
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    assert PEFT_TYPE_TO_CONFIG_MAPPING["ZEST"] is ZestConfig and PEFT_TYPE_TO_TUNER_MAPPING["ZEST"] is ZestModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING["ZEST"] == "zest_"
    sizes = [len(d) for d in (PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING)]
    register()
    register()
    assert sizes == [len(d) for d in (PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING,
                                      PEFT_TYPE_TO_PREFIX_MAPPING)]
    monkeypatch.delattr(peft.mapping, "PEFT_TYPE_TO_PREFIX_MAPPING")
    done = register()
    assert "peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING" in done and not any("PREFIX" in d for d in done)
    # transformers reads peft_type.value; peft's dicts are keyed by the plain string
    cfg = ZestConfig(top_k=2)
    assert cfg.peft_type == "ZEST" and cfg.peft_type.value == "ZEST" and cfg.peft_type is PEFT_TYPE
    assert json.loads(cfg.to_json())["peft_type"] == "ZEST"


# ------------------------------------------------------------------------------------------------------ config
def test_config_documents_every_field():
    own = [f for f in dataclasses.fields(ZestConfig) if f.name not in {g.name for g in dataclasses.fields(
        peft.PeftConfig)}]
    assert {f.name for f in own} >= {"top_k", "budget", "candidates", "mode", "r", "lora_alpha", "lora_dropout",
                                     "predictor", "predictor_revision", "modules_to_save", "probe_batch_size",
                                     "probe_seed", "selected_modules", "selection_scores"}
    for f in own:
        assert f"{f.name} (`" in ZestConfig.__doc__, f.name
        assert f.metadata.get("help"), f.name


@pytest.mark.parametrize("kwargs, match", [
    ({"top_k": 0}, "top_k must be >= 1"),
    ({"top_k": -3}, "top_k must be >= 1"),
    ({"top_k": 2.5}, "top_k must be an integer"),
    ({"top_k": True}, "top_k must be an integer"),
    ({"budget": 0.0}, r"budget must be a fraction in \(0, 1\]"),
    ({"budget": 1.5}, r"budget must be a fraction in \(0, 1\]"),
    ({"budget": float("nan")}, r"budget must be a fraction in \(0, 1\]"),
    ({"top_k": 2, "budget": 0.1}, "not both"),
    ({}, "give top_k"),
    ({"top_k": 2, "mode": "half"}, "mode must be one of"),
    ({"top_k": 2, "r": 0}, "r must be >= 1"),
    ({"top_k": 2, "r": 1.5}, "r must be an integer >= 1"),
    ({"top_k": 2, "lora_dropout": 1.0}, r"lora_dropout must be in \[0, 1\)"),
    ({"top_k": 2, "target_modules": ["q_proj"]}, "chooses target_modules itself"),
    ({"selected_modules": ["a", "a"]}, "duplicates"),
    ({"selected_modules": ["a", "b"], "selection_scores": [1.0]}, "1 entries for 2"),
    ({"selected_modules": ["a", "b"], "selection_scores": [1.0, float("nan")]},
     r"selection_scores\[1\] must be a finite number, got nan \(the score of b"),
    ({"top_k": 2, "probe_seed": None}, "probe_seed must be an integer >= 0, got None"),
    ({"top_k": 2, "probe_seed": "1"}, "probe_seed must be an integer >= 0, got '1'"),
    ({"top_k": 2, "probe_seed": 1.5}, "probe_seed must be an integer >= 0, got 1.5"),
    ({"top_k": 2, "probe_seed": -1}, "probe_seed must be >= 0"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ZestConfig(**kwargs)


def test_resolved_config_round_trips_through_json(tmp_path):
    model = tiny_llama()
    cfg = resolved(model, token_batch(), top_k=3, mode="lora", r=4)
    assert cfg.is_resolved and cfg.target_modules == cfg.selected_modules and cfg.modules_to_save == []
    cfg.to_json(tmp_path / "zest.json")
    back = ZestConfig.from_json(tmp_path / "zest.json")
    assert back.to_dict() == cfg.to_dict()
    assert ZestConfig.from_pretrained(tmp_path / "zest.json").selected_modules == cfg.selected_modules
    with pytest.raises(SelectionError, match="holds no ZEST selection"):
        ZestConfig.from_pretrained(tmp_path)


def test_numpy_numbers_become_plain_numbers_that_save(tmp_path):
    cfg = ZestConfig(top_k=np.int64(2), r=np.int64(4), lora_alpha=np.int32(8), lora_dropout=np.float32(0.25),
                     cost_weight=np.float64(0.5), probe_batch_size=np.int64(3), probe_seed=np.int64(7))
    values = {k: getattr(cfg, k) for k in ("top_k", "r", "lora_alpha", "probe_batch_size", "probe_seed")}
    assert values == {"top_k": 2, "r": 4, "lora_alpha": 8, "probe_batch_size": 3, "probe_seed": 7}
    assert all(type(v) is int for v in values.values())
    assert type(cfg.lora_dropout) is float and type(cfg.cost_weight) is float and cfg.lora_dropout == 0.25
    budgeted = ZestConfig(budget=np.float32(0.5), selected_modules=["a"], selection_scores=[np.float32(1.5)])
    assert type(budgeted.budget) is float and type(budgeted.selection_scores[0]) is float

    # selected with a numpy top_k, the full-mode adapter saves whole and loads back
    model = tiny_bert_cls()
    base = copy.deepcopy(model)
    pm = peft.get_peft_model(model, resolved(model, cls_batch(), top_k=np.int64(2)))
    pm.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["top_k"] == 2
    assert zest_hf.load_adapter(base, tmp_path).peft_config["default"].top_k == 2


def test_a_torn_adapter_config_is_a_clear_error_naming_it(tmp_path):
    model = tiny_bert_cls()
    peft.get_peft_model(model, resolved(model, cls_batch(), top_k=1)).save_pretrained(tmp_path)
    (tmp_path / "adapter_config.json").write_text("")  # what a save killed mid-write leaves
    for load in (ZestConfig.from_pretrained, lambda p: zest_hf.load_adapter(tiny_bert_cls(), p)):
        with pytest.raises(ValueError, match=f"{tmp_path / 'adapter_config.json'} is not valid JSON"):
            load(tmp_path)


def test_exclude_modules_is_spent_at_selection_and_peft_does_not_warn(tmp_path, recwarn):
    batch = token_batch()
    batch["labels"] = batch["input_ids"].clone()
    cfg = resolved(tiny_llama(), batch, top_k=2, exclude_modules=["mlp.gate_proj"])
    assert not any(n.endswith("gate_proj") for n in cfg.selected_modules)
    assert cfg.exclude_modules is None and cfg.selection_info["exclude_modules"] == ["mlp.gate_proj"]
    pm = peft.get_peft_model(tiny_llama(), cfg)
    pending = peft.get_peft_model(tiny_llama(), ZestConfig(top_k=2, predictor=PRED, exclude_modules="m.*gate_proj"))
    pending.train()
    pending(**batch)  # selects on its first training batch
    assert pending.peft_config["default"].selection_info["exclude_modules"] == "m.*gate_proj"
    assert not [w for w in recwarn if "exclude_modules" in str(w.message)]
    pm.save_pretrained(tmp_path)
    back = ZestConfig.from_pretrained(tmp_path)
    assert back.selection_info == cfg.selection_info and back.selected_modules == cfg.selected_modules
    # a config saved with exclude_modules set, by an earlier zest_hf, reads back the same way
    d = json.loads((tmp_path / "adapter_config.json").read_text())
    d["exclude_modules"] = ["mlp.gate_proj"]
    del d["selection_info"]["exclude_modules"]
    old = ZestConfig.from_dict(d)
    assert old.exclude_modules is None and old.selection_info == cfg.selection_info


# --------------------------------------------------------------------------------------------------- selection
def test_choose_top_k_and_budget_fill():
    rows = [{"name": "a", "score": 3.0, "num_params": 40}, {"name": "b", "score": 2.0, "num_params": 50},
            {"name": "c", "score": 1.0, "num_params": 10}]
    assert choose(rows, top_k=2) == [("a", 3.0), ("b", 2.0)]
    assert choose(rows, budget=0.5) == [("a", 3.0), ("c", 1.0)]  # b overflows; c, further down, still fits
    assert choose(rows, budget=0.9) == [("a", 3.0), ("b", 2.0)]
    assert choose(rows, budget=1.0) == [("a", 3.0), ("b", 2.0), ("c", 1.0)]
    assert choose(rows, budget=0.3) == [("c", 1.0)]  # the best layers are too large: the one that fits
    with pytest.raises(SelectionError, match=r"smallest layer \(c\).*raise the budget to at least 0.1"):
        choose(rows, budget=0.05)
    with pytest.raises(SelectionError, match="only 3 candidate layers"):
        choose(rows, top_k=4)


def test_select_ranks_by_the_probe_and_detects_the_head():
    model = tiny_bert_cls()
    batch = cls_batch()
    cfg = resolved(model, batch, top_k=3)
    by_column = zest_hf.probe(model, batch, ["grad_norm"]).ranking("grad_norm")
    assert cfg.selected_modules == by_column[:3]
    assert cfg.selection_scores == sorted(cfg.selection_scores, reverse=True)
    assert cfg.modules_to_save == ["classifier"] and cfg.selection_info["num_candidates"] == 12
    budgeted = resolved(model, batch, budget=0.3)
    assert sum(t.num_params for t in zest_hf.find_targets(model) if t.name in budgeted.selected_modules) <= (
        0.3 * budgeted.selection_info["candidate_params"])


def test_select_bad_inputs_fail_before_probing(monkeypatch):
    def no_probe(*a, **k):
        raise AssertionError("probed")

    monkeypatch.setattr(zest_hf.rank, "rank", no_probe)
    model, batch = tiny_bert_cls(), cls_batch()
    with pytest.raises(SelectionError, match="top_k=13 but the model has only 12 candidate layers"):
        zest_hf.select(model, batch, ZestConfig(top_k=13, predictor=PRED))
    with pytest.raises(NoTargetsError, match="matched no linear layer"):
        zest_hf.select(model, batch, ZestConfig(top_k=1, candidates=r"nothing\..*", predictor=PRED))
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(NoTargetsError, match="no linear projection"):
        zest_hf.select(mlp, batch, ZestConfig(top_k=1, predictor=PRED))
    unlabelled = token_batch()
    with pytest.raises(MissingLabelsError, match="no 'labels'"):
        zest_hf.select(model, unlabelled, ZestConfig(top_k=1, predictor=PRED))
    fixed = ZestConfig(selected_modules=["bert.encoder.layer.1.output.dense"], modules_to_save=["classifier"])
    assert zest_hf.select(model, batch, fixed) is fixed  # resolved: no probe


# --------------------------------------------------------------------------------------------------- full mode
def test_full_mode_trains_the_selected_weights_in_place():
    model = tiny_bert_cls()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params_before = dict(model.named_parameters())
    bytes_before = storage_bytes(model)
    cfg = resolved(model, cls_batch(), top_k=3)
    pm = peft.get_peft_model(model, cfg)

    # no copy of any selected weight: the trained tensors are the model's own parameters
    layers = {n.removeprefix("base_model.model."): m for n, m in pm.named_modules() if isinstance(m, ZestLayer)}
    assert sorted(layers) == sorted(cfg.selected_modules)
    for name, layer in layers.items():
        assert layer.base_layer.weight is params_before[f"{name}.weight"]
    head_bytes = sum(p.numel() * p.element_size() for p in model.classifier.modules_to_save.parameters())
    assert storage_bytes(pm) - bytes_before == head_bytes  # the head's trainable copy, nothing else

    selected = {f"{n}.{p}" for n in cfg.selected_modules for p in ("weight", "bias")}
    trainable = {n.removeprefix("base_model.model.").replace(".zest_layer.default", "").replace(
        ".modules_to_save.default", "") for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable == selected | {"classifier.weight", "classifier.bias"}

    train_steps(pm, cls_batch())
    for n, p in params_before.items():  # injection kept every parameter object: compare them directly
        if n in selected:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n  # frozen: bit-identical (the original head included)
    assert not torch.equal(model.classifier.modules_to_save["default"].weight, before["classifier.weight"])
    with pytest.raises(ZestAdapterError, match="no untouched base model"):
        with pm.disable_adapter():
            pass


def test_a_full_mode_model_deep_copies_into_an_independent_twin():
    # what a reference or EMA copy does (TRL's create_reference_model deep-copies the policy)
    import copy

    model = tiny_bert_cls()
    pm = peft.get_peft_model(model, resolved(model, cls_batch(), top_k=2))
    twin = copy.deepcopy(pm)
    batch = {k: v for k, v in cls_batch().items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(pm.eval()(**batch).logits, twin.eval()(**batch).logits)
    train_steps(pm, cls_batch())
    with torch.no_grad():
        assert not torch.equal(pm.eval()(**batch).logits, twin.eval()(**batch).logits)  # no shared weights
    assert twin.peft_config["default"].selected_modules == pm.peft_config["default"].selected_modules


def test_full_mode_save_load_round_trip_is_exact_and_merges_to_a_plain_model(tmp_path):
    model = tiny_bert_cls()
    original = copy.deepcopy(model)
    batch = cls_batch()
    cfg = resolved(model, batch, top_k=2)
    pm = peft.get_peft_model(model, cfg)
    train_steps(pm, batch)
    with torch.no_grad():
        ref = pm(**batch).logits
    pm.save_pretrained(tmp_path / "ad")

    saved = load_file(tmp_path / "ad" / "adapter_model.safetensors")
    expected = {f"base_model.model.{n}.zest_layer.{p}" for n in cfg.selected_modules for p in ("weight", "bias")}
    assert set(saved) == expected | {"base_model.model.classifier.weight", "base_model.model.classifier.bias"}
    assert json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["selected_modules"] == cfg.selected_modules

    loaded = PeftModel.from_pretrained(copy.deepcopy(original), tmp_path / "ad")
    assert loaded.peft_config["default"].selected_modules == cfg.selected_modules  # no new probe, same choice
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, ref)

    via_transformers = copy.deepcopy(original)  # transformers' own adapter loader (pipelines use it) too
    via_transformers.load_adapter(str(tmp_path / "ad"))
    with torch.no_grad():
        assert torch.equal(via_transformers.eval()(**batch).logits, ref)

    merged = loaded.merge_and_unload()
    assert type(merged) is type(original) and not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    trained = {n.replace(".zest_layer.default", "").replace(".modules_to_save.default", ""): p for n, p in
               pm.get_base_model().named_parameters() if ".original_module." not in n}
    merged_sd = merged.state_dict()
    assert set(merged_sd) == set(original.state_dict())
    for n, p in trained.items():
        assert torch.equal(merged_sd[n], p), n
    with torch.no_grad():
        assert torch.equal(merged(**batch).logits, ref)


def test_full_mode_refuses_what_does_not_fit_before_touching_the_model(tmp_path):
    llama = tiny_llama()
    state = {k: v.clone() for k, v in llama.state_dict().items()}
    wrong = ZestConfig(selected_modules=["model.layers.7.mlp.down_proj"])
    for mode in ("full", "lora"):
        with pytest.raises(SelectionError, match="do not exist in LlamaForCausalLM"):
            peft.get_peft_model(llama, dataclasses.replace(wrong, mode=mode))
    # an unresolved config waits for its first training batch in full mode (tests/test_trl.py); LoRA layers must
    # exist before the optimizer, so LoRA mode refuses it, before touching the model
    with pytest.raises(ZestNotSelectedError, match="zest_hf.select"):
        peft.get_peft_model(llama, ZestConfig(top_k=2, mode="lora"))
    assert not any(isinstance(m, BaseTunerLayer) for m in llama.modules())
    assert all(torch.equal(v, state[k]) for k, v in llama.state_dict().items())
    assert all(p.requires_grad for p in llama.parameters())

    # an adapter saved from BERT does not load onto Llama
    bert = tiny_bert_cls()
    peft.get_peft_model(bert, resolved(bert, cls_batch(), top_k=1)).save_pretrained(tmp_path / "bert")
    with pytest.raises(SelectionError, match="do not exist"):
        PeftModel.from_pretrained(tiny_llama(), tmp_path / "bert")

    # a weights file from another selection is refused before any weight is overwritten
    base = tiny_bert_cls()
    cfg_path = tmp_path / "bert" / "adapter_config.json"
    d = json.loads(cfg_path.read_text())
    other = next(t.name for t in zest_hf.find_targets(base) if t.name not in d["selected_modules"])
    d["selected_modules"] = d["target_modules"] = [other]
    cfg_path.write_text(json.dumps(d))
    params = dict(base.named_parameters())
    snapshot = {k: v.detach().clone() for k, v in params.items()}
    with pytest.raises(SelectionError, match="does not hold the selection its config names"):
        PeftModel.from_pretrained(base, tmp_path / "bert")
    assert all(torch.equal(params[k], v) for k, v in snapshot.items())


# --------------------------------------------------------------------------------------------------- LoRA mode
def test_lora_mode_saves_a_stock_lora_adapter_that_stock_peft_loads_without_zest_hf(tmp_path):
    model = tiny_bert_cls()
    model.save_pretrained(tmp_path / "base")
    batch = cls_batch()
    cfg = resolved(model, batch, top_k=2, mode="lora", r=4, lora_alpha=8)
    pm = peft.get_peft_model(model, cfg)
    lora_cfg = pm.peft_config["default"]
    assert isinstance(lora_cfg, peft.LoraConfig) and set(lora_cfg.target_modules) == set(cfg.selected_modules)
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert {n.split(".lora_")[0].removeprefix("base_model.model.") for n in trainable if ".lora_" in n} == set(
        cfg.selected_modules)
    assert all(".lora_" in n or ".modules_to_save." in n for n in trainable)
    train_steps(pm, batch)
    with torch.no_grad():
        ref = pm(**batch).logits
    pm.save_pretrained(tmp_path / "ad")

    written = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert written["peft_type"] == "LORA" and sorted(written["target_modules"]) == sorted(cfg.selected_modules)
    assert written["modules_to_save"] == ["classifier"] and written["r"] == 4
    assert not set(written) - {f.name for f in dataclasses.fields(peft.LoraConfig)} - {"auto_mapping"}
    again = ZestConfig.from_pretrained(tmp_path / "ad")  # the selection survives, beside the stock config
    assert again.mode == "lora" and again.selected_modules == cfg.selected_modules
    assert (tmp_path / "ad" / SELECTION_FILE).is_file()

    loaded = PeftModel.from_pretrained(type(model).from_pretrained(tmp_path / "base"), tmp_path / "ad")
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, ref)

    torch.save({"batch": batch, "ref": ref}, tmp_path / "ref.pt")
    script = textwrap.dedent(f"""
        import sys, torch, transformers
        from peft import PeftModel
        torch.set_num_threads(1)
        base = transformers.AutoModelForSequenceClassification.from_pretrained({str(tmp_path / 'base')!r})
        model = PeftModel.from_pretrained(base, {str(tmp_path / 'ad')!r}).eval()
        d = torch.load({str(tmp_path / 'ref.pt')!r})
        with torch.no_grad():
            out = model(**d["batch"]).logits
        assert "zest_hf" not in sys.modules, "zest_hf was imported"
        assert torch.equal(out, d["ref"]), (out - d["ref"]).abs().max()
        print("STOCK-OK", type(model.peft_config["default"]).__name__)
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "STOCK-OK LoraConfig" in run.stdout


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_saved_target_modules_stay_exact_names_with_many_layers(tmp_path, mode):
    # peft rewrites lists of >= 20 target names into shortest suffixes ("down_proj", "1.self_attn.k_proj"...)
    cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=4, pad_token_id=0)
    model = transformers.LlamaForCausalLM(cfg)
    sel = resolved(model, token_batch(batch=2, length=8), top_k=20, mode=mode)
    peft.get_peft_model(model, sel).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"]
    assert sorted(saved) == sorted(sel.selected_modules)


def test_a_head_the_model_lacks_is_refused_before_anything_changes():
    llama = tiny_llama()
    state = {k: v.clone() for k, v in llama.state_dict().items()}
    cfg = ZestConfig(selected_modules=["model.layers.1.mlp.down_proj"], modules_to_save=["score"])
    for mode in ("full", "lora"):
        with pytest.raises(SelectionError, match=r"modules_to_save names \['score'\].*--head causal_lm"):
            peft.get_peft_model(llama, dataclasses.replace(cfg, mode=mode))
    assert not any(isinstance(m, BaseTunerLayer) for m in llama.modules())
    assert all(torch.equal(v, state[k]) for k, v in llama.state_dict().items())
    assert all(p.requires_grad for p in llama.parameters())


# ------------------------------------------------------------------------------------------------------ loading
def trained_adapter(path, mode):
    """A trained adapter of a tiny BERT classifier saved at ``path``: (untouched base, config, batch, logits)."""
    model = tiny_bert_cls()
    base = copy.deepcopy(model)
    batch = cls_batch()
    cfg = resolved(model, batch, top_k=2, mode=mode, r=4)
    pm = peft.get_peft_model(model, cfg)
    train_steps(pm, batch)
    with torch.no_grad():
        ref = pm(**batch).logits
    pm.save_pretrained(path)
    return base, cfg, batch, ref


def test_a_loaded_lora_adapter_saved_again_keeps_its_selection(tmp_path):
    base, cfg, batch, ref = trained_adapter(tmp_path / "0", "lora")
    for i in (1, 2):
        loaded = zest_hf.load_adapter(copy.deepcopy(base), tmp_path / str(i - 1), is_trainable=True)
        lora_cfg = loaded.peft_config["default"]
        assert isinstance(lora_cfg, ZestLoraConfig) and lora_cfg.zest_config.selected_modules == cfg.selected_modules
        with torch.no_grad():
            assert torch.equal(loaded.eval()(**batch).logits, ref)
        loaded.save_pretrained(tmp_path / str(i))
        again = ZestConfig.from_pretrained(tmp_path / str(i))
        assert (again.mode, again.selected_modules, again.selection_scores) == (
            "lora", cfg.selected_modules, cfg.selection_scores)
        written = json.loads((tmp_path / str(i) / "adapter_config.json").read_text())
        assert written["peft_type"] == "LORA" and written["r"] == 4
        assert sorted(written["target_modules"]) == sorted(cfg.selected_modules)
        assert not set(written) - {f.name for f in dataclasses.fields(peft.LoraConfig)} - {"auto_mapping"}


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_load_adapter_reads_a_subfolder(tmp_path, mode):
    base, cfg, batch, ref = trained_adapter(tmp_path / "sub", mode)
    loaded = zest_hf.load_adapter(base, tmp_path, subfolder="sub")
    assert loaded.peft_config["default"].target_modules == set(cfg.selected_modules) or (
        loaded.peft_config["default"].selected_modules == cfg.selected_modules)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, ref)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no subfolder 'other'"):
        zest_hf.load_adapter(tiny_bert_cls(), tmp_path, subfolder="other")


def serve_as_hub(monkeypatch, served):
    """Make ``hf_hub_download`` (huggingface_hub's and the copies peft imported) serve files of the local directory
    ``served``, as the Hub would serve the repo; returns the list of calls."""
    import huggingface_hub
    import peft.config
    import peft.utils.save_and_load
    from huggingface_hub.utils import EntryNotFoundError

    calls = []

    @functools.wraps(huggingface_hub.hf_hub_download)  # its signature: peft sorts kwargs by it
    def download(repo_id, filename, subfolder=None, **kwargs):
        calls.append((repo_id, filename, subfolder, kwargs.get("revision")))
        # peft's offline branch passes the subfolder twice, in the filename too
        path = served / filename if (served / filename).is_file() else served / (subfolder or "") / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{filename} is not in {repo_id}")
        return str(path)

    for module in (huggingface_hub, peft.config, peft.utils.save_and_load):
        monkeypatch.setattr(module, "hf_hub_download", download)
    return calls


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_load_adapter_reads_a_hub_repo_and_checks_its_weights(tmp_path, monkeypatch, mode):
    base, cfg, batch, ref = trained_adapter(tmp_path / "sub", mode)
    calls = serve_as_hub(monkeypatch, tmp_path)
    repo = "someuser/zest-adapter"
    got = ZestConfig.from_pretrained(repo, subfolder="sub", revision="v1")
    assert type(got) is ZestConfig and got.mode == mode and got.selected_modules == cfg.selected_modules
    loaded = zest_hf.load_adapter(copy.deepcopy(base), repo, subfolder="sub", revision="v1")
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, ref)
    fetched = {c[1] for c in calls}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= fetched
    assert (SELECTION_FILE in fetched) == (mode == "lora")
    assert all(c[0] == repo and c[3] == "v1" for c in calls)
    assert all(c[2] == "sub" for c in calls if c[1] in ("adapter_config.json", SELECTION_FILE))

    # a selection file from another save is refused on the weights check, before the base is touched
    selection = tmp_path / "sub" / (SELECTION_FILE if mode == "lora" else "adapter_config.json")
    d = json.loads(selection.read_text())
    other = next(t.name for t in zest_hf.find_targets(base) if t.name not in d["selected_modules"])
    d["selected_modules"] = d["target_modules"] = [other]
    d["selection_scores"] = [1.0]
    selection.write_text(json.dumps(d))
    state = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(SelectionError, match="does not hold the selection its config names"):
        zest_hf.load_adapter(base, repo, subfolder="sub", revision="v1")
    assert not any(isinstance(m, BaseTunerLayer) for m in base.modules()) and "peft_config" not in vars(base)
    assert all(torch.equal(v, state[k]) for k, v in base.state_dict().items())

    with pytest.raises(SelectionError, match=f"{repo} \\(Hub, subfolder elsewhere\\) holds no ZEST selection"):
        ZestConfig.from_pretrained(repo, subfolder="elsewhere")

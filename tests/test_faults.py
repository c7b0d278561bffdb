"""Bad inputs and broken files, each refused before any work, naming what is wrong (and the model left as it was)."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import zest_hf
from helpers import tiny_bert_cls, tiny_llama, token_batch
from zest_hf import MissingLabelsError, NonFiniteError, ZestConfig
from zest_hf.predictor import PredictorError, ZestPredictor, load_predictor
from zest_hf.sparse_zo import SparseZOConfig, sensitive_mask


class _Forwards:
    """Counts forward passes of a model: a check 'before any pass' must leave it at 0."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_hook(self._count)

    def _count(self, *a):
        self.n += 1


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_sensitive_mask_gives_every_module_its_own_mode_back():
    model = tiny_llama()
    model.train()
    model.model.layers[1].eval()  # a submodule the user keeps in eval
    modes = {n: m.training for n, m in model.named_modules()}
    sensitive_mask(model, [token_batch()], percent=1.0, progress=False)
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_a_non_finite_weight_is_refused_naming_the_layer():
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    count = _Forwards(model)
    with pytest.raises(NonFiniteError, match=r"model\.layers\.1\.mlp\.down_proj"):
        zest_hf.probe(model, token_batch())
    assert count.n == 0


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_the_probe_works_inside_no_grad_and_inference_mode(mode):
    model, batch = tiny_llama(), token_batch()
    ref = zest_hf.probe(model, batch, seed=0)
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        inside = zest_hf.probe(model, token_batch(), seed=0)
        assert not torch.is_grad_enabled()  # the caller's mode is back
    assert ref.values == inside.values


def test_an_all_padding_batch_and_an_out_of_range_label_are_refused_before_any_pass():
    llama = tiny_llama()
    batch = token_batch()
    batch["attention_mask"][:] = 0
    count = _Forwards(llama)
    with pytest.raises(MissingLabelsError, match="all padding"):
        zest_hf.probe(llama, batch)
    bert = tiny_bert_cls(num_labels=3)
    b = token_batch()
    b["labels"] = torch.tensor([0, 1, 2, 3])
    count_b = _Forwards(bert)
    with pytest.raises(ValueError, match=r"class ids 0\.\.3, but BertForSequenceClassification has num_labels=3"):
        zest_hf.probe(bert, b)
    assert count.n == count_b.n == 0


def test_a_cost_weight_set_after_the_config_was_built_is_refused_before_the_probe():
    model = tiny_llama()
    cfg = ZestConfig(top_k=2, predictor="metric:grad_norm")
    cfg.cost_weight = -1
    count = _Forwards(model)
    with pytest.raises(ValueError, match="cost_weight must be a number >= 0"):
        zest_hf.select(model, token_batch(), cfg)
    assert count.n == 0


def _saved_predictor(tmp_path):
    d = tmp_path / "pred"
    ZestPredictor(metrics=["snip", "grad_norm"], arch="linear").save_pretrained(d)
    return d


@pytest.mark.parametrize("content, match", [
    ("", "not valid JSON"), ("{", "not valid JSON"), ("[1, 2]", "got list"),
    ('{"arch": "linear"}', r"with keys \['arch'\]"),
])
def test_a_malformed_predictor_config_is_a_predictor_error(tmp_path, content, match):
    d = _saved_predictor(tmp_path)
    (d / "config.json").write_text(content)
    with pytest.raises(PredictorError, match=match):
        load_predictor(d)


def test_a_predictor_with_nan_weights_is_refused_at_load_naming_the_tensor(tmp_path):
    d = _saved_predictor(tmp_path)
    state = load_file(d / "model.safetensors")
    state["net.weight"][0, 0] = float("nan")
    save_file(state, d / "model.safetensors")
    with pytest.raises(PredictorError, match=r"NaN or inf in \['net\.weight'\]"):
        load_predictor(d)
    assert json.loads((d / "config.json").read_text())["arch"] == "linear"


@pytest.mark.parametrize("kwargs, match", [
    ({"percent": True}, "percent must be in"), ({"weight_decay": -1}, "weight_decay must be a number >= 0"),
    ({"mask_batches": 1.5}, "mask_batches must be an integer >= 1"), ({"blocksize": 0}, "blocksize must be >= 1"),
])
def test_sparse_zo_config_refuses_what_its_fields_cannot_be(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseZOConfig(**kwargs)


def test_a_sharded_model_is_refused_with_the_select_then_train_route():
    model = tiny_llama()
    model.model.layers[0].mlp.up_proj.weight.ds_id = 7  # what DeepSpeed ZeRO-3 puts on a partitioned parameter
    count = _Forwards(model)
    with pytest.raises(ValueError, match=r"sharded by DeepSpeed ZeRO-3.*zest select .* --config-out"):
        zest_hf.select(model, token_batch(), ZestConfig(top_k=2, predictor="metric:grad_norm"))
    assert count.n == 0


def test_an_fsdp1_flat_parameter_is_refused_like_any_sharded_model():
    from torch.distributed.fsdp._flat_param import FlatParameter

    model = tiny_llama()
    # what FSDP1 (use_orig_params=False) registers in place of a wrapped module's own parameters
    model.model.layers[0].register_parameter("_flat_param", FlatParameter(torch.zeros(8), requires_grad=True))
    count = _Forwards(model)
    with pytest.raises(ValueError, match=r"sharded by FSDP \(FullyShardedDataParallel\).*--config-out"):
        zest_hf.select(model, token_batch(), ZestConfig(top_k=2, predictor="metric:grad_norm"))
    assert count.n == 0


def test_a_saved_adapter_tells_a_person_what_it_is_and_what_loading_needs(tmp_path):
    import subprocess
    import sys

    import peft

    model = tiny_llama()
    cfg = ZestConfig(selected_modules=["model.layers.1.mlp.up_proj"], modules_to_save=[])
    peft.get_peft_model(model, cfg).save_pretrained(tmp_path / "full")
    card = (tmp_path / "full" / "README.md").read_text()
    assert card.startswith("---") and "import zest_hf" in card and "KeyError: 'ZEST'" in card
    lora = peft.get_peft_model(tiny_llama(), ZestConfig(selected_modules=["model.layers.1.mlp.up_proj"], mode="lora"))
    lora.save_pretrained(tmp_path / "lora")
    assert "loadable without zest_hf" in (tmp_path / "lora" / "README.md").read_text()
    # what the card warns about: peft alone does not know the method
    code = ("import peft, transformers; from peft import PeftConfig; "
            f"PeftConfig.from_pretrained({str(tmp_path / 'full')!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "ZEST" in out.stderr


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("damage", ["truncated", "other selection"])
def test_a_failed_adapter_load_leaves_the_base_exactly_as_it_was(tmp_path, mode, damage):
    import peft
    from peft.tuners.tuners_utils import BaseTunerLayer

    from zest_hf.errors import SelectionError

    names = ["model.layers.1.mlp.up_proj", "model.layers.0.self_attn.v_proj"]
    peft.get_peft_model(tiny_llama(), ZestConfig(selected_modules=names, mode=mode, modules_to_save=[])
                        ).save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:  # the config names one module, the file holds another's weights
        where = tmp_path / ("adapter_config.json" if mode == "full" else "zest_selection.json")
        cfg = json.loads(where.read_text())
        cfg["selected_modules"] = ["model.layers.1.mlp.down_proj", names[1]]
        cfg["selection_scores"] = [1.0, 0.5]
        cfg["target_modules"] = cfg["selected_modules"]
        where.write_text(json.dumps(cfg))
    base = tiny_llama()
    state, flags = _state(base), [p.requires_grad for p in base.parameters()]
    with pytest.raises(SelectionError, match=str(weights).replace(".", r"\.")):
        if mode == "full":
            peft.PeftModel.from_pretrained(base, tmp_path)
        else:
            ZestConfig.from_pretrained(tmp_path)
    assert not any(isinstance(m, BaseTunerLayer) for m in base.modules()) and not hasattr(base, "peft_config")
    assert [p.requires_grad for p in base.parameters()] == flags
    assert all(torch.equal(v, state[k]) for k, v in base.state_dict().items())


def test_a_lora_adapter_naming_modules_the_base_lacks_is_refused_by_load_adapter(tmp_path):
    import peft
    from peft.tuners.tuners_utils import BaseTunerLayer

    from zest_hf.errors import SelectionError

    names = ["model.layers.3.mlp.up_proj", "model.layers.0.self_attn.v_proj"]
    peft.get_peft_model(tiny_llama(num_hidden_layers=4), ZestConfig(selected_modules=names, mode="lora")
                        ).save_pretrained(tmp_path)
    small = tiny_llama(num_hidden_layers=2)
    state = _state(small)
    with pytest.raises(SelectionError, match=r"model\.layers\.3\.mlp\.up_proj"):
        zest_hf.load_adapter(small, tmp_path)
    assert not any(isinstance(m, BaseTunerLayer) for m in small.modules())
    assert all(torch.equal(v, state[k]) for k, v in small.state_dict().items())
    # what the README warns about: stock peft loads it, skipping the missing block's weights
    stock = peft.PeftModel.from_pretrained(tiny_llama(num_hidden_layers=2), tmp_path)
    assert not any("layers.3" in n for n, _ in stock.named_modules())


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_load_adapter_gives_the_base_back_when_peft_fails_after_wrapping_it(tmp_path, mode, monkeypatch):
    import peft
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = ["model.layers.1.mlp.up_proj", "model.layers.0.self_attn.v_proj"]
    trained = peft.get_peft_model(tiny_llama(), ZestConfig(selected_modules=names, mode=mode, modules_to_save=[]))
    with torch.no_grad():  # saved weights that differ from the base's, so a half-done load would show
        for n, p in trained.named_parameters():
            if p.requires_grad:
                p.add_(1.0)
    trained.save_pretrained(tmp_path)
    base = tiny_llama()
    state, flags = _state(base), [p.requires_grad for p in base.parameters()]
    modules = dict(base.named_modules())
    loaded = {}

    def fail_after_writing(self, *a, **k):
        loaded["result"] = real(self, *a, **k)  # the weights are in; then something later breaks
        raise OSError("disk went away")

    real = peft.PeftModel.load_adapter
    monkeypatch.setattr(peft.PeftModel, "load_adapter", fail_after_writing)
    with pytest.raises(OSError, match="disk went away"):
        zest_hf.load_adapter(base, tmp_path)
    assert "result" in loaded  # the failure came after peft wrapped the base and wrote the weights
    assert not any(isinstance(m, BaseTunerLayer) for m in base.modules()) and "peft_config" not in vars(base)
    assert dict(base.named_modules()).keys() == modules.keys()
    assert all(base.get_submodule(n) is m for n, m in modules.items())
    assert [p.requires_grad for p in base.parameters()] == flags
    assert all(torch.equal(v, state[k]) for k, v in base.state_dict().items())
    monkeypatch.undo()
    good = zest_hf.load_adapter(base, tmp_path)  # and the good adapter then loads onto it
    twin = tiny_llama()
    twin.load_state_dict(state)
    ref = peft.PeftModel.from_pretrained(twin, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(good.state_dict().values(), ref.state_dict().values()))


def test_a_truncated_lora_adapter_is_refused_by_load_adapter_naming_the_file(tmp_path):
    import peft
    from peft.tuners.tuners_utils import BaseTunerLayer

    from zest_hf.errors import SelectionError

    peft.get_peft_model(tiny_llama(), ZestConfig(selected_modules=["model.layers.1.mlp.up_proj"], mode="lora")
                        ).save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    base = tiny_llama()
    with pytest.raises(SelectionError, match=str(weights).replace(".", r"\.")):
        zest_hf.load_adapter(base, tmp_path)
    assert not any(isinstance(m, BaseTunerLayer) for m in base.modules())


def test_reentrant_checkpointing_in_train_mode_probes_like_plain_train_mode():
    plain = tiny_llama(attention_dropout=0.0)
    ref = zest_hf.probe(plain, token_batch(), train_mode=True, seed=0)
    model = copy.deepcopy(plain)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    hooks = {n: dict(m._forward_hooks) for n, m in model.named_modules()}
    out = zest_hf.probe(model, token_batch(), train_mode=True, seed=0)
    for col in ("snip", "grad_norm", "synflow"):
        assert out.values[col] == pytest.approx(ref.values[col], rel=1e-5, abs=1e-9), col
    assert {n: dict(m._forward_hooks) for n, m in model.named_modules()} == hooks  # its own hook is gone

"""zest_hf.sparse_zo: sensitive mask, 4-bit + exact-sparse layers, MeZO's step, the ZOTrainer, and saving only the
tuned coordinates. Tiny random Llama models; bitsandbytes' NF4 runs on the CPU."""

import copy
import math

import pytest
import torch
import transformers
from helpers import tiny_bert_cls, tiny_gpt2, tiny_llama, token_batch

from zest_hf import NoTargetsError, find_targets
from zest_hf.probe import NonFiniteError
from zest_hf.sparse_zo import (
    MASK_FILE,
    SensitiveMask,
    SparseQuantLinear,
    SparseZOConfig,
    ZOTrainer,
    apply_sparse_delta,
    attach_sparse,
    load_sparse_zo,
    perturb,
    read_sparse_delta,
    save_sparse_delta,
    sensitive_mask,
    sparse_layers,
    tunable_values,
    zo_step,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def lm_batch(seed=0, batch=4, length=12):
    b = token_batch(batch=batch, length=length, seed=seed)
    b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    return b


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------------ mask
def test_mask_is_the_global_top_percent_by_summed_squared_gradient_and_leaves_the_model_unchanged():
    torch.manual_seed(0)
    model = tiny_llama()
    model.train()
    model.model.embed_tokens.weight.requires_grad_(False)  # a flag the mask must restore
    before = state(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    batches = [lm_batch(0), lm_batch(1)]
    mask = sensitive_mask(model, batches, percent=0.5)

    # brute force: the same sum of squared gradients, all coordinates concatenated, one global top-k
    targets = find_targets(model)
    sums = {t.name: torch.zeros_like(t.module.weight) for t in targets}
    ref = copy.deepcopy(model).eval()
    for b in batches:
        ref.zero_grad()
        ref(**b).loss.backward()
        for t in targets:
            sums[t.name] += ref.get_submodule(t.name).weight.grad ** 2
    total = sum(s.numel() for s in sums.values())
    k = math.ceil(total * 0.5 / 100)
    flat = torch.cat([s.view(-1) for s in sums.values()])
    threshold = torch.topk(flat, k).values.min()
    assert mask.num_selected == k == mask.info["selected"]
    for name, idx in mask.indices.items():
        assert torch.all(sums[name].view(-1)[idx] >= threshold * (1 - 1e-5))
        assert torch.equal(idx, torch.sort(idx).values)
    assert sum(int((s.view(-1) > threshold * (1 + 1e-5)).sum()) for s in sums.values()) <= k

    after = state(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.training and all(p.grad is None for p in model.parameters())


def test_mask_restricted_to_layers_and_saved_round_trip(tmp_path):
    model = tiny_llama()
    layers = ["model.layers.1.mlp.down_proj", "model.layers.0.self_attn.v_proj"]
    mask = sensitive_mask(model, [lm_batch()], percent=2.0, layers=layers)
    assert set(n for n, i in mask.indices.items() if i.numel()) <= set(layers)
    assert mask.info["candidate_coordinates"] == 128 * 64 + 64 * 64
    mask.save(tmp_path / "m.safetensors")
    back = SensitiveMask.load(tmp_path / "m.safetensors")
    assert back.percent == 2.0 and back.shapes == mask.shapes
    assert all(torch.equal(back.indices[n], mask.indices[n]) for n in mask.indices)


@pytest.mark.parametrize("p", [0, -1, 100.5, float("nan")])
def test_percent_outside_0_100_is_refused(p):
    with pytest.raises(ValueError, match=r"percent must be in \(0, 100\]"):
        SparseZOConfig(percent=p)
    with pytest.raises(ValueError, match=r"percent must be in \(0, 100\]"):
        sensitive_mask(tiny_llama(), [lm_batch()], percent=p)


def test_mask_on_a_model_without_candidates_and_on_unknown_layers_is_refused():
    class NoProjections(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)

    with pytest.raises(NoTargetsError):
        sensitive_mask(NoProjections(), [{"input_ids": torch.zeros(1, 2, dtype=torch.long)}])
    with pytest.raises(ValueError, match="not candidate projections"):
        sensitive_mask(tiny_llama(), [lm_batch()], layers=["model.layers.7.mlp.up_proj"])


# ----------------------------------------------------------------------------------------------- the layers
@pytest.mark.parametrize("quantize", ["nf4", None])
def test_sparse_layer_is_quantised_dense_plus_exact_sparse(quantize):
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 64)
    w = lin.weight.detach().clone()
    idx = torch.tensor([0, 5, 700, 8191])
    layer = SparseQuantLinear(lin, idx, quantize)
    dense = layer.dense_weight()
    assert torch.equal(dense.view(-1)[idx], w.view(-1)[idx])  # the sensitive coordinates are exact
    rest = torch.ones(w.numel(), dtype=torch.bool)
    rest[idx] = False
    err = (dense.view(-1)[rest] - w.view(-1)[rest]).abs()
    if quantize is None:
        assert torch.equal(dense, w)
    else:  # NF4 with blocks of 64: a few percent of the weight scale, and not exact
        assert 0 < err.mean() < 0.1 * w.abs().mean()
        assert layer.storage_bytes() < 0.2 * w.numel() * 4
    x = torch.randn(3, 128)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, dense, lin.bias))
    assert layer.values.dtype == torch.float32 and not layer.values.requires_grad


def test_attach_quantises_every_candidate_and_freezes_the_rest():
    model = tiny_llama()
    mask = sensitive_mask(model, [lm_batch()], percent=1.0)
    attach_sparse(model, mask)
    layers = sparse_layers(model)
    assert set(layers) == {t.name for t in find_targets(tiny_llama())}
    assert not any(p.requires_grad for p in model.parameters())
    assert sum(v.numel() for v in tunable_values(model)) == mask.num_selected
    assert not any(isinstance(m, torch.nn.Linear) and "layers" in n for n, m in model.named_modules())


def test_attach_refuses_a_mask_of_another_model():
    mask = sensitive_mask(tiny_llama(), [lm_batch()], percent=1.0)
    other = tiny_llama(head_dim=32)  # q/k/v/o of another shape
    with pytest.raises(ValueError, match="other shapes"):
        attach_sparse(other, mask)
    assert not sparse_layers(other)


# --------------------------------------------------------------------------------------------------- the step
def test_zo_step_perturbs_both_ways_restores_exactly_and_updates_along_the_regenerated_z():
    torch.manual_seed(0)
    params = [torch.randn(50), torch.randn(3, 7)]
    start = [p.clone() for p in params]
    seen = []

    def loss_fn():
        seen.append([p.clone() for p in params])
        return sum((p ** 2).sum() for p in params)

    z = [torch.zeros_like(p) for p in params]
    perturb(z, seed=123, scale=1.0)  # the z the step will draw
    loss, g = zo_step(loss_fn, params, lr=0.0, eps=1e-2, seed=123)
    assert all(torch.equal(p, s) for p, s in zip(params, start))  # lr 0: bit-identical after the step
    for p_plus, p_minus, s, zz in zip(seen[0], seen[1], start, z):
        torch.testing.assert_close(p_plus, s + 1e-2 * zz)
        torch.testing.assert_close(p_minus, s - 1e-2 * zz)
    l_pos, l_neg = (sum((p ** 2).sum() for p in ps) for ps in seen)
    assert g == pytest.approx(float(l_pos - l_neg) / 2e-2, rel=1e-6)
    assert loss == pytest.approx(float(l_pos + l_neg) / 2, rel=1e-6)

    zo_step(loss_fn, params, lr=0.1, eps=1e-2, seed=123)
    for p, s, zz in zip(params, start, z):
        torch.testing.assert_close(p, s - 0.1 * g * zz)


def test_zo_step_refuses_low_precision_values_and_restores_on_a_nan_loss():
    with pytest.raises(TypeError, match="fp32"):
        zo_step(lambda: torch.tensor(1.0), [torch.zeros(3, dtype=torch.bfloat16)], lr=1e-3, eps=1e-3, seed=0)
    p = torch.randn(10)
    start = p.clone()
    with pytest.raises(NonFiniteError, match="restored and not updated"):
        zo_step(lambda: torch.tensor(float("nan")), [p], lr=1.0, eps=1e-3, seed=0)
    assert torch.equal(p, start)


def test_sparse_zo_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = tiny_llama()
    batch = lm_batch(batch=8)
    attach_sparse(model, sensitive_mask(model, [batch], percent=5.0))
    model.eval()
    params = tunable_values(model)
    with torch.no_grad():
        first = model(**batch).loss.item()
    for step in range(150):
        zo_step(lambda: model(**batch).loss, params, lr=3e-3, eps=1e-3, seed=step)
    with torch.no_grad():
        last = model(**batch).loss.item()
    assert last < first - 0.05, (first, last)


# -------------------------------------------------------------------------------------------------- trainer
class ListDataset(torch.utils.data.Dataset):
    def __init__(self, n=32, length=12):
        self.rows = []
        for i in range(n):
            b = lm_batch(seed=i, batch=1, length=length)
            self.rows.append({k: v[0] for k, v in b.items()})

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def zo_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-2,
                report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
                dataloader_pin_memory=False)
    return transformers.TrainingArguments(**dict(base, **kw))


def test_trainer_tunes_only_the_sensitive_values_and_saves_only_them(tmp_path):
    torch.manual_seed(0)
    model = tiny_llama()
    base = copy.deepcopy(model)
    trainer = ZOTrainer(model=model, args=zo_args(tmp_path), train_dataset=ListDataset(),
                        sparse_zo=SparseZOConfig(percent=1.0, mask_batches=2, zo_seed=7))
    trainer.prepare_sparse()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith(".values")}
    values0 = [v.clone() for v in tunable_values(model)]
    trainer.train()
    after = model.state_dict()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)  # embeddings, norms, 4-bit weights untouched
    assert any(not torch.equal(a, b) for a, b in zip(values0, tunable_values(model)))
    assert trainer.optimizer.state_dict()["state"] == {}  # no optimizer state
    assert (tmp_path / "run" / MASK_FILE).is_file()

    out = tmp_path / "final"
    trainer.save_model(str(out))
    assert sorted(p.name for p in out.iterdir()) == ["sparse_delta.safetensors", "sparse_zo_config.json"]
    indices, values, shapes, meta = read_sparse_delta(out)
    assert sum(i.numel() for i in indices.values()) == sum(v.numel() for v in tunable_values(model))
    assert SparseZOConfig.from_json(out / "sparse_zo_config.json").mask_info["num_batches"] == 2

    # the delta applied to a plain fp32 base changes exactly the tuned coordinates, to exactly the trained values
    plain = apply_sparse_delta(copy.deepcopy(base), out)
    for name, m in sparse_layers(model).items():
        w0, w1 = base.get_submodule(name).weight.view(-1), plain.get_submodule(name).weight.view(-1)
        changed = torch.nonzero(w0 != w1).view(-1)
        assert set(changed.tolist()) <= set(m.flat_idx.tolist())
        assert torch.equal(w1[m.flat_idx], m.values)
    # rebuilt in 4 bit from the delta, the model computes exactly what the trained one does
    rebuilt = load_sparse_zo(copy.deepcopy(base), out)
    b = lm_batch(5)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(**b).logits, model.eval()(**b).logits)


def test_trainer_restricted_to_zest_top_k(tmp_path):
    trainer = ZOTrainer(model=tiny_llama(), args=zo_args(tmp_path, max_steps=1), train_dataset=ListDataset(),
                        sparse_zo=SparseZOConfig(percent=5.0, zest_top_k=2, predictor="metric:grad_norm"))
    trainer.prepare_sparse()
    assert len(trainer.sparse_zo.mask_info["zest_layers"]) == 2
    tuned = {n for n, m in sparse_layers(trainer.model).items() if m.flat_idx.numel()}
    assert tuned and tuned <= set(trainer.sparse_zo.mask_info["zest_layers"])


def test_trainer_refuses_gradient_accumulation_before_touching_the_model(tmp_path):
    model = tiny_llama()
    with pytest.raises(ValueError, match="gradient_accumulation_steps=2"):
        ZOTrainer(model=model, args=zo_args(tmp_path, gradient_accumulation_steps=2), train_dataset=ListDataset())
    assert not sparse_layers(model)


def test_a_model_cast_to_bf16_after_attaching_keeps_its_exact_fp32_tuned_values(tmp_path):
    torch.manual_seed(0)
    model = tiny_llama()
    attach_sparse(model, sensitive_mask(model, [lm_batch()], percent=1.0))
    for v in tunable_values(model):
        v.data.add_(torch.randn_like(v) * 1e-3)  # values bf16 cannot hold
    trained = [v.clone() for v in tunable_values(model)]
    model.to(torch.bfloat16)  # what the Trainer does for bf16_full_eval
    assert all(v.dtype == torch.float32 and torch.equal(v, t) for v, t in zip(tunable_values(model), trained))
    with torch.no_grad():
        assert model(**lm_batch()).logits.dtype == torch.bfloat16
    save_sparse_delta(model, tmp_path)
    _, values, _, _ = read_sparse_delta(tmp_path)
    assert all(torch.equal(values[n], m.values) for n, m in sparse_layers(model).items() if m.values.numel())
    zo_step(lambda: model(**lm_batch()).loss, tunable_values(model), lr=1e-3, eps=1e-3, seed=0)  # still trainable


def test_bf16_full_eval_leaves_the_trained_values_exact(tmp_path):
    torch.manual_seed(0)
    trainer = ZOTrainer(model=tiny_llama(), args=zo_args(tmp_path, max_steps=2, bf16_full_eval=True, use_cpu=True),
                        train_dataset=ListDataset(), eval_dataset=ListDataset(4),
                        sparse_zo=SparseZOConfig(percent=1.0, mask_batches=1, quantize=None))
    trainer.train()
    trained = [v.clone() for v in tunable_values(trainer.model)]
    trainer.evaluate()  # casts the model to bf16
    trainer.save_model(str(tmp_path / "out"))
    _, values, _, _ = read_sparse_delta(tmp_path / "out")
    layers = {n: m for n, m in sparse_layers(trainer.model).items() if m.values.numel()}
    assert [v.dtype for v in tunable_values(trainer.model)] == [torch.float32] * len(trained)
    assert all(torch.equal(values[n], t) for n, t in zip(layers, trained))


def test_a_mixed_dtype_model_chooses_its_coordinates_under_the_runs_autocast(tmp_path):
    # a bf16 body under an fp32 head runs only under autocast: the ZEST selection and the mask, made before train()
    # enters its own autocast, run under the same one
    torch.manual_seed(0)
    model = tiny_llama().to(torch.bfloat16)
    model.lm_head.float()
    trainer = ZOTrainer(model=model, args=zo_args(tmp_path, max_steps=2, bf16=True, use_cpu=True,
                                                  logging_strategy="steps", logging_steps=1),
                        train_dataset=ListDataset(),
                        sparse_zo=SparseZOConfig(percent=1.0, mask_batches=1, quantize=None, zest_top_k=2,
                                                 predictor="metric:grad_norm"))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert len(trainer.sparse_zo.mask_info["zest_layers"]) == 2
    assert {v.dtype for v in tunable_values(trainer.model)} == {torch.float32}
    assert model.lm_head.weight.dtype == torch.float32  # left as the user had it


def test_bf16_model_keeps_fp32_tuned_values():
    model = tiny_llama().to(torch.bfloat16)
    attach_sparse(model, sensitive_mask(model, [lm_batch()], percent=1.0))
    assert {v.dtype for v in tunable_values(model)} == {torch.float32}
    with torch.no_grad():
        assert model(**lm_batch()).logits.dtype == torch.bfloat16


def test_a_malformed_delta_file_gives_a_clear_error(tmp_path):
    (tmp_path / "sparse_delta.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_sparse_delta(tmp_path)
    with pytest.raises(FileNotFoundError, match="no sparse delta"):
        read_sparse_delta(tmp_path / "missing")


def test_resuming_from_a_checkpoint_continues_the_same_run(tmp_path):
    """A checkpoint holds the sparse delta; resuming rebuilds the 4-bit model from it (no new mask) and the steps
    after it replay exactly (same seeds, data order and learning rates)."""
    torch.manual_seed(0)
    base = tiny_llama()
    cfg = dict(percent=1.0, mask_batches=1, zo_seed=3)
    full = ZOTrainer(model=copy.deepcopy(base), args=zo_args(tmp_path / "a", save_strategy="steps", save_steps=3),
                     train_dataset=ListDataset(), sparse_zo=SparseZOConfig(**cfg))
    full.train()
    resumed = ZOTrainer(model=copy.deepcopy(base), args=zo_args(tmp_path / "a"), train_dataset=ListDataset(),
                        sparse_zo=SparseZOConfig(**cfg))
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "run" / "checkpoint-3"))
    assert resumed.state.global_step == 6
    for a, b in zip(tunable_values(full.model), tunable_values(resumed.model)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("quantize", [None, "fp4"])
def test_load_sparse_zo_rebuilds_the_quantisation_the_run_used(tmp_path, quantize):
    from zest_hf.sparse_zo import save_sparse_delta

    torch.manual_seed(0)
    base = tiny_llama()
    model = copy.deepcopy(base)
    mask = sensitive_mask(model, [lm_batch()], percent=2.0, progress=False)
    attach_sparse(model, mask, quantize=quantize)
    for v in tunable_values(model):
        v.data.add_(0.5)
    save_sparse_delta(model, tmp_path, SparseZOConfig(quantize=quantize))
    rebuilt = load_sparse_zo(copy.deepcopy(base), tmp_path)  # no settings given: the saved ones
    b = lm_batch(5)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(**b).logits, model.eval()(**b).logits)
    fresh = copy.deepcopy(base)
    before = state(fresh)
    with pytest.raises(ValueError, match=rf"quantize={quantize!r}.*quantize='nf4' was asked for"):
        load_sparse_zo(fresh, tmp_path, quantize="nf4")
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())
    assert not sparse_layers(fresh)


# ------------------------------------------------------------------------------------------ GPT-2's Conv1D
@pytest.mark.parametrize("quantize", [None, "nf4"])
def test_gpt2_conv1d_projections_compute_what_the_dense_model_does(tmp_path, quantize):
    """Conv1D stores its weight as (in, out): the sparse layer holds it transposed, the mask and the saved delta
    index the Conv1D's own weight, so the delta applies to a plain GPT-2 and rebuilds the same model."""
    torch.manual_seed(0)
    base = tiny_gpt2().eval()
    b = lm_batch()
    mask = sensitive_mask(base, [b], percent=2.0)
    model = attach_sparse(copy.deepcopy(base), mask, quantize=quantize).eval()
    assert set(sparse_layers(model)) == {t.name for t in find_targets(base)}
    for name, m in sparse_layers(model).items():  # the tuned values are the Conv1D's own coordinates
        assert torch.equal(m.values, base.get_submodule(name).weight.view(-1)[mask.indices[name]])
    with torch.no_grad():
        want, got = base(**b), model(**b)
    if quantize is None:
        torch.testing.assert_close(got.logits, want.logits)
    else:  # NF4 rounding only
        assert abs(got.loss.item() - want.loss.item()) < 0.05 * want.loss.item()
        assert (got.logits - want.logits).abs().mean() < 0.1 * want.logits.abs().mean()

    for v in tunable_values(model):
        v.data.add_(0.5)
    save_sparse_delta(model, tmp_path, SparseZOConfig(quantize=quantize))
    plain = apply_sparse_delta(copy.deepcopy(base), tmp_path)
    for name, m in sparse_layers(model).items():
        assert torch.equal(plain.get_submodule(name).weight.view(-1)[mask.indices[name]], m.values)
    rebuilt = load_sparse_zo(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(**b).logits, model(**b).logits)
        if quantize is None:
            torch.testing.assert_close(plain(**b).logits, model(**b).logits)


# ---------------------------------------------------------------------------------------- loading and resuming
def test_load_sparse_zo_rebuilds_the_saved_target_modules_and_refuses_others(tmp_path):
    torch.manual_seed(0)
    base = tiny_llama()
    cfg = SparseZOConfig(percent=1.0, target_modules=["q_proj", "v_proj"])
    model = copy.deepcopy(base)
    attach_sparse(model, sensitive_mask(model, [lm_batch()], percent=1.0, target_modules=cfg.target_modules),
                  target_modules=cfg.target_modules)
    save_sparse_delta(model, tmp_path, cfg)
    rebuilt = load_sparse_zo(copy.deepcopy(base), tmp_path)
    assert set(sparse_layers(rebuilt)) == set(sparse_layers(model)) and len(sparse_layers(model)) == 4
    b = lm_batch(5)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(**b).logits, model.eval()(**b).logits)
    same = load_sparse_zo(copy.deepcopy(base), tmp_path, target_modules=["v_proj", "q_proj"])  # same layers
    assert set(sparse_layers(same)) == set(sparse_layers(model))
    fresh = copy.deepcopy(base)
    before = state(fresh)
    with pytest.raises(ValueError, match=r"target_modules=\['q_proj', 'v_proj'\].*target_modules=None was asked"):
        load_sparse_zo(fresh, tmp_path, target_modules=None)
    assert not sparse_layers(fresh) and all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())


def test_apply_sparse_delta_checks_every_layer_before_writing_any(tmp_path):
    from safetensors.torch import save_file

    from zest_hf.sparse_zo.io import DELTA_FILE, FORMAT

    q0, q1 = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"
    good = {f"{q0}.indices": torch.tensor([0, 1]), f"{q0}.values": torch.tensor([9.0, 9.0]),
            f"{q0}.shape": torch.tensor([64, 64])}
    bad_second = {
        "negative": {f"{q1}.indices": torch.tensor([-5])},
        "past the end": {f"{q1}.indices": torch.tensor([64 * 64])},
        "repeated": {f"{q1}.indices": torch.tensor([3, 3]), f"{q1}.values": torch.tensor([1.0, 2.0])},
        "float indices": {f"{q1}.indices": torch.tensor([3.7])},
        "shape": {f"{q1}.shape": torch.tensor([64, 64, 1])},
    }
    messages = {"negative": "outside", "past the end": "outside", "repeated": "repeats indices",
                "float indices": "indices \\(integers expected", "shape": "two positive integers"}
    model = tiny_llama()
    for case, change in bad_second.items():
        layer = {f"{q1}.indices": torch.tensor([7]), f"{q1}.values": torch.tensor([9.0]),
                 f"{q1}.shape": torch.tensor([64, 64]), **change}
        save_file({**good, **layer}, str(tmp_path / DELTA_FILE), metadata={"format": FORMAT})
        before = state(model)
        with pytest.raises(ValueError, match=messages[case]):
            apply_sparse_delta(model, tmp_path)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), case


def _resume_setup(tmp_path, **cfg):
    torch.manual_seed(0)
    base = tiny_llama()
    cfg = dict(dict(percent=1.0, mask_batches=1, zo_seed=3, quantize=None), **cfg)
    full = ZOTrainer(model=copy.deepcopy(base), args=zo_args(tmp_path / "a", save_strategy="steps", save_steps=3),
                     train_dataset=ListDataset(), sparse_zo=SparseZOConfig(**cfg))
    full.train()
    return base, cfg, full, tmp_path / "a" / "run" / "checkpoint-3"


def test_resuming_a_model_prepared_before_loads_the_checkpoint_and_its_mask_info(tmp_path):
    base, cfg, full, checkpoint = _resume_setup(tmp_path)
    resumed = ZOTrainer(model=copy.deepcopy(base), args=zo_args(tmp_path / "b"), train_dataset=ListDataset(),
                        sparse_zo=SparseZOConfig(**cfg))
    resumed.prepare_sparse()  # to inspect the model first
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 6
    assert all(torch.equal(a, b) for a, b in zip(tunable_values(full.model), tunable_values(resumed.model)))

    fresh = ZOTrainer(model=copy.deepcopy(base), args=zo_args(tmp_path / "c"), train_dataset=ListDataset(),
                      sparse_zo=SparseZOConfig(**cfg))
    fresh.train(resume_from_checkpoint=str(checkpoint))  # the mask is the checkpoint's, and so is where it came from
    assert fresh.sparse_zo.mask_info == full.sparse_zo.mask_info and fresh.sparse_zo.mask_info["num_batches"] == 1

    other = ZOTrainer(model=copy.deepcopy(base), args=zo_args(tmp_path / "d"), train_dataset=ListDataset(8),
                      sparse_zo=SparseZOConfig(**dict(cfg, mask_batches=2)))
    other.prepare_sparse()  # another mask than the checkpoint's
    values = [v.clone() for v in tunable_values(other.model)]
    with pytest.raises(ValueError, match="another mask"):
        other.train(resume_from_checkpoint=str(checkpoint))
    assert all(torch.equal(a, b) for a, b in zip(values, tunable_values(other.model)))
    assert other.sparse_zo.mask_info["num_batches"] == 2


@pytest.mark.parametrize("change", [{"zo_seed": 4}, {"eps": 1e-2}, {"weight_decay": 0.1}])
def test_resuming_with_other_step_settings_is_refused_before_anything_changes(tmp_path, change):
    base, cfg, _, checkpoint = _resume_setup(tmp_path)
    key, value = next(iter(change.items()))
    for prepared in (False, True):
        model = copy.deepcopy(base)
        trainer = ZOTrainer(model=model, args=zo_args(tmp_path / "b"), train_dataset=ListDataset(),
                            sparse_zo=SparseZOConfig(**dict(cfg, **change)))
        if prepared:
            trainer.prepare_sparse()
        before = state(model)
        with pytest.raises(ValueError, match=rf"{key}=.* there but {value!r} here"):
            trainer.train(resume_from_checkpoint=str(checkpoint))
        assert bool(sparse_layers(model)) == prepared
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_load_best_model_at_end_ends_on_the_best_checkpoints_values(tmp_path):
    torch.manual_seed(0)
    # the highest eval loss is "best": the first checkpoint, which the later steps move away from
    args = zo_args(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                   load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True,
                   learning_rate=0.1)
    trainer = ZOTrainer(model=tiny_llama(), args=args, train_dataset=ListDataset(), eval_dataset=ListDataset(8),
                        sparse_zo=SparseZOConfig(percent=5.0, mask_batches=1, quantize=None))
    trainer.train()
    best, last = trainer.state.best_model_checkpoint, tmp_path / "run" / "checkpoint-4"
    assert best is not None and best.endswith("checkpoint-1")
    _, best_values, _, _ = read_sparse_delta(best)
    _, last_values, _, _ = read_sparse_delta(last)
    assert any(not torch.equal(best_values[n], last_values[n]) for n in best_values)
    assert all(torch.equal(m.values, best_values[n]) for n, m in sparse_layers(trainer.model).items()
               if m.values.numel())
    assert trainer.evaluate()["eval_loss"] == pytest.approx(trainer.state.best_metric, rel=1e-6)


# ------------------------------------------------------------------------------------------- bad settings
def test_an_empty_layer_list_and_a_block_size_bitsandbytes_rejects_are_refused_up_front():
    model = tiny_llama()
    with pytest.raises(ValueError, match="layers is empty"):
        sensitive_mask(model, [lm_batch()], layers=[])
    for bad in (100, 16, 8192):
        with pytest.raises(ValueError, match=r"blocksize must be one of \(32, 64"):
            SparseZOConfig(blocksize=bad)
    mask = sensitive_mask(model, [lm_batch()], percent=1.0)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="blocksize must be one of"):
        attach_sparse(model, mask, blocksize=100)
    assert not sparse_layers(model) and {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert SparseZOConfig(blocksize=32).blocksize == 32 and SparseZOConfig(blocksize=4096).blocksize == 4096


def test_each_device_draws_its_own_perturbation_and_one_device_draws_as_before():
    from zest_hf.sparse_zo.step import device_seed

    seed = 12345
    assert device_seed(seed, torch.device("cpu")) == seed
    assert device_seed(seed, torch.device("cuda", 0)) == seed == device_seed(seed, "cuda")
    others = [device_seed(seed, torch.device("cuda", i)) for i in range(1, 8)]
    assert seed not in others and len(set(others)) == len(others)
    # on the CPU perturb draws from the seed itself, as it always did
    p = torch.zeros(5)
    perturb([p], seed, 1.0)
    assert torch.equal(p, torch.randn(5, generator=torch.Generator().manual_seed(seed)))

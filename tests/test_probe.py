"""The probe against naive references written out by hand, restoration bit for bit, and the bad inputs."""

import copy
import math

import pytest
import torch
import transformers
from helpers import tiny_bert_cfg, tiny_bert_cls, tiny_gpt2, tiny_llama, token_batch

import zest_hf
from zest_hf import METRICS, MissingLabelsError, NonFiniteError, ProbeResult, find_targets, probe
from zest_hf.metrics import register_metric


# ----------------------------------------------------------------------------------------- naive references
def _labelled(model, batch):
    b = dict(batch)
    if isinstance(model, transformers.BertForSequenceClassification):
        b["labels"] = torch.tensor([0, 1, 2, 1])[: b["input_ids"].shape[0]]
    else:  # causal LM: the inputs, padding ignored
        b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    return b


def naive_reference(model, batch):
    """Every metric the slow, obvious way on a deep copy: full .grad, retained outputs, finite differences."""
    ref = copy.deepcopy(model).double().eval()
    names = [t.name for t in find_targets(ref)]
    mods = dict(ref.named_modules())
    data = _labelled(ref, batch)
    outs = {}

    def keep(name):
        def hook(m, a, y):
            y.retain_grad()
            outs[name] = y

        return hook

    hs = [mods[n].register_forward_hook(keep(n)) for n in names]
    loss = ref(**data).loss
    loss.backward()
    for h in hs:
        h.remove()
    mask = data["attention_mask"].reshape(-1).bool()
    rows = {}
    for n in names:
        w, g, y = mods[n].weight.detach(), mods[n].weight.grad, outs[n]
        yr = y.detach().reshape(-1, y.shape[-1])[mask].reshape(-1)
        s = (y.detach() * y.grad).sum(1)  # (batch, out): sum over tokens
        rows[n] = {
            "weight_mean": w.mean().item(), "weight_std": w.std().item(), "weight_abs_mean": w.abs().mean().item(),
            "act_mean": yr.mean().item(), "act_std": yr.std().item(),
            "act_abs_mean": yr.abs().mean().item(), "act_abs_std": yr.abs().std().item(),
            "grad_mean": g.mean().item(), "grad_std": g.std().item(),
            "grad_abs_mean": g.abs().mean().item(), "grad_abs_std": g.abs().std().item(),
            "grad_norm": g.norm().item(), "rgn": (g.norm() / w.norm()).item(),
            "plain": (g * w).sum().item(), "snip": (g * w).abs().sum().item(),
            "fisher": (w.numel() // s.shape[-1]) * (0.5 * s.pow(2).mean(0)).sum().item(),
        }
    # grasp: H g by central finite differences of the gradient along g (float64), an independent route.
    params = [mods[n].weight for n in names]
    g0 = [p.grad.detach().clone() for p in params]

    def grads_at(step):
        with torch.no_grad():
            for p, d in zip(params, g0):
                p.add_(d, alpha=step)
        for p in ref.parameters():
            p.grad = None
        ref(**data).loss.backward()
        out = [p.grad.detach().clone() for p in params]
        with torch.no_grad():
            for p, d in zip(params, g0):
                p.sub_(d, alpha=step)
        return out

    eps = 1e-4
    plus, minus = grads_at(eps), grads_at(-eps)
    for n, p, gp, gm in zip(names, params, plus, minus):
        hg = (gp - gm) / (2 * eps)
        rows[n]["grasp"] = -(p.detach() * hg).sum().item()
    # synflow: all-positive copy, all-ones embeddings, batch of one
    syn = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in syn.parameters():
            p.abs_()
    hidden = syn.get_input_embeddings().weight.shape[-1]
    T = batch["input_ids"].shape[1]
    kw = {"use_cache": False} if not isinstance(syn, transformers.BertForSequenceClassification) else {}
    syn(inputs_embeds=torch.ones(1, T, hidden, dtype=torch.double), attention_mask=torch.ones(1, T), **kw).logits.sum().backward()
    smods = dict(syn.named_modules())
    for n in names:
        rows[n]["synflow"] = (smods[n].weight * smods[n].weight.grad).abs().sum().item()
    return rows


def _close(a, b, rel, abs_=1e-9):
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


@pytest.mark.parametrize("make", [tiny_llama, tiny_bert_cls, tiny_gpt2], ids=["llama", "bert", "gpt2"])
def test_every_metric_matches_naive_reference(make):
    model = make()
    batch = _labelled(model, token_batch())
    result = probe(model, batch, metrics="all")
    ref = naive_reference(model, batch)
    df = result.to_pandas().set_index("name")
    assert list(df.index) == list(ref)
    checked = 0
    for name, cols in ref.items():
        for col, want in cols.items():
            got = df.loc[name, col]
            # fp32 probe vs float64 reference; grasp's reference is itself a finite difference.
            rel = 2e-3 if col == "grasp" else 2e-4
            # signed sums can cancel to ~0; judge them against the magnitude they cancel from
            scale_col = {"grad_mean": "grad_abs_mean", "act_mean": "act_abs_mean", "weight_mean": "weight_abs_mean",
                         "plain": "snip"}.get(col, col)
            scale = max(abs(ref[n][scale_col]) for n in ref) or 1.0
            assert _close(got, want, rel, abs_=1e-5 * scale), (name, col, got, want)
            checked += 1
    assert checked == len(ref) * 18  # every column of every metric
    # size-normalised forms are the sums over the number of entries
    for t in result.layers:
        row = df.loc[t["name"]]
        n = t["in_features"] * t["out_features"]
        assert _close(row["snip_mean"], row["snip"] / n, 1e-9)
        assert _close(row["fisher_mean"], row["fisher"] / n, 1e-9)
        assert _close(row["grad_norm_mean"], row["grad_norm"] / math.sqrt(n), 1e-9)


def test_causal_lm_without_labels_uses_its_inputs():
    model = tiny_llama()
    batch = token_batch()
    r = probe(model, batch, metrics=["snip"])
    want = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss.item()
    assert _close(r.meta["loss"], want, 1e-6)


def test_multiple_choice_batch():
    model = transformers.BertForMultipleChoice(tiny_bert_cfg())
    ids = torch.randint(3, 1000, (2, 3, 10))
    mask = torch.ones_like(ids)
    mask[:, :, 8:] = 0
    r = probe(model, {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2])}, metrics=["activation", "snip"])
    assert len(r) == 12 and not r.nonfinite
    # activation statistics exclude the padded positions: compare one layer by hand
    outs = {}
    m = model.bert.encoder.layer[0].attention.self.query
    h = m.register_forward_hook(lambda mod, a, y: outs.setdefault("y", y.detach()))
    model.eval()
    model(input_ids=ids, attention_mask=mask)
    h.remove()
    y = outs["y"].reshape(-1, outs["y"].shape[-1])[mask.reshape(-1).bool()]
    assert _close(r.values["act_mean"][0], y.mean().item(), 1e-4, 1e-7)


# ----------------------------------------------------------------------------------------------- restoration
def _bits(model):
    return {k: v.detach().clone().view(torch.int32 if v.dtype == torch.float32 else torch.int16)
            for k, v in model.state_dict().items() if v.is_floating_point()}


def _snapshot(model):
    return {
        "bits": _bits(model),
        "flags": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
    }


def _assert_restored(model, snap):
    now = _bits(model)
    assert now.keys() == snap["bits"].keys()
    for k in now:
        assert torch.equal(now[k], snap["bits"][k]), f"{k} changed"
    assert [p.requires_grad for p in model.parameters()] == snap["flags"]
    for p, g in zip(model.parameters(), snap["grads"]):
        assert (p.grad is None) == (g is None)
        if g is not None:
            assert torch.equal(p.grad, g)
    assert [m.training for m in model.modules()] == snap["modes"]
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    for p in model.parameters():
        assert not getattr(p, "_post_accumulate_grad_hooks", None)
        assert not p._backward_hooks


def _messy(model):
    """A model in an awkward state: mixed flags, stale grads, mixed modes, a -0.0 weight."""
    model.train()
    list(model.modules())[3].eval()
    params = list(model.parameters())
    params[1].requires_grad_(False)
    params[2].grad = torch.randn_like(params[2])
    with torch.no_grad():
        find_targets(model)[0].weight.view(-1)[0] = -0.0
    return model


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_probe_leaves_model_bit_identical(make):
    model = _messy(make())
    snap = _snapshot(model)
    probe(model, token_batch(), metrics="all")
    _assert_restored(model, snap)


def test_probe_restores_model_when_a_metric_raises():
    @register_metric("exploding_test_metric", source="grad", columns=("boom",), group="backward")
    def boom(w, g):
        raise RuntimeError("metric failed on purpose")

    try:
        model = _messy(tiny_llama())
        snap = _snapshot(model)
        with pytest.raises(RuntimeError, match="on purpose"):
            probe(model, token_batch(), metrics=["snip", "synflow", "exploding_test_metric"])
        _assert_restored(model, snap)
    finally:
        METRICS.pop("exploding_test_metric")


def test_probe_restores_when_synflow_pass_fails():
    model = _messy(tiny_llama())
    snap = _snapshot(model)
    calls = {"n": 0}

    def fail_in_synflow(mod, args, kwargs):
        if "inputs_embeds" in kwargs and kwargs["inputs_embeds"] is not None:
            calls["n"] += 1
            raise RuntimeError("synflow forward failed")

    h = model.register_forward_pre_hook(fail_in_synflow, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="synflow forward failed"):
            probe(model, token_batch(), metrics=["synflow"])
    finally:
        h.remove()
    assert calls["n"] == 1
    _assert_restored(model, snap)  # signs flipped by synflow are back


def test_bf16_probe_is_close_to_fp32_and_leaves_weights_alone():
    model = tiny_llama()
    batch = token_batch()
    r32 = probe(model, batch, metrics=["snip", "activation", "fisher"])
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    snap = _snapshot(m16)
    r16 = probe(m16, batch, metrics=["snip", "activation", "fisher"])
    _assert_restored(m16, snap)
    assert next(m16.parameters()).dtype == torch.bfloat16
    for col in ("snip", "act_abs_mean", "fisher"):
        a, b = torch.tensor(r32.values[col]), torch.tensor(r16.values[col])
        assert torch.isfinite(b).all()
        assert torch.allclose(a, b, rtol=0.1, atol=1e-3 * a.abs().max().item()), col


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_bert_cls], ids=["gpt2", "bert"])
def test_bf16_synflow_is_the_fp32_synflow_of_the_same_weights(make):
    """bf16 rounding, magnified by LayerNorm of the all-ones activations, made synflow several times off: the pass
    now runs in fp32 on copies, so it equals the fp32 value of the bf16-rounded weights, and the bf16 model (its
    dtype and bits) is given back untouched."""
    torch.manual_seed(0)
    m16 = _messy(make()).to(torch.bfloat16)
    batch = _labelled(m16, token_batch())
    snap = _snapshot(m16)
    got = torch.tensor(probe(m16, batch, metrics=["synflow"]).values["synflow"])
    _assert_restored(m16, snap)
    assert all(p.dtype == torch.bfloat16 for p in m16.parameters())
    want = torch.tensor(probe(copy.deepcopy(m16).float(), batch, metrics=["synflow"]).values["synflow"])
    assert torch.allclose(got, want, rtol=1e-4, atol=0.0)


def test_4bit_synflow_runs_every_4bit_layer_on_abs_weights_whichever_targets_are_probed():
    pytest.importorskip("bitsandbytes")
    from zest_hf.models import quantize_projections_4bit

    torch.manual_seed(0)
    model, _ = quantize_projections_4bit(tiny_llama())
    batch = token_batch()
    some = ["self_attn.v_proj", "mlp.up_proj"]
    alone = probe(model, batch, metrics=["synflow"], target_modules=some).to_pandas().set_index("name")["synflow"]
    every = probe(model, batch, metrics=["synflow"]).to_pandas().set_index("name")["synflow"]
    assert len(alone) == 4
    for n in alone.index:
        assert _close(alone[n], every[n], 1e-5), n


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_an_encoder_decoder_is_probed_and_given_back(arch):
    """Its encoder looks tokens up in its own module sharing the input-embedding table (``shared`` itself is never
    called), and synflow feeds the decoder the all-ones input too."""
    torch.manual_seed(0)
    if arch == "t5":
        model = transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=1000, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, decoder_start_token_id=0))
    else:
        model = transformers.BartForConditionalGeneration(transformers.BartConfig(
            vocab_size=1000, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64))
    model = _messy(model)
    batch = token_batch()
    batch["labels"] = batch["input_ids"][:, :5].clone()
    snap = _snapshot(model)
    res = probe(model, batch).to_pandas().set_index("name")
    _assert_restored(model, snap)
    encoder = [n for n in res.index if ".encoder." in f".{n}"]
    decoder = [n for n in res.index if ".decoder." in f".{n}"]
    assert encoder and decoder
    for col in ("snip", "fisher", "synflow"):
        assert res[col].map(math.isfinite).all(), col
        assert (res.loc[encoder, col] > 0).any() and (res.loc[decoder, col] > 0).any(), col


def test_under_a_callers_autocast_the_probe_runs_in_full_precision_and_the_next_forward_is_untouched():
    """A pending selection is made inside a Trainer's bf16 step: the probe must give its fp32 metrics, and the
    step's own forward, in the same autocast region, must not reuse casts of weights the probe borrowed (synflow
    makes them |W| for its pass)."""
    torch.manual_seed(0)
    model = tiny_llama()
    batch = _labelled(model, token_batch())
    plain = probe(model, batch, metrics=["snip", "synflow"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fresh = model(**batch).loss.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = probe(model, batch, metrics=["snip", "synflow"])  # as in a forward pre-hook of the first step
        after = model(**batch).loss.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = model(**batch).loss.item()  # autocast now holds bf16 casts of the weights
        again = probe(model, batch, metrics=["snip", "synflow"])
        later = model(**batch).loss.item()
    assert after == fresh == first == later
    for col in ("snip", "synflow"):
        assert inside.values[col] == plain.values[col] == again.values[col], col
    assert torch.is_autocast_cpu_enabled() is False


def test_a_mixed_dtype_model_is_probed_under_the_callers_autocast_and_given_back():
    """A bf16 body under an fp32 head runs only under autocast (as a Trainer's bf16 step runs it): the probe keeps
    the caller's autocast for such a model, and its synflow pass (every tensor fp32 by then) runs without."""
    torch.manual_seed(0)
    model = tiny_bert_cls().to(torch.bfloat16).eval()  # eval: no dropout, so two forwards can be compared
    model.classifier.float()
    batch = _labelled(model, token_batch())
    snap = _snapshot(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = probe(model, batch, metrics=["snip", "fisher", "synflow"])
        after = model(**batch).loss.item()
    _assert_restored(model, snap)
    assert model.classifier.weight.dtype == torch.float32 and model.bert.encoder.layer[0].output.dense.weight.dtype \
        == torch.bfloat16
    for col in ("snip", "fisher", "synflow"):
        assert all(math.isfinite(v) and v > 0 for v in res.values[col]), col
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(**batch).loss.item() == after


# ------------------------------------------------------------------------------------------------ bad inputs
def _forward_counter(model):
    calls = {"n": 0}
    model.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    return calls


def test_classifier_batch_without_labels_fails_before_any_pass():
    model = tiny_bert_cls()
    calls = _forward_counter(model)
    with pytest.raises(MissingLabelsError, match="labels"):
        probe(model, token_batch())
    assert calls["n"] == 0


def test_all_ignored_labels_fail_before_any_pass():
    model = tiny_llama()
    calls = _forward_counter(model)
    b = token_batch()
    b["labels"] = torch.full_like(b["input_ids"], -100)
    with pytest.raises(MissingLabelsError, match="-100"):
        probe(model, b)
    assert calls["n"] == 0


def test_model_without_projections_and_unknown_metric():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(zest_hf.NoTargetsError, match="target_modules"):
        probe(net, {"input_ids": torch.ones(1, 4)})
    with pytest.raises(ValueError, match="unknown metric 'snipp'"):
        probe(tiny_llama(), token_batch(), metrics=["snipp"])


def test_nan_loss_is_an_error_and_model_is_restored():
    model = tiny_llama()
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    snap = _snapshot(model)
    with pytest.raises(NonFiniteError, match="loss"):
        probe(model, token_batch(), metrics=["snip"])
    _assert_restored(model, snap)


def test_nan_gradient_is_an_error_naming_layers():
    model = tiny_llama()
    target = model.model.layers[1].self_attn.o_proj

    def poison(mod, args, y):
        y.register_hook(lambda g: g * float("nan"))

    h = target.register_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteError, match="gradient is NaN") as e:
            probe(model, token_batch(), metrics=["snip"])
    finally:
        h.remove()
    assert "model.layers" in str(e.value)


def test_nonfinite_metric_is_reported_and_refuses_to_rank():
    r = ProbeResult(layers=[{"name": "a", "type": "q", "block": 0}, {"name": "b", "type": "q", "block": 1}],
                    values={"x": [1.0, float("nan")], "y": [2.0, 3.0]}, metrics=["t"], nonfinite=[("b", "x")])
    with pytest.raises(NonFiniteError, match="'x'"):
        r.ranking("x")
    assert r.ranking("y") == ["b", "a"]
    assert r.ranking("y", descending=False) == ["a", "b"]


# --------------------------------------------------------------------------------------------- serialisation
def test_json_round_trip_is_exact_including_nonfinite(tmp_path):
    r = probe(tiny_gpt2(), token_batch(), metrics="default")
    r.values["snip"][1] = float("inf")
    r.nonfinite.append((r.names[1], "snip"))
    path = tmp_path / "probe.json"
    r.to_json(path)
    back = ProbeResult.from_json(path)
    assert back.layers == r.layers and back.metrics == r.metrics and back.nonfinite == r.nonfinite
    assert back.values.keys() == r.values.keys()
    for k in r.values:
        assert [str(v) for v in back.values[k]] == [str(v) for v in r.values[k]]
    assert back.to_pandas().shape == r.to_pandas().shape
    assert "zest_hf" in back.meta["versions"]
    # a probe without a data pass (static metrics only) serialises too: no loss to report
    static = probe(tiny_gpt2(), token_batch(), metrics=["weight"])
    assert static.meta["loss"] is None
    assert ProbeResult.from_json(static.to_json()).values == static.values
    with pytest.raises(ValueError, match="not a zest_hf probe result"):
        ProbeResult.from_dict({"format": "other"})


# ------------------------------------------------------------------- the signals not in "default", by hand
def _group_gradients(model, batch, groups=4):
    """Each micro-batch's part of dL/dW, the slow way: per-row losses of one float64 forward, each group's share of
    the batch loss differentiated on its own (no hooks)."""
    ref = copy.deepcopy(model).double().eval()
    names = [t.name for t in find_targets(ref)]
    weights = [ref.get_submodule(n).weight for n in names]
    data = {k: v for k, v in batch.items() if k != "labels"}
    logits = ref(**data).logits
    labels = batch["labels"]
    if logits.dim() == 3:  # causal LM: mean over the labelled next tokens of the whole batch
        per_tok = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:],
                                                    ignore_index=-100, reduction="none")
        per_row, count = per_tok.sum(1), (labels[:, 1:] != -100).sum()
    else:
        per_row, count = torch.nn.functional.cross_entropy(logits, labels, reduction="none"), labels.numel()
    rows = labels.shape[0] // groups
    parts = []
    for m in range(groups):
        share = per_row[m * rows:(m + 1) * rows].sum() / count
        gs = torch.autograd.grad(share, weights, retain_graph=True)
        parts.append({n: (g.T if type(ref.get_submodule(n)).__name__ == "Conv1D" else g) for n, g in zip(names, gs)})
    return names, parts, {n: w.detach() for n, w in zip(names, weights)}


@pytest.mark.parametrize("make", [tiny_llama, tiny_bert_cls, tiny_gpt2], ids=["llama", "bert", "gpt2"])
def test_spectral_grad_snr_and_two_halves_match_naive_references(make):
    import numpy as np

    model = make()
    batch = token_batch(batch=8)
    if isinstance(model, transformers.BertForSequenceClassification):
        batch["labels"] = torch.tensor([0, 1, 2, 1, 2, 0, 0, 1])
    else:
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    got = probe(model, batch, metrics=["spectral", "grad_snr", "two_halves", "grad_norm"]).to_pandas().set_index("name")
    names, parts, weights = _group_gradients(model, batch)
    for n in names:
        stack = torch.stack([p[n] for p in parts])
        g = stack.sum(0)
        assert _close(got.loc[n, "grad_norm"], g.norm().item(), 2e-4)  # the parts sum to the batch gradient
        snr = (stack.mean(0) ** 2).sum() / stack.var(0, unbiased=True).sum()
        assert _close(got.loc[n, "grad_snr"], snr.item(), 2e-3), (n, "grad_snr")
        a, b = stack[:2].sum(0), stack[2:].sum(0)
        cross = 0.5 * ((b * a.sign()).sum() + (a * b.sign()).sum())
        scale = max(abs(cross.item()), 0.5 * (a.abs().sum() + b.abs().sum()).item())
        assert _close(got.loc[n, "gen_sign"], cross.item(), 2e-3, abs_=1e-4 * scale), (n, "gen_sign")
        assert _close(got.loc[n, "gen_agree"], (cross / (0.5 * (a.abs().sum() + b.abs().sum()))).item(), 2e-3,
                      abs_=1e-4), (n, "gen_agree")
        # spectral statistics from numpy's float64 SVD
        w = weights[n].numpy()
        w = w.T if type(model.get_submodule(n)).__name__ == "Conv1D" else w
        s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
        sigma = (np.quantile(s, 0.75) - np.quantile(s, 0.25)) / 1.349
        edge = sigma * (1 + np.sqrt(min(w.shape) / max(w.shape)))
        want_snr = s[s > edge].sum() / s[s <= edge].sum() / s[0]
        assert _close(got.loc[n, "spectral_snr"], want_snr, 1e-3), (n, "spectral_snr")
        assert _close(got.loc[n, "log_cond"], np.log10(s[0] / s[-1]), 1e-3), (n, "log_cond")
        lam = np.sort(s ** 2)
        tail = np.log(lam[len(lam) // 2:])
        assert _close(got.loc[n, "alpha_hill"], 1 + len(tail) / (tail - tail[0]).sum(), 1e-3), (n, "alpha_hill")


def test_the_new_signals_are_not_in_the_default_probe_and_the_default_columns_are_unchanged():
    from zest_hf.metrics import default_columns

    assert not {"spectral_snr", "grad_snr", "gen_sign", "grasp"} & set(default_columns())
    assert {"spectral_snr", "log_cond", "alpha_hill", "grad_snr", "gen_sign", "gen_agree"} <= set(
        probe(tiny_llama(), token_batch(), metrics="all").values)


# ----------------------------------------------------------------------------------------------- 4-bit bases
def test_a_4bit_model_probes_like_its_dequantised_twin_and_is_left_as_it_was():
    """Every default metric from what a 4-bit layer has: weight statistics from the dequantised weight, gradients
    from the layer's input and output gradients, synflow through |dequantised weight|. Against the same function in
    full precision (projections holding the dequantised values) every column agrees; grasp is refused by name."""
    pytest.importorskip("bitsandbytes")
    from zest_hf.models import quantize_projections_4bit

    torch.manual_seed(0)
    original = tiny_llama()
    model, twin = quantize_projections_4bit(copy.deepcopy(original))
    batch = token_batch()
    packed = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    got = probe(model, batch, metrics="default").to_pandas().set_index("name")
    want = probe(twin, batch, metrics="default").to_pandas().set_index("name")
    assert list(got.index) == list(want.index) and len(got) == 14
    for col in want.columns:
        if col in ("type", "block", "depth", "num_params", "in_features", "out_features"):
            continue
        scale = want[col].abs().max() or 1.0
        for n in want.index:
            assert _close(got.loc[n, col], want.loc[n, col], 1e-3, abs_=1e-4 * scale), (n, col)
    assert all(torch.equal(p, packed[n][0]) and p.requires_grad == packed[n][1] for n, p in model.named_parameters())
    assert not any(m._forward_hooks for m in model.modules()) and "forward" not in vars(model.model.layers[0].mlp.up_proj)
    with pytest.raises(ValueError, match="grasp"):
        probe(model, batch, metrics="all")


def test_moments_stay_exact_where_a_one_pass_formula_cancels():
    from zest_hf.metrics import ActStats
    from zest_hf.metrics.base import moments, std_mean

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g) * 0.01 + 100.0  # mean 1e4 standard deviations from 0
    want_var, want_mean = torch.var_mean(x.double(), correction=0)
    mean, m2 = moments(x)
    assert abs(mean.item() - want_mean.item()) < 1e-5
    assert abs(m2.item() / x.numel() / want_var.item() - 1) < 1e-3  # E[x^2] - E[x]^2 in fp32 is off by ~100%
    std, mean_f = std_mean(x[:7])
    want_std, _ = torch.std_mean(x[:7].double())
    assert abs(std / want_std.item() - 1) < 1e-3
    s = ActStats()
    for part in x.split(60_000):  # merged across calls as one
        s.update(part)
    assert abs(s.std() / x.double().std().item() - 1) < 1e-3
    assert abs(s.abs_mean - x.double().abs().mean().item()) < 1e-5


def test_all_finite_check_survives_an_overflowing_sum():
    from zest_hf.probe.run import _all_finite

    huge = torch.full((4,), 3e38)  # finite entries whose fp32 sum is inf
    assert _all_finite(huge)
    assert not _all_finite(torch.tensor([1.0, float("inf")]))
    assert not _all_finite(torch.tensor([1.0, float("nan")]))
    assert not _all_finite(torch.tensor([float("inf"), -float("inf")]))

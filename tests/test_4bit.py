"""ZEST over a 4-bit (bitsandbytes NF4) base: the selection ranks like the full-precision one, and ZEST-LoRA on the
selection is the QLoRA flow with ZEST choosing the modules. (The probe's per-metric agreement with the dequantised
twin is in test_probe.py.)"""

import copy

import peft
import pytest
import torch
from helpers import tiny_gpt2, tiny_llama, token_batch

import zest_hf
from zest_hf.models import quantize_projections_4bit
from zest_hf.selection.rank import rank

pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_4bit_probe_ranks_like_the_full_precision_probe(seed):
    from scipy.stats import kendalltau

    torch.manual_seed(seed)
    original = tiny_llama(num_hidden_layers=4)
    quantized, _ = quantize_projections_4bit(copy.deepcopy(original))
    batch = token_batch(batch=8, seed=seed)
    full = {r["name"]: r["score"] for r in rank(original, batch).layers}  # the bundled predictor
    four = {r["name"]: r["score"] for r in rank(quantized, batch).layers}
    tau = kendalltau([full[n] for n in full], [four[n] for n in full])[0]
    print(f"4-bit vs full-precision ranking, seed {seed}: Kendall tau {tau:.3f}")
    assert tau > 0.85, tau  # 0.94-0.98 over these seeds: NF4 rounding reorders only near-ties


def test_zest_lora_over_a_4bit_base_trains_only_the_selected_lora_and_leaves_the_base_as_it_was():
    torch.manual_seed(0)
    model, _ = quantize_projections_4bit(tiny_llama())
    batch = token_batch()
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    cfg = zest_hf.select(model, batch, zest_hf.ZestConfig(top_k=3, mode="lora", r=4))
    packed = {n: p.detach().clone() for n, p in model.named_parameters()}
    pm = peft.get_peft_model(model, cfg)
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].removeprefix("base_model.model.") for n in trainable} == set(cfg.selected_modules)
    opt = torch.optim.SGD([p for p in pm.parameters() if p.requires_grad], lr=0.5)
    before = pm(**batch).loss.item()
    for _ in range(5):
        pm(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    assert pm(**batch).loss.item() < before  # it learns
    base = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p
            for n, p in pm.named_parameters() if "lora_" not in n}
    assert all(torch.equal(base[n], p) for n, p in packed.items())  # the 4-bit base (and everything else) untouched


def test_gpt2_conv1d_projections_are_quantised_as_the_linear_they_compute():
    """Conv1D stores its weight as (in, out); the Linear4bit holds it transposed, and the twin stays a Conv1D."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    original = tiny_gpt2().eval()
    quantized, twin = quantize_projections_4bit(copy.deepcopy(original))
    names = [t.name for t in zest_hf.find_targets(original)]
    assert all(isinstance(quantized.get_submodule(n), bnb.nn.Linear4bit) for n in names)
    assert all(isinstance(twin.get_submodule(n), Conv1D) for n in names)
    for n in names:  # the twin holds the dequantised (out, in) weight, stored back as (in, out)
        w, dq = original.get_submodule(n).weight.detach(), twin.get_submodule(n).weight
        packed, state = bnbf.quantize_4bit(w.t().contiguous(), compress_statistics=True, quant_type="nf4")
        assert torch.equal(dq, bnbf.dequantize_4bit(packed, state).t()) and not torch.equal(dq, w)
    batch = token_batch()
    with torch.no_grad():
        got, same, want = quantized(**batch).logits, twin.eval()(**batch).logits, original(**batch).logits
    torch.testing.assert_close(got, same, rtol=1e-4, atol=1e-4)  # the same function as its twin
    print("GPT-2 4-bit vs original logits, mean |diff| / mean |logit|:",
          ((got - want).abs().mean() / want.abs().mean()).item())
    # and close to the original (0.08 here: bitsandbytes' CPU dequantisation is coarser when a weight's last
    # dimension is not a multiple of the block size, as this tiny model's 32 is)
    assert (got - want).abs().mean() < 0.2 * want.abs().mean()

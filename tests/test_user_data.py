"""Your own data (zest_hf.tasks.user): files and datasets in three shapes, probe batches built as SFTTrainer builds
its training batches, and every bad input refused with a message that names it."""

import json

import datasets
import pytest
import transformers

from zest_hf import ZestConfig
from zest_hf.cli import main
from zest_hf.tasks.user import _encode, detect_shape, load_user_dataset, sft_batch, user_task

CHAT = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant> {% endif %}")


@pytest.fixture
def tok(tiny_llama_dir):
    t = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir)
    t.eos_token = t.sep_token
    t.chat_template = CHAT
    return t


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pc_rows(n=12):
    return [{"prompt": f"what is {i} plus one?", "completion": f" it is {i + 1}"} for i in range(n)]


def _chats(n=12):
    return [{"messages": [{"role": "user", "content": f"count to {i}"},
                          {"role": "assistant", "content": f"one to {i}"},
                          {"role": "user", "content": "thanks"},
                          {"role": "assistant", "content": "you are welcome"}]} for i in range(n)]


def test_every_file_type_loads_and_the_shape_is_found(tmp_path):
    rows = _pc_rows()
    _jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_csv(tmp_path / "d.csv")
    datasets.Dataset.from_list(rows).to_parquet(tmp_path / "d.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "saved")
    for src in ("d.jsonl", "d.json", "d.csv", "d.parquet", "saved"):
        data = load_user_dataset(tmp_path / src)
        assert len(data) == len(rows) and detect_shape(data)[0] == "prompt_completion", src


def test_prompt_completion_batch_matches_sft_trainers_own_tokenisation(tmp_path, tok, tiny_llama_dir):
    trl = pytest.importorskip("trl")
    data = datasets.Dataset.from_list(_pc_rows())
    shape, cols = detect_shape(data)
    trainer = trl.SFTTrainer(model=transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                             args=trl.SFTConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_length=64),
                             train_dataset=data, processing_class=tok)
    for i in range(len(data)):
        ids, mask = _encode(data[i], shape, cols, tok)
        theirs = trainer.train_dataset[i]
        assert ids == theirs["input_ids"] and [t if m else -100 for t, m in zip(ids, mask)] == theirs["labels"]


def test_conversations_put_the_loss_on_assistant_turns_only(tok):
    data = datasets.Dataset.from_list(_chats())
    shape, cols = detect_shape(data)
    batch = sft_batch(data, tok, shape=shape, columns=cols, batch_size=4, max_length=64, seed=0)
    for row, labels in zip(batch["input_ids"], batch["labels"]):
        kept = tok.decode(row[labels != -100])
        assert "welcome" in kept and "one to" in kept
        assert "count" not in kept and "thanks" not in kept and "user" not in kept


def test_classification_data_becomes_a_task_with_its_classes(tmp_path):
    rows = [{"review": f"text {i}", "stars": ["bad", "good", "ok"][i % 3]} for i in range(30)]
    datasets.Dataset.from_list(rows).to_csv(tmp_path / "r.csv")
    task = user_task(str(tmp_path / "r.csv"), columns={"text": "review", "label": "stars"})
    assert task.label_names == ["bad", "good", "ok"] and sum(len(s) for s in task.splits.values()) == 30


def test_zest_select_takes_your_file(tmp_path, tiny_llama_dir):
    path = _jsonl(tmp_path / "mine.jsonl", [{"q": r["prompt"], "a": r["completion"]} for r in _pc_rows()])
    out = tmp_path / "cfg.json"
    assert main(["select", "--model", str(tiny_llama_dir), "--task", str(path), "--columns",
                 "prompt=q,completion=a", "--top-k", "2", "--batch-size", "4", "--max-length", "32",
                 "--predictor", "metric:grad_norm", "--config-out", str(out), "--quiet"]) == 0
    cfg = ZestConfig.from_json(out)
    assert len(cfg.selected_modules) == 2 and cfg.selection_info["head"] == "causal_lm"


# ---------------------------------------------------------------------------------------------------- bad input
def test_a_column_that_does_not_exist_names_the_columns_there_are(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", _pc_rows())
    with pytest.raises(ValueError, match=r"no column 'question'; its columns: \['prompt', 'completion'\]"):
        detect_shape(load_user_dataset(path), {"prompt": "question"}, str(path))
    with pytest.raises(ValueError, match="cannot tell the shape .* columns \\['x'\\]"):
        detect_shape(datasets.Dataset.from_list([{"x": 1}]))


def test_a_conversation_without_an_assistant_turn_is_refused(tok):
    data = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(ValueError, match="no assistant turn"):
        sft_batch(data, tok, shape="messages", columns=detect_shape(data)[1], batch_size=1)


def test_a_prompt_that_leaves_no_completion_token_is_refused(tok):
    data = datasets.Dataset.from_list([{"prompt": "word " * 100, "completion": " end"}])
    with pytest.raises(ValueError, match="fills all max_length=16 tokens"):
        sft_batch(data, tok, shape="prompt_completion", columns=detect_shape(data)[1], batch_size=1, max_length=16)


def test_labels_outside_the_classes_are_refused(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"text": f"t{i}", "label": ["neg", "pos", "neutral"][i % 3]}
                                         for i in range(9)])
    with pytest.raises(ValueError, match=r"labels \['neutral'\] outside the classes \['neg', 'pos'\]"):
        user_task(str(path), label_names=["neg", "pos"])


def test_an_empty_split_and_an_unknown_split_are_refused(tmp_path):
    (tmp_path / "header_only.csv").write_text("prompt,completion\n")
    with pytest.raises(ValueError, match="split 'train' of .*header_only.csv is empty"):
        load_user_dataset(tmp_path / "header_only.csv")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(_pc_rows()),
                          "test": datasets.Dataset.from_list(_pc_rows())}).save_to_disk(tmp_path / "s")
    with pytest.raises(ValueError, match=r"has no split 'dev'; its splits: \['test', 'train'\]"):
        load_user_dataset(tmp_path / "s", "dev")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="reads .jsonl, .json, .csv, .parquet"):
        load_user_dataset(tmp_path / "d.txt")


def test_an_empty_file_is_refused_like_a_header_only_one(tmp_path):
    for name, content in (("e.jsonl", ""), ("e.csv", ""), ("blank.jsonl", "\n\n"), ("e.json", "[]")):
        (tmp_path / name).write_text(content)
        with pytest.raises(ValueError, match=f"split 'train' of .*{name} is empty: nothing to probe"):
            load_user_dataset(tmp_path / name)


def test_a_mistyped_file_name_is_no_such_file_not_a_hub_lookup(tmp_path, tiny_dir, capsys):
    path = tmp_path / "missing.jsonl"
    with pytest.raises(FileNotFoundError, match="no such file: .*missing.jsonl"):
        load_user_dataset(path)
    assert main(["select", "--model", str(tiny_dir), "--task", str(path), "--top-k", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "missing.jsonl" in err and "Hub" not in err


def test_the_roles_a_column_mapping_names_decide_the_shape():
    chat = _chats(1)[0]["messages"]
    data = datasets.Dataset.from_list([{"review": f"r{i}", "stars": i % 2, "messages": chat, "prompt": "p",
                                        "completion": "c"} for i in range(4)])
    assert detect_shape(data)[0] == "messages"  # no mapping: the first complete shape
    assert detect_shape(data, {"text": "review", "label": "stars"})[0] == "classification"
    assert detect_shape(data, {"label": "stars", "text": "review"})[1]["text"] == "review"
    assert detect_shape(data, {"completion": "review"})[0] == "prompt_completion"
    with pytest.raises(ValueError, match=r"makes d classification data, which also needs text \(column 'text'\)"):
        detect_shape(data, {"label": "stars"}, "d")
    with pytest.raises(ValueError, match="names roles of different shapes"):
        detect_shape(data, {"text": "review", "prompt": "prompt"})


def test_a_classification_mapping_wins_over_a_messages_column(tmp_path):
    chat = _chats(1)[0]["messages"]
    path = _jsonl(tmp_path / "r.jsonl", [{"review": f"text {i}", "stars": ["bad", "good"][i % 2], "messages": chat}
                                         for i in range(20)])
    task = user_task(str(path), columns={"text": "review", "label": "stars"})
    assert task.label_names == ["bad", "good"]


def test_missing_labels_are_refused_naming_the_rows(tmp_path):
    path = _jsonl(tmp_path / "n.jsonl", [{"text": f"t{i}", "label": [0, 1, None][i % 3]} for i in range(20)])
    with pytest.raises(ValueError, match=r"column 'label' of .*n.jsonl is empty \(null\) in 6 rows: "
                                         r"\[2, 5, 8, 11, 14\] and 1 more"):
        user_task(str(path))
    (tmp_path / "gap.csv").write_text("text,label\na,0\nb,1\nc,\nd,1\n")
    with pytest.raises(ValueError, match=r"column 'label' of .*gap.csv is empty \(null\) in 1 rows: \[2\]"):
        user_task(str(tmp_path / "gap.csv"))


def test_conversations_stored_as_json_text_in_a_csv(tmp_path, tok):
    rows = _chats(6)
    datasets.Dataset.from_list([{"messages": json.dumps(r["messages"])} for r in rows]).to_csv(tmp_path / "c.csv")
    data = load_user_dataset(tmp_path / "c.csv")
    shape, cols = detect_shape(data)
    got = sft_batch(data, tok, shape=shape, columns=cols, batch_size=6, max_length=64)
    want = sft_batch(datasets.Dataset.from_list(rows), tok, shape=shape, columns=cols, batch_size=6, max_length=64)
    assert all(got[k].equal(want[k]) for k in want)
    for bad in ("not json", json.dumps([{"role": "user"}]), json.dumps("hi")):
        cells = [json.dumps(r["messages"]) for r in rows[:3]] + [bad]
        data = datasets.Dataset.from_list([{"messages": c} for c in cells])
        with pytest.raises(ValueError, match="example 3: column 'messages' "):
            sft_batch(data, tok, shape="messages", columns=cols, batch_size=4)


def test_a_null_completion_is_refused_naming_the_example(tok):
    rows = _pc_rows(4)
    rows[1]["completion"] = None
    data = datasets.Dataset.from_list(rows)
    with pytest.raises(ValueError, match=r"example 1: column 'completion' is empty \(null\)"):
        sft_batch(data, tok, shape="prompt_completion", columns=detect_shape(data)[1], batch_size=4)

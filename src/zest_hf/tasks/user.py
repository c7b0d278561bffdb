"""Your own data: a local file (jsonl, json, csv, parquet), a directory ``datasets`` can load, or a ``datasets`` name,
in one of the three shapes people fine-tune on.

* ``"classification"``: a text column and a label column (class names or ids) -> a :class:`~zest_hf.tasks.Task`,
  split like the packaged tasks, so every model kind works (a classification head, or a decoder's LM head
  answering with the label name);
* ``"prompt_completion"``: prompt and completion columns, plain strings or conversations (lists of
  ``{"role", "content"}``);
* ``"messages"``: one conversation column, rendered with the tokenizer's chat template.

For the last two the probe batch is built as TRL's ``SFTTrainer`` builds its training batches: the sequence is the
tokenised prompt + completion (an EOS after a plain completion), truncated at ``max_length`` keeping the start, and
the loss is on the completion tokens only (``labels`` -100 elsewhere) or, for ``messages``, on the assistant turns
only. The shape is found from the column names (``messages``; ``prompt`` + ``completion``; ``text`` + ``label``)
or given by a column mapping.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import datasets
import numpy as np
import torch

from .tokenize import IGNORE_INDEX

__all__ = ["SHAPES", "COLUMN_ROLES", "load_user_dataset", "detect_shape", "user_task", "sft_batch"]

SHAPES = ("classification", "prompt_completion", "messages")
#: The roles a column mapping may name, and the column each takes by default.
COLUMN_ROLES = {"text": "text", "label": "label", "prompt": "prompt", "completion": "completion",
                "messages": "messages"}
_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
#: The columns each shape reads, by role.
_SHAPE_ROLES = {"messages": ("messages",), "prompt_completion": ("prompt", "completion"),
                "classification": ("text", "label")}


def _is_blank(path: Path) -> bool:
    """No bytes, or only whitespace: datasets fails on such a file with an error that does not say so."""
    size = path.stat().st_size
    return size == 0 or (size < 65536 and not path.read_bytes().strip())


def load_user_dataset(source: str | os.PathLike, split: str = "train") -> datasets.Dataset:
    """One split of a local file, a local dataset directory, or a ``datasets`` name.

    Raises:
        ValueError: an unsupported file type, a split that does not exist, or an empty split.
        FileNotFoundError: a path with a data file's extension that does not exist.
        FileNotFoundError / ConnectionError: a name ``datasets`` cannot find (offline: not in its cache).
    """
    source = os.fspath(source)
    path = Path(source).expanduser()
    if not path.exists() and path.suffix.lower() in (*_BUILDERS, ".txt"):
        # a mistyped file name would otherwise be looked up as a Hub dataset id
        raise FileNotFoundError(f"no such file: {source!r} (looked for {path.resolve()}); check the path")
    if path.is_file():
        builder = _BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"{path}: zest_hf reads {', '.join(_BUILDERS)} files; convert it, or load it with "
                             "datasets yourself")
        if split != "train":
            raise ValueError(f"{path} is one file, which datasets reads as the split 'train'; pass --split train")
        empty = f"split 'train' of {path} is empty: nothing to probe"
        if _is_blank(path):
            raise ValueError(empty)
        try:
            data = datasets.load_dataset(builder, data_files=str(path), split="train")
        except ValueError as e:
            if "no data" in str(e):  # datasets' words for a file without rows
                raise ValueError(empty) from None
            raise ValueError(f"{path} could not be read as {builder} ({e})") from None
        except datasets.exceptions.DatasetGenerationError as e:
            raise ValueError(f"{path} could not be read as {builder} ({e.__cause__ or e})") from None
    elif path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        data = datasets.load_from_disk(str(path))  # written by save_to_disk
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f"{path} has no split {split!r}; its splits: {sorted(data)}")
            data = data[split]
    else:
        try:
            data = datasets.load_dataset(str(path) if path.is_dir() else source, split=split)
        except ValueError as e:
            if "split" in str(e).lower():
                raise ValueError(f"{source} has no split {split!r} ({e})") from None
            raise
    if len(data) == 0:
        raise ValueError(f"split {split!r} of {source} is empty: nothing to probe")
    return data


def _column_map(data: datasets.Dataset, columns: Mapping[str, str] | None, source: str) -> dict[str, str]:
    columns = dict(columns or {})
    unknown_roles = sorted(set(columns) - set(COLUMN_ROLES))
    if unknown_roles:
        raise ValueError(f"unknown column roles {unknown_roles}; roles are {list(COLUMN_ROLES)} "
                         "(e.g. --columns text=review,label=stars)")
    missing = {role: col for role, col in columns.items() if col not in data.column_names}
    if missing:
        raise ValueError(f"{source} has no column {', '.join(repr(c) for c in missing.values())}; its columns: "
                         f"{data.column_names}")
    return {role: columns.get(role, default) for role, default in COLUMN_ROLES.items()}


def detect_shape(data: datasets.Dataset, columns: Mapping[str, str] | None = None,
                 source: str = "the dataset") -> tuple[str, dict[str, str]]:
    """``(shape, role -> column)`` from the columns there are and an optional mapping.

    The roles a mapping names decide the shape (``text=review,label=stars`` is classification even if there is also
    a ``messages`` column); without one, the first shape whose default columns are all there: ``messages``,
    ``prompt`` + ``completion``, ``text`` + ``label``.
    """
    cols = _column_map(data, columns, source)
    have = set(data.column_names)
    named = [shape for shape, roles in _SHAPE_ROLES.items() if set(roles) & set(columns or {})]
    if len(named) > 1:
        raise ValueError(f"the column mapping {dict(columns)} names roles of different shapes ({', '.join(named)}); "
                         "name the roles of one: messages; prompt + completion; or text + label")
    for shape in named or _SHAPE_ROLES:
        if all(cols[role] in have for role in _SHAPE_ROLES[shape]):
            return shape, cols
    if named:
        shape = named[0]
        lacking = [f"{role} (column {cols[role]!r})" for role in _SHAPE_ROLES[shape] if cols[role] not in have]
        raise ValueError(f"the column mapping makes {source} {shape} data, which also needs {', '.join(lacking)}; "
                         f"its columns: {data.column_names}. Map it too, e.g. --columns "
                         + ",".join(f"{role}=<column>" for role in _SHAPE_ROLES[shape]))
    raise ValueError(
        f"cannot tell the shape of {source} from its columns {data.column_names}: zest_hf reads a 'messages' "
        "column (conversations), 'prompt' + 'completion', or 'text' + 'label'. Name yours with "
        "--columns (e.g. --columns prompt=question,completion=answer)."
    )


def user_task(source: str, *, split: str = "train", columns: Mapping[str, str] | None = None,
              label_names: list[str] | None = None, split_seed: int = 0, max_examples: int | None = None,
              data: datasets.Dataset | None = None):
    """A classification :class:`~zest_hf.tasks.Task` from your data, split 80/10/10 by ``split_seed``.

    ``label_names``: the classes, in id order (a label outside them is an error); default: the sorted distinct
    labels (integer labels keep their ids). ``data``: the split, if already loaded.
    """
    from .base import RawTask, task_from_raw

    data = load_user_dataset(source, split) if data is None else data
    shape, cols = detect_shape(data, columns, source)
    if shape != "classification":
        raise ValueError(f"{source} is {shape} data, not classification (text + label)")
    raw_texts, raw_labels = list(data[cols["text"]]), list(data[cols["label"]])
    for column, values in ((cols["text"], raw_texts), (cols["label"], raw_labels)):
        _refuse_missing(values, column, source)
    texts = [str(t) for t in raw_texts]
    if label_names is None:
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw_labels):
            label_names = [str(i) for i in range(max(raw_labels) + 1)]
            raw_labels = [str(v) for v in raw_labels]
        else:
            label_names = sorted({str(v) for v in raw_labels})
    names = [str(n) for n in label_names]
    outside = sorted({str(v) for v in raw_labels} - set(names))
    if outside:
        raise ValueError(f"column {cols['label']!r} of {source} has labels {outside[:5]} outside the classes "
                         f"{names}")
    labels = [names.index(str(v)) for v in raw_labels]
    raw = RawTask("classification", texts, labels, label_names=names, source=f"user data: {source} [{split}]")
    return task_from_raw(raw, f"user:{source}", split_seed=split_seed, max_examples=max_examples)


def _refuse_missing(values: list, column: str, source: str) -> None:
    """A null (JSON null, an empty CSV cell) would otherwise become the text or the class ``'None'``."""
    rows = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and np.isnan(v))]
    if rows:
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        raise ValueError(f"column {column!r} of {source} is empty (null) in {len(rows)} rows: {rows[:5]}{more} "
                         "(counting from 0); fill them in or drop those rows")


def _conversation(cell, column: str) -> list[dict]:
    """A ``messages`` cell as a list of ``{"role", "content"}`` dicts; a CSV holds it as JSON text."""
    if isinstance(cell, str):
        try:
            cell = json.loads(cell)
        except json.JSONDecodeError as e:
            raise ValueError(f"column {column!r} holds text that is not JSON ({e}): {cell[:60]!r}; a conversation "
                             "is a list of {'role': ..., 'content': ...} messages") from None
    if not isinstance(cell, (list, tuple)) or not all(isinstance(m, Mapping) and "role" in m and "content" in m
                                                      for m in cell):
        raise ValueError(f"column {column!r} is not a conversation (a list of {{'role': ..., 'content': ...}} "
                         f"messages): {str(cell)[:80]}")
    return list(cell)


def _render(tokenizer, messages, **kw) -> list[int]:
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, **kw)
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _encode(row: Mapping, shape: str, cols: dict[str, str], tokenizer) -> tuple[list[int], list[int]]:
    """``(input_ids, loss mask)`` of one example, before truncation."""
    if shape == "messages":
        conv = _conversation(row[cols["messages"]], cols["messages"])
        if not any(m.get("role") == "assistant" for m in conv):
            raise ValueError(f"a conversation has no assistant turn, so it gives no loss: {conv[:2]}...; every "
                             "'messages' example needs at least one {'role': 'assistant', ...} message")
        ids = _render(tokenizer, conv)
        mask = [0] * len(ids)
        for i, m in enumerate(conv):
            if m.get("role") != "assistant":
                continue
            start = _common_prefix(_render(tokenizer, conv[:i], add_generation_prompt=True), ids) if i else 0
            end = _common_prefix(_render(tokenizer, conv[: i + 1]), ids)
            mask[start:end] = [1] * (end - start)
        return ids, mask
    prompt, completion = row[cols["prompt"]], row[cols["completion"]]
    for role, value in (("prompt", prompt), ("completion", completion)):
        if value is None:
            raise ValueError(f"column {cols[role]!r} is empty (null); every example needs a prompt and a completion")
    if isinstance(prompt, str) != isinstance(completion, str):
        raise ValueError("prompt and completion must both be text or both be conversations")
    if isinstance(prompt, str):
        eos = tokenizer.eos_token or ""
        p_ids = tokenizer(prompt)["input_ids"]
        ids = tokenizer(prompt + completion + (eos if not completion.endswith(eos) else ""))["input_ids"]
    else:
        p_ids = _render(tokenizer, prompt, add_generation_prompt=True)
        ids = _render(tokenizer, list(prompt) + list(completion))
    start = _common_prefix(p_ids, ids)
    return ids, [0] * start + [1] * (len(ids) - start)


def sft_batch(data: datasets.Dataset, tokenizer, *, shape: str, columns: dict[str, str], batch_size: int = 16,
              max_length: int = 128, seed: int = 0) -> dict:
    """One collated batch of ``batch_size`` examples drawn by ``seed``: ``input_ids``, ``attention_mask`` and
    ``labels`` with -100 outside the completion (or assistant) tokens, right-padded.

    Raises:
        ValueError: an example whose completion is cut away entirely by ``max_length``, a conversation without an
            assistant turn or not a list of messages, a null prompt or completion; a tokenizer without a pad token,
            or without a chat template for conversations. A bad example's message names its row.
    """
    if shape not in ("prompt_completion", "messages"):
        raise ValueError(f"sft_batch builds prompt_completion or messages batches, not {shape!r}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has no pad or EOS token to pad the batch with; set tokenizer.pad_token")
    if shape == "messages" and getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"'messages' data is rendered with the tokenizer's chat template, and this "
                         f"{type(tokenizer).__name__} has none; use a chat model, or set tokenizer.chat_template")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(data), size=min(batch_size, len(data)), replace=False)
    rows = []
    for i in idx.tolist():
        try:
            ids, mask = _encode(data[i], shape, columns, tokenizer)
        except ValueError as e:
            raise ValueError(f"example {i}: {e}") from None
        ids, mask = ids[:max_length], mask[:max_length]  # keep the start, as SFTTrainer does
        if not any(mask):
            raise ValueError(f"example {i}: its prompt fills all max_length={max_length} tokens, so no completion "
                             "token is left to give a loss; raise max_length or shorten the prompt")
        rows.append((ids, mask))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, (ids, mask) in enumerate(rows):
        n = len(ids)
        input_ids[r, :n] = torch.tensor(ids)
        attention[r, :n] = 1
        labels[r, :n] = torch.where(torch.tensor(mask, dtype=torch.bool), torch.tensor(ids), IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

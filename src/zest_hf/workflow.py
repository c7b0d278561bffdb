"""Glue for scripts and the CLI: a model with the right head for a task, and one probe batch from its data."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .models import is_decoder, load_model, load_tokenizer, model_not_found, resolve_model

__all__ = ["Prepared", "UserData", "prepare", "choose_head"]


@dataclass
class Prepared:
    """A model ready for a task: the model, its tokenizer, the task, the head kind and one probe batch."""

    model: object
    tokenizer: object
    task: object
    head: str
    batch: dict


def choose_head(model_name: str, task_kind: str, head: str = "auto", *, decoder_classification: str = "causal_lm") -> str:
    """``auto``: a decoder keeps its own LM head (the labels become answer text, scored by log-likelihood: what an
    SFT run on the same checkpoint trains); an encoder gets a sequence-classification head for a classification
    task and a multiple-choice head for a multiple-choice one. ``decoder_classification="seq_cls"`` gives a decoder
    a classification head instead (the ground truth's protocol for decoder classification tasks)."""
    if head != "auto":
        return head
    decoder = is_decoder(model_name)
    if task_kind == "classification":
        return decoder_classification if decoder else "seq_cls"
    return "causal_lm" if decoder else "multiple_choice"


@dataclass
class UserData:
    """Your prompt/completion or conversational data, as :func:`prepare` reads it (classification data becomes a
    :class:`~zest_hf.tasks.Task`)."""

    name: str
    kind: str  # "prompt_completion" or "messages"
    data: object  # the datasets.Dataset split
    columns: dict


def _check_positions(model_name: str, max_length: int) -> None:
    """Refuse a ``max_length`` beyond the model's positions from its config alone, before the weights load."""
    import transformers

    from .tasks.tokenize import check_max_length

    try:
        config = transformers.AutoConfig.from_pretrained(resolve_model(model_name))
    except OSError as e:
        raise OSError(model_not_found(model_name, e)) from None
    check_max_length(max_length, config=config, model=model_name)


def prepare(
    model_name: str,
    task_name: str,
    *,
    head: str = "auto",
    batch_size: int = 16,
    max_length: int = 128,
    seed: int = 0,
    split_seed: int = 0,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    max_examples: int | None = None,
    split: str = "train",
    columns: dict | None = None,
) -> Prepared:
    """Load task and model, and draw the probe batch: ``batch_size`` training examples chosen by ``seed``.

    ``task_name`` is a packaged task, or your data (a jsonl/json/csv/parquet file, a dataset directory or a
    ``datasets`` name) with ``split`` and an optional ``columns`` mapping (see :mod:`zest_hf.tasks.user`). For a
    packaged task, ``split`` is one of its ``train`` / ``validation`` / ``test`` splits.

    Every bad argument is refused before the model loads.
    """
    import transformers

    from .tasks import (detect_shape, is_packaged_task, load_task, load_user_dataset, make_batch, prepare_tokenizer,
                        sft_batch, user_task)
    from .tasks.tokenize import check_max_length

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size} (--batch-size)")
    check_max_length(max_length)
    packaged = is_packaged_task(task_name)
    if packaged:
        if columns:
            raise ValueError(f"--columns maps the columns of your own data; {task_name!r} is a packaged task with "
                             "its own columns: drop --columns")
        task = load_task(task_name, split_seed=split_seed, max_examples=max_examples)
        if split not in task.splits:
            raise ValueError(f"task {task_name!r} has no split {split!r}; its splits: {list(task.splits)} "
                             "(--split)")
    else:
        data = load_user_dataset(task_name, split)
        shape, cols = detect_shape(data, columns, str(task_name))
        if shape == "classification":
            task = user_task(str(task_name), split=split, columns=columns, split_seed=split_seed,
                             max_examples=max_examples, data=data)
        else:
            if head not in ("auto", "causal_lm") or not is_decoder(model_name):
                raise ValueError(f"{task_name} is {shape} data, which trains a causal LM's own head; "
                                 f"{model_name} with head {head!r} cannot (use a decoder, --head causal_lm)")
            # the batch first: a bad example is refused before the model loads
            _check_positions(model_name, max_length)
            tok = load_tokenizer(model_name)
            check_max_length(max_length, tokenizer=tok, model=model_name)
            batch = sft_batch(data, tok, shape=shape, columns=cols, batch_size=batch_size, max_length=max_length,
                              seed=seed)
            model, tok = load_model(model_name, "causal_lm", dtype=dtype, device=device)
            return Prepared(model=model, tokenizer=tok, task=UserData(str(task_name), shape, data, cols),
                            head="causal_lm", batch=batch)
    head = choose_head(model_name, task.kind, head)
    transformers.set_seed(seed)  # the new task head's initialisation
    num_labels = task.num_labels if head == "seq_cls" else None
    _check_positions(model_name, max_length)
    model, tok = load_model(model_name, head, num_labels=num_labels, dtype=dtype, device=device)
    check_max_length(max_length, tokenizer=tok, model=model_name)
    prepare_tokenizer(tok, model)
    # your classification data was split 80/10/10 from the split you named; the batch comes from its train part
    batch = make_batch(task, tok, model_kind=head, batch_size=batch_size, max_length=max_length, seed=seed,
                       split=split if packaged else "train")
    return Prepared(model=model, tokenizer=tok, task=task, head=head, batch=batch)

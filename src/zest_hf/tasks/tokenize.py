"""Tokenisation, collators and the one-batch helper, for three model kinds.

* ``"seq_cls"`` (``...ForSequenceClassification``): ``text`` -> ``labels`` = class id.
* ``"multiple_choice"`` (``...ForMultipleChoice``): each example -> ``num_choices`` (text, choice) pairs of shape
  (C, T); a classification task offers its label names as the choices.
* ``"causal_lm"`` (``...ForCausalLM`` / ``...LMHeadModel``): ``prompt + " " + answer``, where the prompt is the text
  plus an answer cue (see :func:`causal_prompt`) and the answer is the gold choice or label name; ``labels`` are -100
  on the prompt (and on padding), so the LM loss is on the answer tokens only. A too-long prompt is cut from the
  LEFT (keeping any BOS token); the answer is never cut.

Every function works from a split alone: a classification split carries its label names in its
:class:`datasets.ClassLabel` feature.
"""

from __future__ import annotations

import contextlib
import warnings

import datasets
import numpy as np
import torch

from ..modeling import head_kind
from .base import SPLITS, Task, as_multiple_choice

__all__ = [
    "MODEL_KINDS",
    "DEFAULT_ANSWER_CUE",
    "model_kind",
    "prepare_tokenizer",
    "causal_prompt",
    "encode_causal",
    "tokenize_split",
    "tokenize_task",
    "collator_for",
    "make_batch",
    "check_max_length",
    "as_multiple_choice",
]

MODEL_KINDS = ("seq_cls", "multiple_choice", "causal_lm")
DEFAULT_ANSWER_CUE = "\nAnswer:"
IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------------------ model kinds

def model_kind(model) -> str:
    """``"seq_cls"``, ``"multiple_choice"`` or ``"causal_lm"`` from the model's class name (PEFT-wrapped too).

    Raises:
        ValueError: the model has another head (e.g. a bare ``BertModel`` or a masked-LM head).
    """
    return head_kind(model)


def _kind(kind) -> str:
    """Accept a kind string or a model (then detect it)."""
    if isinstance(kind, str):
        if kind not in MODEL_KINDS:
            raise ValueError(f"model_kind must be one of {MODEL_KINDS}, got {kind!r}")
        return kind
    return model_kind(kind)


def prepare_tokenizer(tokenizer, model=None):
    """Give ``tokenizer`` a pad token (its EOS if it has none) and tell ``model.config`` its id.

    Decoder-only tokenizers often lack a pad token, and a decoder ``...ForSequenceClassification`` needs
    ``config.pad_token_id`` to find each row's last real token. Returns the (modified in place) tokenizer.

    Raises:
        ValueError: neither a pad nor an EOS token exists.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{type(tokenizer).__name__} has neither a pad nor an EOS token; add one with "
                             "tokenizer.add_special_tokens({'pad_token': '[PAD]'}) and resize the model's embeddings")
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        config = getattr(model, "config", None)
        if config is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def check_max_length(max_length: int, *, config=None, tokenizer=None, model: str = "the model") -> None:
    """Refuse a ``max_length`` beyond the positions the model has: ``config.max_position_embeddings``, or the
    tokenizer's ``model_max_length`` where it is set (transformers puts a huge placeholder there otherwise).

    A longer sequence fails only inside the model's forward (a shape error that does not say why), or, with rotary
    positions, runs on positions the model never saw. It needs only the config or the tokenizer, so callers check
    before the weights load.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be a positive number of tokens, got {max_length}")
    limits = [(getattr(config, "max_position_embeddings", None), "config.max_position_embeddings"),
              (getattr(tokenizer, "model_max_length", None), "tokenizer.model_max_length")]
    limits = [(n, where) for n, where in limits if isinstance(n, int) and 0 < n < 1_000_000]
    if limits:
        limit, where = min(limits)
        if max_length > limit:
            raise ValueError(f"max_length={max_length} is more than {model} takes: {limit} tokens ({where}); "
                             f"pass --max-length {limit} or less")


# -------------------------------------------------------------------------------------------- split introspection

def _label_names(split: datasets.Dataset) -> list[str] | None:
    feature = split.features.get("label")
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _is_mc(split: datasets.Dataset) -> bool:
    return "choices" in split.column_names


def _choices_of(split: datasets.Dataset) -> list[list[str]]:
    """Every example's candidate answers: its ``choices``, or the label names of a classification split."""
    if _is_mc(split):
        return [list(c) for c in split["choices"]]
    names = _label_names(split)
    if names is None:
        raise ValueError("this split has neither a 'choices' column nor a ClassLabel 'label' feature with label "
                         "names; build it with zest_hf.tasks.load_task")
    return [names] * len(split)


def _split_of(task_or_split, split: str) -> datasets.Dataset:
    if isinstance(task_or_split, Task):
        if split not in task_or_split.splits:
            raise ValueError(f"task {task_or_split.name!r} has no split {split!r}; splits: {list(SPLITS)}")
        return task_or_split.splits[split]
    if isinstance(task_or_split, datasets.Dataset):
        return task_or_split
    raise TypeError(f"expected a zest_hf Task or a datasets.Dataset split, got {type(task_or_split).__name__}")


# -------------------------------------------------------------------------------------------------------- causal LM

def causal_prompt(text: str, answer_cue: str = DEFAULT_ANSWER_CUE) -> str:
    """The causal-LM prompt for ``text``: the text plus ``answer_cue``, unless the text already ends in a colon.

    BIG-bench prompts often end with their own cue (``"...Language:"``, ``"The answer is:"``); adding another
    would read ``"Answer:\\nAnswer:"``. The rule depends on the text alone, so training and scoring always agree.
    """
    text = text.rstrip()
    return text if text.endswith(":") else text + answer_cue


def _bos(tokenizer) -> list[int]:
    """``[bos_token_id]`` if this tokenizer puts BOS in front of its encodings by default, else ``[]``."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def encode_causal(tokenizer, prompts: list[str], answers: list[str], *, max_length: int = 128,
                  add_eos: bool = False) -> dict[str, list[list[int]]]:
    """Token ids of ``prompt + " " + answer`` with labels on the answer tokens only.

    The answer's tokens are those the tokenizer gives the whole string after the prompt's own tokens (so
    SentencePiece-style leading-space handling is right); if the prompt's tokens are not a prefix of the whole,
    the answer is tokenised alone. A prompt longer than ``max_length`` minus the answer (and BOS / EOS) loses tokens
    from its left, keeping at least one; the answer is never cut, so a sequence whose answer alone exceeds
    ``max_length`` is longer than ``max_length``.
    """
    bos = _bos(tokenizer)
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    answers = [" " + a.strip() for a in answers]
    # Only the prompt's tail can survive truncation, so long prompts are first cut to their last ~10 characters per
    # token of max_length (a speed-up: whole news articles are slow to tokenise). If that tail turns out to hold
    # too few tokens, the row is re-tokenised from the full prompt below, so the result never depends on the cut.
    limit = 10 * max_length
    short = [p[-limit:] for p in prompts]
    enc = lambda texts: tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]  # noqa: E731
    whole = enc([p + a for p, a in zip(short, answers)])
    ctx = enc(short)
    alone = None
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for i, (w, c) in enumerate(zip(whole, ctx)):
        ans = w[len(c):] if w[:len(c)] == c else None
        if not ans:
            if alone is None:
                alone = enc(answers)
            ans = alone[i]
        if not ans:
            raise ValueError(f"answer {answers[i]!r} tokenises to nothing; cannot train or score it")
        budget = max(max_length - len(bos) - len(ans) - len(eos), 1)
        if len(short[i]) < len(prompts[i]) and len(c) <= budget:
            c = enc([prompts[i]])[0]  # the character cut kept too little: use the whole prompt
        prompt_ids = bos + c[-budget:]  # cut from the left: the end of the prompt is what the answer follows
        ids = prompt_ids + ans + eos
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append([IGNORE_INDEX] * len(prompt_ids) + ans + eos)
    return out


# ------------------------------------------------------------------------------------------------------ tokenising

def _encoder(split: datasets.Dataset, tokenizer, kind: str, max_length: int, answer_cue: str, add_eos: bool):
    """A function ``batch dict of columns -> dict of token columns`` for this split and model kind."""
    mc = _is_mc(split)
    if kind == "seq_cls" and mc:
        raise ValueError("a multiple-choice task cannot train a ...ForSequenceClassification model (its choices "
                         "differ per example); use a ...ForMultipleChoice or ...ForCausalLM model instead")
    names = None if mc else _label_names(split)
    if kind != "seq_cls" and not mc and names is None:
        raise ValueError("a classification split needs a ClassLabel 'label' feature (label names) to be used with "
                         f"a {kind} model; build it with zest_hf.tasks.load_task")
    keep = {"input_ids", "attention_mask", "token_type_ids"}

    def seq_cls(batch):
        enc = tokenizer(list(batch["text"]), truncation=True, max_length=max_length)
        out = {k: v for k, v in enc.items() if k in keep}
        out["labels"] = [int(x) for x in batch["label"]]
        return out

    def multiple_choice(batch):
        choices = batch["choices"] if mc else [names] * len(batch["text"])
        sizes = {len(c) for c in choices}
        if len(sizes) != 1:
            raise ValueError(f"examples have different numbers of choices {sorted(sizes)}; a multiple-choice model "
                             "needs one count (load the task with load_task, which normalises it)")
        c = sizes.pop()
        first = [t for t in batch["text"] for _ in range(c)]
        second = [str(x) for opts in choices for x in opts]
        # longest_first cuts the long side (nearly always the text) and never fails on a long choice.
        enc = tokenizer(first, second, truncation="longest_first", max_length=max_length)
        out = {k: [v[i:i + c] for i in range(0, len(v), c)] for k, v in enc.items() if k in keep}
        out["labels"] = [int(x) for x in batch["label"]]
        return out

    def causal(batch):
        choices = batch["choices"] if mc else [names] * len(batch["text"])
        answers = [opts[int(g)] for opts, g in zip(choices, batch["label"])]
        prompts = [causal_prompt(t, answer_cue) for t in batch["text"]]
        return encode_causal(tokenizer, prompts, answers, max_length=max_length, add_eos=add_eos)

    return {"seq_cls": seq_cls, "multiple_choice": multiple_choice, "causal_lm": causal}[kind]


def tokenize_split(split: datasets.Dataset, tokenizer, *, model_kind, max_length: int = 128,
                   answer_cue: str = DEFAULT_ANSWER_CUE, add_eos: bool = False) -> datasets.Dataset:
    """Tokenise one split for a model kind (a kind string or the model itself).

    The result has only the columns the model's forward takes: ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (if the tokenizer makes them) and ``labels``. A classification split with a multiple-choice
    model offers its label names as every example's choices.

    Raises:
        ValueError: a multiple-choice split for a sequence-classification model.
    """
    kind = _kind(model_kind)
    fn = _encoder(split, tokenizer, kind, max_length, answer_cue, add_eos)
    return split.map(fn, batched=True, remove_columns=split.column_names, desc=f"tokenising ({kind})")


def tokenize_task(task: Task, tokenizer, *, model_kind, max_length: int = 128,
                  answer_cue: str = DEFAULT_ANSWER_CUE, add_eos: bool = False) -> datasets.DatasetDict:
    """Tokenise every split of ``task`` for ``model_kind`` (a kind string or the model itself).

    See :func:`tokenize_split` for the columns and the module docstring for each kind's format. A classification
    task with a multiple-choice model is first cast with :func:`as_multiple_choice`.
    """
    return datasets.DatasetDict({
        name: tokenize_split(split, tokenizer, model_kind=model_kind, max_length=max_length, answer_cue=answer_cue,
                             add_eos=add_eos)
        for name, split in task.splits.items()
    })


# ------------------------------------------------------------------------------------------------------- collators

def collator_for(model_kind, tokenizer, *, pad_to_multiple_of: int | None = None):
    """The transformers data collator that pads a list of tokenised rows of this kind into a tensor batch.

    ``seq_cls``: ``DataCollatorWithPadding``; ``multiple_choice``: ``DataCollatorForMultipleChoice``;
    ``causal_lm``: ``DataCollatorForSeq2Seq`` with ``label_pad_token_id=-100`` (padding is never a target).
    Gives the tokenizer a pad token if it lacks one (see :func:`prepare_tokenizer`).
    """
    import transformers

    kind = _kind(model_kind)
    prepare_tokenizer(tokenizer)
    if kind == "seq_cls":
        return transformers.DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
    if kind == "multiple_choice":
        return transformers.DataCollatorForMultipleChoice(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
    return transformers.DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True,
                                               pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")


@contextlib.contextmanager
def _right_padding(tokenizer):
    old = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        yield
    finally:
        tokenizer.padding_side = old


def make_batch(task, tokenizer, *, model_kind, batch_size: int = 16, max_length: int = 128, split: str = "train",
               seed: int = 0, answer_cue: str = DEFAULT_ANSWER_CUE) -> dict[str, torch.Tensor]:
    """ONE collated batch: ``batch_size`` examples drawn at random (seeded) from ``split``, tokenised and padded.

    This is the minibatch the zero-shot probe consumes. The same ``task``, ``split`` and ``seed`` give the same
    examples in the same order. ``task`` may also be a single split (a ``datasets.Dataset``). A split smaller than
    ``batch_size`` gives all its examples (with a warning).
    """
    ds = _split_of(task, split)
    kind = _kind(model_kind)
    n = len(ds)
    if n == 0:
        raise ValueError(f"split {split!r} is empty; cannot draw a batch")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if batch_size > n:
        warnings.warn(f"batch_size {batch_size} > {n} examples in split {split!r}; using all {n}", stacklevel=2)
    idx = np.random.default_rng(seed).choice(n, size=min(batch_size, n), replace=False)
    sample = ds.select(idx.tolist())
    # Encoded directly rather than through Dataset.map: no progress bar or cache for one small batch.
    cols = _encoder(sample, tokenizer, kind, max_length, answer_cue, False)(sample.to_dict())
    rows = [{k: v[i] for k, v in cols.items()} for i in range(len(sample))]
    return dict(collator_for(kind, tokenizer)(rows))

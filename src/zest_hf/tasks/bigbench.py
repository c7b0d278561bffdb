"""BIG-bench JSON tasks with ``target_scores``, read straight from the ``bigbench`` package's ``task.json`` files.

``bigbench.api`` is never imported (it pulls in TensorFlow and friends); only the JSON files are read, from
``<bigbench package>/benchmark_tasks`` or from the folder in ``$ZEST_HF_BIGBENCH_DIR``.

Detection rules
---------------
* An example is usable if its ``input`` is non-empty and its ``target_scores`` has at least two distinct non-empty
  choices (after stripping whitespace) with ONE highest score (the gold answer). Others are dropped and counted in
  ``Task.stats``. A task with no usable example is an error (e.g. free-text tasks with only ``target``).
* If every usable example has the same set of choices, the task is **classification**: ``label_names`` are those
  choices, sorted. Otherwise it is **multiple choice**. ``kind=`` overrides: a classification task can be read as
  multiple choice (every example offers all label names), a multiple-choice task as classification (the labels are
  the sorted union of all choices, the label is the gold choice).
* Multiple choice is normalised to ONE choice count C, because ``...ForMultipleChoice`` models need a fixed count per
  batch: C is ``num_choices=`` if given, else the most common count (ties: the larger). Examples with more than C
  choices keep the gold one plus C-1 distractors drawn at random; examples with fewer are dropped. Every example's
  choices are then shuffled (some tasks always list the gold answer first, or third). Both draws use a fixed seed,
  independent of ``split_seed``, so the examples themselves never change between splits.

Prompt text
-----------
``text`` is BIG-bench's own zero-shot prompt minus the listed choices: ``task_prefix + example_input_prefix + input
+ example_output_prefix`` using only the prefixes the task.json sets (BIG-bench's ``Q:``/``A:`` defaults are not
added), with a newline inserted where two parts would otherwise run together, and stripped. ``prefixes=False`` keeps
the bare input. Choices are never appended to the text: multiple-choice models see them separately.
"""

from __future__ import annotations

import difflib
import json
import os
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import KINDS, MissingDataPackageError, RawTask, package_dir

PIP = "pip install --no-deps bigbench==1.0.0"
ENV = "ZEST_HF_BIGBENCH_DIR"
CHOICE_SEED = 0  # fixed: distractor subsampling and choice order are part of the data, not of the split


def bigbench_root() -> Path:
    """The ``benchmark_tasks`` folder: ``$ZEST_HF_BIGBENCH_DIR`` if set, else the installed bigbench package's."""
    env = os.environ.get(ENV)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"${ENV} is {env!r}, which is not a directory. Point it at a folder of "
                                    f"<task>/task.json files, or unset it to use the installed bigbench package.")
        return root
    root = package_dir("bigbench", f"{PIP} (where the index has no 1.0.0, set ${ENV} to a folder of "
                                   f"<task>/task.json files instead)", "BIG-bench tasks") / "benchmark_tasks"
    if not root.is_dir():
        raise MissingDataPackageError(f"the installed bigbench package has no benchmark_tasks folder ({root}); "
                                      f"reinstall it with: {PIP}")
    return root


def _task_file(root: Path, task: str) -> Path:
    parts = task.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"bad BIG-bench task name {task!r}: use 'task' or 'task/subtask'")
    folder = root.joinpath(*parts)
    path = folder / "task.json"
    if path.is_file():
        return path
    if folder.is_dir():
        subs = sorted(p.parent.name for p in folder.glob("*/task.json"))
        if subs:
            shown = ", ".join(f"'bigbench:{task}/{s}'" for s in subs[:8]) + (" ..." if len(subs) > 8 else "")
            raise ValueError(f"BIG-bench task {task!r} is split into {len(subs)} subtasks; name one: {shown}")
        if (folder / "task.py").is_file():
            raise ValueError(f"BIG-bench task {task!r} is programmatic (task.py, no task.json); only JSON tasks with "
                             "target_scores are supported")
    names = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    close = difflib.get_close_matches(parts[0], names, n=3)
    hint = f" Did you mean {', '.join(repr('bigbench:' + c) for c in close)}?" if close else ""
    raise ValueError(f"no BIG-bench task {task!r} (looked for {path}).{hint}")


@lru_cache(maxsize=4)
def _read_json(path: str, mtime: float) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _concat(parts) -> str:
    """Join prompt parts; add a newline where neither side has whitespace, so words never run together."""
    out = ""
    for part in parts:
        if not part:
            continue
        if out and not out[-1].isspace() and not part[0].isspace():
            out += "\n"
        out += part
    return out


def _parse(spec: dict, prefixes: bool) -> tuple[list, Counter]:
    """Usable examples as (text, choices, gold index in choices), in file order, and counts of dropped ones."""
    dropped: Counter = Counter()
    rows = []
    pre = (spec.get("task_prefix") or "", spec.get("example_input_prefix") or "")
    post = spec.get("example_output_prefix") or ""
    for ex in spec.get("examples") or []:
        scores = ex.get("target_scores")
        if not isinstance(scores, dict) or not scores:
            dropped["no_target_scores"] += 1
            continue
        raw_input = str(ex.get("input") or "")
        if not raw_input.strip():
            dropped["empty_input"] += 1
            continue
        choices = [str(k).strip() for k in scores]
        try:
            values = [float(v) for v in scores.values()]
        except (TypeError, ValueError):
            dropped["non_numeric_scores"] += 1  # a score that is no number gives no gold
            continue
        if any(not np.isfinite(v) for v in values):
            dropped["non_numeric_scores"] += 1
            continue
        if len(choices) < 2 or any(not c for c in choices) or len(set(choices)) < len(choices):
            dropped["bad_choices"] += 1  # fewer than two, empty, or duplicates once whitespace is stripped
            continue
        best = max(values)
        if values.count(best) != 1:
            dropped["ambiguous_gold"] += 1
            continue
        text = _concat([*pre, raw_input, post]).strip() if prefixes else raw_input.strip()
        rows.append((text, choices, values.index(best)))
    return rows, dropped


def _normalise_choices(rows, num_choices: int | None, rng: np.random.Generator, dropped: Counter):
    counts = Counter(len(c) for _, c, _ in rows)
    if num_choices is None:
        num_choices = max(counts, key=lambda k: (counts[k], k))  # most common count; ties -> the larger
    if num_choices < 2:
        raise ValueError(f"num_choices must be at least 2, got {num_choices}")
    texts, choices, labels = [], [], []
    for text, opts, gold in rows:
        if len(opts) < num_choices:
            dropped["too_few_choices"] += 1
            continue
        if len(opts) > num_choices:
            others = [i for i in range(len(opts)) if i != gold]
            keep = [gold, *rng.choice(others, size=num_choices - 1, replace=False).tolist()]
        else:
            keep = list(range(len(opts)))
        keep = [keep[i] for i in rng.permutation(len(keep))]
        texts.append(text)
        choices.append([opts[i] for i in keep])
        labels.append(keep.index(gold))
    return texts, choices, labels, num_choices, counts


def load_bigbench_raw(task: str, kind: str | None = None, num_choices: int | None = None,
                      prefixes: bool = True) -> RawTask:
    """Read one BIG-bench JSON task (``"strategyqa"``, ``"multiemo/all_sentence_en"``...). See the module docstring."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    root = bigbench_root()
    path = _task_file(root, task)
    spec = _read_json(str(path), path.stat().st_mtime)
    rows, dropped = _parse(spec, prefixes)
    if not rows:
        n = len(spec.get("examples") or [])
        free_text = sum(1 for ex in spec.get("examples") or [] if "target" in ex)
        why = (f"its examples have only free-text 'target' answers ({free_text} of {n}), no 'target_scores'"
               if free_text else f"none of its {n} examples has usable 'target_scores' (dropped: {dict(dropped)})")
        raise ValueError(f"BIG-bench task {task!r} cannot be used: {why}. zest_hf needs classification or multiple "
                         "choice tasks; pick one whose task.json examples have 'target_scores'.")

    source = (f"BIG-bench task '{task}' ({path.relative_to(root).as_posix()} from {PIP.split()[-1]}, pip; "
              f"BIG-bench is Apache-2.0, see the task's README for its data's origin). "
              f"{str(spec.get('description', '')).strip()}").strip()
    keysets = {frozenset(c) for _, c, _ in rows}
    stats = {"file_examples": len(spec.get("examples") or []), "dropped": dict(dropped),
             "preferred_score": spec.get("preferred_score")}
    detected = "classification" if len(keysets) == 1 else "multiple_choice"
    stats["detected_kind"] = detected

    if detected == "classification" or kind == "classification":
        # A forced classification of a multiple-choice task labels by the gold string over the union of choices.
        names = sorted(set().union(*keysets))
        labels = [names.index(c[g]) for _, c, g in rows]
        return RawTask("classification", [t for t, _, _ in rows], labels, label_names=names, source=source,
                       stats=stats)

    rng = np.random.default_rng(CHOICE_SEED)
    texts, choices, labels, c, counts = _normalise_choices(rows, num_choices, rng, dropped)
    stats.update(dropped=dict(dropped), choice_counts=dict(sorted(counts.items())))
    if not texts:
        raise ValueError(f"BIG-bench task {task!r}: no example has at least {c} choices "
                         f"(choice counts: {dict(sorted(counts.items()))}); pass a smaller num_choices")
    return RawTask("multiple_choice", texts, labels, choices=choices, num_choices=c, source=source, stats=stats)

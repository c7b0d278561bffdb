"""The :class:`Task` container, the task registry, :func:`load_task` and the deterministic split logic.

A loader (one module per data source) returns a :class:`RawTask`: every usable example of the source, in the
source's own order. :func:`load_task` then optionally subsamples (``max_examples``), splits by a seeded shuffle, and
wraps the result in a :class:`datasets.DatasetDict`. Splitting lives here, once, so every source splits the same way.

Column conventions (all splits):

* classification: ``text`` (str), ``label`` (int, a :class:`datasets.ClassLabel` carrying ``label_names``);
* multiple choice: ``text`` (str), ``choices`` (list of ``num_choices`` str), ``label`` (int, index into choices).
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import datasets
import numpy as np
from ..errors import MissingDataPackageError

__all__ = [
    "Task",
    "RawTask",
    "MissingDataPackageError",
    "TRAINING_TASKS",
    "KINDS",
    "SPLITS",
    "load_task",
    "list_tasks",
    "register_task",
    "split_indices",
    "as_multiple_choice",
    "package_dir",
]

KINDS = ("classification", "multiple_choice")
SPLITS = ("train", "validation", "test")

#: Tasks the project may use for ground truth and predictor training (canonical names, as ``load_task`` takes them).
TRAINING_TASKS: tuple[str, ...] = (
    "bbc_news",
    "twitter_sentiment",
    "bigbench:multiemo/all_sentence_en",
    "bigbench:fact_checker/fever",
    "bigbench:strategyqa",
    "bigbench:mnist_ascii",
    "bigbench:cs_algorithms/valid_parentheses",
    "bigbench:vitaminc_fact_verification",
    "bigbench:formal_fallacies_syllogisms_negation",
    "bigbench:presuppositions_as_nli",
    "bigbench:movie_dialog_same_or_different",
    "bigbench:winowhy",
    "bigbench:hyperbaton",
    "bigbench:logical_fallacy_detection",
    "bigbench:sports_understanding",
    "bigbench:social_iqa",
    "bigbench:abstract_narrative_understanding/4_distractors",
    "bigbench:goal_step_wikihow/step_inference",
    "bigbench:language_identification",
    "bigbench:question_selection",
    "bigbench:timedial",
    "bigbench:unit_conversion/unit_identification",
)

BIGBENCH_PREFIX = "bigbench:"



def package_dir(module: str, pip_command: str, what: str) -> Path:
    """Folder of an installed data package, found WITHOUT importing it (some print on import).

    Raises:
        MissingDataPackageError: the package is not installed; the message says how to install it.
    """
    # Looked up through the module attribute at call time so tests can monkeypatch importlib.util.find_spec.
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingDataPackageError(
            f"{what} needs the data package {module!r}, which is not installed. Install it with: {pip_command}"
        )
    return Path(locations[0])


@dataclass
class RawTask:
    """What a loader returns: all usable examples in source order, before subsampling and splitting."""

    kind: str
    texts: list[str]
    labels: list[int]
    label_names: list[str] | None = None  # classification
    choices: list[list[str]] | None = None  # multiple choice, each of length num_choices
    num_choices: int | None = None
    source: str = ""
    stats: dict = field(default_factory=dict)


@dataclass
class Task:
    """A labelled text task, split three ways, in one of two shapes.

    Attributes:
        name: Canonical name: ``"bbc_news"``, ``"twitter_sentiment"`` or ``"bigbench:<task>"``.
        kind: ``"classification"`` (columns text, label) or ``"multiple_choice"`` (text, choices, label).
        splits: ``"train"``, ``"validation"`` and ``"test"`` datasets.
        label_names: Classification only: label id -> name.
        num_choices: Multiple choice only: the fixed number of choices of every example.
        source: Where the data comes from (package, licence), for datasheets.
        split_seed: The seed the splits were cut with.
        stats: Facts about loading (examples read, dropped and why, choice-count histogram...).
    """

    name: str
    kind: str
    splits: datasets.DatasetDict
    label_names: list[str] | None = None
    num_choices: int | None = None
    source: str = ""
    split_seed: int = 0
    stats: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Task.kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "classification" and not self.label_names:
            raise ValueError(f"classification task {self.name!r} needs label_names")
        if self.kind == "multiple_choice" and not self.num_choices:
            raise ValueError(f"multiple-choice task {self.name!r} needs num_choices")
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"task {self.name!r} is missing splits {missing}; expected {list(SPLITS)}")

    @property
    def num_labels(self) -> int:
        """Number of classes (classification) or of choices (multiple choice): the size of the output head."""
        return len(self.label_names) if self.label_names else int(self.num_choices or 0)

    def __repr__(self) -> str:  # the default dataclass repr would print whole DatasetDicts
        sizes = ", ".join(f"{s}={len(self.splits[s])}" for s in SPLITS)
        extra = f"labels={self.label_names}" if self.kind == "classification" else f"num_choices={self.num_choices}"
        return f"Task({self.name!r}, {self.kind}, {extra}, {sizes}, split_seed={self.split_seed})"


# --------------------------------------------------------------------------------------------------------- registry

Loader = Callable[..., RawTask]
_LOADERS: dict[str, Loader] = {}
_ALIASES: dict[str, str] = {}


def register_task(name: str, loader: Loader, aliases: Sequence[str] = ()) -> None:
    """Register a built-in task: ``loader(kind=None, **kw) -> RawTask`` under ``name`` and its aliases."""
    _LOADERS[name] = loader
    for alias in (name, *aliases):
        _ALIASES[alias.lower()] = name


def list_tasks() -> list[str]:
    """Names :func:`load_task` knows: the built-in tasks, then the BIG-bench tasks of :data:`TRAINING_TASKS`.

    Any other ``"bigbench:<task>"`` (e.g. ``"bigbench:multiemo/all_sentence_fr"``) works too, as long as the
    task has a ``task.json`` with ``target_scores``.
    """
    return list(_LOADERS) + [t for t in TRAINING_TASKS if t.startswith(BIGBENCH_PREFIX)]


def _valid_names_message() -> str:
    parts = []
    for canonical in _LOADERS:
        aliases = sorted(a for a, c in _ALIASES.items() if c == canonical and a != canonical)
        parts.append(f"{canonical!r} (aliases {', '.join(aliases)})" if aliases else repr(canonical))
    return ", ".join(parts) + ", or 'bigbench:<task>' such as 'bigbench:strategyqa'"


def _resolve(name: str) -> tuple[str, Loader, dict]:
    """Canonical name, loader and loader kwargs for a user-given task name."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"task name must be a non-empty string, got {name!r}. Valid: {_valid_names_message()}")
    key = name.strip()
    if key.lower().startswith(BIGBENCH_PREFIX):
        sub = key[len(BIGBENCH_PREFIX):].strip().strip("/")
        if not sub:
            raise ValueError("'bigbench:' needs a task after the colon, e.g. 'bigbench:strategyqa' or "
                             "'bigbench:multiemo/all_sentence_en'")
        from .bigbench import load_bigbench_raw

        return BIGBENCH_PREFIX + sub, load_bigbench_raw, {"task": sub}
    canonical = _ALIASES.get(key.lower())
    if canonical is None:
        close = difflib.get_close_matches(key.lower(), list(_ALIASES), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown task {name!r}.{hint} Valid: {_valid_names_message()}")
    return canonical, _LOADERS[canonical], {}


def is_packaged_task(name: str) -> bool:
    """Whether :func:`load_task` knows ``name`` (a built-in task or ``bigbench:...``); anything else is user data."""
    return isinstance(name, str) and (name.strip().lower().startswith(BIGBENCH_PREFIX)
                                      or name.strip().lower() in _ALIASES)


# ------------------------------------------------------------------------------------------------------------ split

def _check_fractions(fractions) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers (train, validation, test) summing to 1, "
                         f"got {tuple(fractions)!r}")
    return fr  # type: ignore[return-value]


def split_indices(n: int, fractions=(0.8, 0.1, 0.1), seed: int = 0,
                  labels: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint train / validation / test index arrays covering ``range(n)``, a pure function of the arguments.

    The indices are shuffled with ``numpy.random.default_rng(seed)`` (PCG64: identical on every platform and run),
    then cut at ``round(fractions[0] * n)`` and ``round((fractions[0] + fractions[1]) * n)`` (halves round up).

    With ``labels``, the cut is stratified: members of each class are spread evenly along the shuffled order before
    cutting, so every split gets its class's share (within one example) while split sizes stay exactly as above.
    Each split is then shuffled again, so no class pattern is left in the row order.
    """
    fr = _check_fractions(fractions)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    if labels is not None and n:
        lab = np.asarray(labels)[order]
        keys = np.empty(n, dtype=np.float64)
        for c in np.unique(lab):
            pos = np.flatnonzero(lab == c)
            # Member i of a class of size m sits at (i + u) / m in [0, 1): cutting at fraction f takes ~f*m of it.
            keys[pos] = (np.arange(len(pos)) + rng.random()) / len(pos)
        order = order[np.argsort(keys, kind="stable")]
    cut1 = int(np.floor(fr[0] * n + 0.5))
    cut2 = min(n, max(cut1, int(np.floor((fr[0] + fr[1]) * n + 0.5))))
    parts = order[:cut1], order[cut1:cut2], order[cut2:]
    return tuple(p[rng.permutation(len(p))] for p in parts)  # type: ignore[return-value]


def _features(raw: RawTask) -> datasets.Features:
    if raw.kind == "classification":
        return datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=list(raw.label_names))})
    return datasets.Features({"text": datasets.Value("string"),
                              "choices": datasets.Sequence(datasets.Value("string")),
                              "label": datasets.Value("int64")})


def _to_dataset(raw: RawTask, idx: np.ndarray) -> datasets.Dataset:
    data = {"text": [raw.texts[i] for i in idx], "label": [int(raw.labels[i]) for i in idx]}
    if raw.kind == "multiple_choice":
        data = {"text": data["text"], "choices": [list(raw.choices[i]) for i in idx], "label": data["label"]}
    return datasets.Dataset.from_dict(data, features=_features(raw))


def _subsample(n: int, max_examples: int | None, seed: int) -> np.ndarray:
    if max_examples is None or max_examples >= n:
        return np.arange(n)
    if max_examples < 1:
        raise ValueError(f"max_examples must be a positive integer or None, got {max_examples!r}")
    # Its own generator (seeded from split_seed), so the split shuffle below is unaffected by whether we subsample.
    rng = np.random.default_rng([int(seed), 0x5AB5])
    return np.sort(rng.choice(n, size=int(max_examples), replace=False))


def load_task(name: str, *, split_seed: int = 0, fractions=(0.8, 0.1, 0.1), max_examples: int | None = None,
              kind: str | None = None, stratify: bool | None = None, num_choices: int | None = None,
              prefixes: bool = True) -> Task:
    """Load a task, offline, from an installed data package, split deterministically.

    Args:
        name: ``"bbc_news"`` (aliases ``"bbc"``, ``"bbcnews"``), ``"twitter_sentiment"`` (``"twitter"``) or
            ``"bigbench:<task>"`` with a BIG-bench task or subtask path, e.g. ``"bigbench:multiemo/all_sentence_en"``.
        split_seed: Seed of the shuffle that cuts the splits (and of ``max_examples`` subsampling). The same seed
            gives the same splits in every process and run.
        fractions: (train, validation, test) fractions, summing to 1.
        max_examples: Keep a seeded random subset of this many examples BEFORE splitting (for huge tasks).
        kind: Force ``"classification"`` or ``"multiple_choice"``; default: the source's natural kind (BIG-bench:
            auto-detected). A classification task forced to multiple choice gets its label names as the choices.
        stratify: Stratify the split by label. Default: yes for classification, no for multiple choice.
        num_choices: BIG-bench multiple choice only: the fixed choice count (default: the most common count).
        prefixes: BIG-bench only: wrap the input in the task's prompt prefixes (default) or keep the bare input.

    Raises:
        ValueError: unknown task name, bad fractions or kind, or a BIG-bench task without usable targets.
        MissingDataPackageError: the data package is not installed (the message has the pip command).
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None (auto), got {kind!r}")
    _check_fractions(fractions)
    canonical, loader, kw = _resolve(name)
    if canonical.startswith(BIGBENCH_PREFIX):
        kw.update(num_choices=num_choices, prefixes=prefixes)
    raw = loader(kind=kind, **kw)
    to_mc = kind == "multiple_choice" and raw.kind == "classification"
    if kind is not None and kind != raw.kind and not to_mc:
        raise ValueError(f"task {canonical!r} is {raw.kind} and cannot be loaded as {kind}")

    task = task_from_raw(raw, canonical, split_seed=split_seed, fractions=fractions, max_examples=max_examples,
                         stratify=stratify)
    # Converted after splitting, so the rows of each split are exactly those of the classification load.
    return as_multiple_choice(task) if to_mc else task


def task_from_raw(raw: RawTask, name: str, *, split_seed: int = 0, fractions=(0.8, 0.1, 0.1),
                  max_examples: int | None = None, stratify: bool | None = None) -> Task:
    """Subsample and split a loader's examples into a :class:`Task` (what every task, yours too, goes through)."""
    _check_fractions(fractions)
    keep = _subsample(len(raw.texts), max_examples, split_seed)
    if len(keep) < 3:
        raise ValueError(f"task {name!r} has only {len(keep)} usable examples; need at least 3 to split")
    if stratify is None:
        stratify = raw.kind == "classification"
    labels = [raw.labels[i] for i in keep] if stratify else None
    parts = split_indices(len(keep), fractions, split_seed, labels)
    splits = datasets.DatasetDict({s: _to_dataset(raw, keep[p]) for s, p in zip(SPLITS, parts)})
    stats = dict(raw.stats, examples=len(raw.texts), used=len(keep))
    return Task(name=name, kind=raw.kind, splits=splits,
                label_names=list(raw.label_names) if raw.kind == "classification" else None,
                num_choices=raw.num_choices if raw.kind == "multiple_choice" else None,
                source=raw.source, split_seed=split_seed, stats=stats)


def as_multiple_choice(task: Task) -> Task:
    """The same task in multiple-choice shape: a classification task's label names become every example's choices.

    Used to train an encoder multiple-choice head (``...ForMultipleChoice``) on a classification task. A task that
    already is multiple choice is returned unchanged.
    """
    if task.kind == "multiple_choice":
        return task
    names = list(task.label_names)
    features = datasets.Features({"text": datasets.Value("string"),
                                  "choices": datasets.Sequence(datasets.Value("string")),
                                  "label": datasets.Value("int64")})
    splits = datasets.DatasetDict({
        s: datasets.Dataset.from_dict({"text": list(ds["text"]), "choices": [names] * len(ds),
                                       "label": [int(x) for x in ds["label"]]}, features=features)
        for s, ds in task.splits.items()
    })
    return Task(name=task.name, kind="multiple_choice", splits=splits, num_choices=len(names), source=task.source,
                split_seed=task.split_seed, stats=dict(task.stats, converted_from="classification"))

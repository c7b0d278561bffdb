"""The records the research tools write and read: one JSON object a line, appended as each run ends.

A killed run can leave a torn last line; readers skip it and :func:`open_for_append` drops it before writing, so a
file only ever holds whole records.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["HEAD_ONLY", "task_slug", "read_jsonl", "open_for_append"]

#: The ``layer`` of the baseline run that trains the task head alone (for a decoder: the untrained model).
HEAD_ONLY = "__head__"


def task_slug(task: str) -> str:
    """A file-name-safe form of a task name: ``bigbench:cs_algorithms/valid_parentheses`` ->
    ``bigbench-cs_algorithms-valid_parentheses``."""
    return task.replace(":", "-").replace("/", "-")


def read_jsonl(path: str | Path) -> list[dict]:
    """All complete lines of a JSONL file (a torn last line, from a killed run, is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def open_for_append(path: Path):
    """Open a JSONL file for appending, first dropping a torn last line left by a killed writer (a last line that
    is a whole record, only its newline missing, is kept and ended: :func:`read_jsonl` counts it as done)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            try:
                json.loads(data[cut:])
            except ValueError:  # a torn line from a killed run: drop it
                path.write_bytes(data[:cut])
            else:
                with path.open("ab") as fh:
                    fh.write(b"\n")
    return path.open("a")

"""One JSON contract for everything zest_hf writes as JSON: ProbeResult, Ranking, ZestConfig, SparseZOConfig.

* ``obj.to_json(path=None) -> str``: the JSON text; with ``path`` it is also written there, atomically (a temporary
  file in the same directory, then ``os.replace``), so a writer killed mid-write leaves the old file or the new one,
  never a torn one. Binary files (safetensors weights, sparse deltas, masks, predictors) go through the same
  :func:`atomic_target`.
* ``Cls.from_json(path_or_text)``: a path to such a file, or the JSON text itself (text starts with ``{``).
* Strict both ways: no NaN or infinity in the text (a ProbeResult writes its non-finite values as strings), and a
  key the class does not know is an error naming it, since a newer zest_hf may have written it and dropping it
  would change what the object means.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["JsonSerializable", "atomic_target", "write_atomic", "check_keys", "read_json"]


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike):
    """Yield a temporary path beside ``path`` to write to (by any writer: text, safetensors, a whole file); when the
    block ends without an error it replaces ``path`` in one rename, else it is removed. Readers, and a process
    killed mid-write, see the old file or the whole new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes are on disk before the rename makes them the file
        finally:
            os.close(fd)
        os.chmod(tmp, _file_mode(path))  # mkstemp makes the file 0600, readable by its owner only
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _file_mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would leave: the file's own if it exists, else 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        pass
    try:  # the umask can only be set to be read, which races with other threads; Linux shows it here
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_target`)."""
    with atomic_target(path) as tmp:
        tmp.write_text(text)


def read_json(path_or_text: str | os.PathLike, what: str) -> tuple[dict, str]:
    """``(object, source)`` from a path or JSON text; a clear ``ValueError`` for anything but a JSON object."""
    text = os.fspath(path_or_text) if isinstance(path_or_text, os.PathLike) else str(path_or_text)
    if text.lstrip().startswith("{"):
        source = f"the {what} JSON text"
    else:
        source = text
        try:
            text = Path(text).read_text()
        except FileNotFoundError:
            raise FileNotFoundError(f"no {what} file at {source}") from None
        except IsADirectoryError:
            raise IsADirectoryError(f"{source} is a directory; give the path of the {what} JSON file in it") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source} is not valid JSON ({e}); it is not a {what} written by zest_hf") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source} holds a JSON {type(data).__name__}, not the object of a {what}")
    return data, source


def read_safetensors(path: str | os.PathLike, what: str) -> tuple[dict, dict]:
    """``(metadata, tensors)`` of a safetensors file; a ``ValueError`` naming the file and what it should have been
    for a truncated or foreign one (safetensors raises its own, bare error types). Nothing is unpickled."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e}): it is truncated or "
                         f"is not a {what}; write it again") from None


def check_keys(data: Mapping, known: Iterable[str], what: str, source: str) -> None:
    """Refuse keys a class does not know, naming them."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown {what} keys {unknown}; it was written by a newer zest_hf (upgrade: "
                         "pip install -U zest_hf) or edited by hand")


class JsonSerializable:
    """Mixin giving a class the contract above from its ``to_dict()`` and ``from_dict(d, source)``."""

    #: Name used in error messages.
    json_what: str = "zest_hf object"

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        if path is not None:
            write_atomic(path, text)
        return text

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike):
        data, source = read_json(path_or_text, cls.json_what)
        return cls.from_dict(data, source=source)

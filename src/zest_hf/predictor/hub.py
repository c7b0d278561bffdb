"""Where predictors come from: a local directory, a bundled name, or a Hugging Face Hub repo id.

One function, :func:`load_predictor`, resolves all three, in this order:

1. an existing local directory holding ``config.json`` + ``model.safetensors``;
2. the name of a predictor bundled with zest_hf (``predictors/<name>/`` in a source checkout, or any directory in
   ``$ZEST_HF_PREDICTORS``): works offline. :data:`DEFAULT_PREDICTOR` (``"auto"``, the default everywhere) is the
   bundled predictor of the candidates' architecture family (:mod:`.family`);
3. a Hub repo id (``owner/name``), with an optional ``revision`` (pin it for reproducible selections), downloaded and
   cached by huggingface_hub. Only ``config.json`` and ``model.safetensors`` are fetched; nothing is unpickled.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..defaults import DEFAULT_PREDICTOR
from ..errors import PredictorError, PredictorNotFoundError
from .card import write_card
from .family import AUTO, POOLED_PREDICTOR, predictor_for
from .model import ZestPredictor

__all__ = ["load_predictor", "resolve_name", "bundled_predictors", "push_predictor", "write_card",
           "DEFAULT_PREDICTOR", "PredictorNotFoundError"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")



def _bundled_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("ZEST_HF_PREDICTORS"):
        dirs += [Path(p) for p in os.environ["ZEST_HF_PREDICTORS"].split(os.pathsep) if p]
    package = Path(__file__).resolve().parents[1]  # .../zest_hf
    dirs += [package / "_predictors", package.parents[1] / "predictors"]  # wheel data, then a source checkout
    return [d for d in dirs if d.is_dir()]


def bundled_predictors() -> dict[str, Path]:
    """Bundled predictor name -> directory."""
    found = {}
    for d in _bundled_dirs():
        for sub in sorted(d.iterdir()):
            if (sub / "config.json").is_file() and (sub / "model.safetensors").is_file():
                found.setdefault(sub.name, sub)
    return found


def resolve_name(name_or_path: str | os.PathLike | None, layers=None) -> str:
    """The predictor a name stands for: ``None`` (:data:`DEFAULT_PREDICTOR`) and ``"auto"`` are the bundled predictor
    of the family of ``layers`` (probe layer records or canonical types), and stay ``"auto"`` without them; anything
    else is returned as given."""
    name = str(name_or_path) if name_or_path is not None else DEFAULT_PREDICTOR
    return predictor_for(layers) if name == AUTO and layers is not None else name


def load_predictor(name_or_path: str | os.PathLike | ZestPredictor | None = None, revision: str | None = None,
                   layers=None, **hub_kwargs) -> ZestPredictor:
    """Resolve and load a predictor (see the module docstring). ``None`` means :data:`DEFAULT_PREDICTOR`; ``layers``
    (the candidates, as probe layer records or canonical types) picks the family's predictor for ``"auto"``, which
    without them is the pooled predictor that serves any model."""
    if isinstance(name_or_path, ZestPredictor):
        return name_or_path
    name = resolve_name(name_or_path, layers)
    if name == AUTO:
        name = POOLED_PREDICTOR
    path = Path(name).expanduser()
    if path.is_dir():
        _check_files(path)
        return ZestPredictor.from_pretrained(path)
    bundled = bundled_predictors()
    if name in bundled:
        _check_files(bundled[name])
        return ZestPredictor.from_pretrained(bundled[name])
    if not _REPO_ID.match(name):
        raise PredictorNotFoundError(
            f"no predictor {name!r}: not a directory, not a bundled predictor (bundled: {sorted(bundled) or 'none'}), "
            "and not a Hub repo id of the form 'owner/name'."
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        files = [hf_hub_download(name, f, revision=revision, **hub_kwargs) for f in ("config.json", "model.safetensors")]
    except LocalEntryNotFoundError as e:
        raise PredictorNotFoundError(
            f"predictor {name!r}{f' @ {revision}' if revision else ''} is not in the local Hugging Face cache and the "
            f"Hub cannot be reached (offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). Download it "
            f"once while online (`huggingface-cli download {name}`), copy it to a local directory and pass its path, "
            f"or use a bundled predictor ({sorted(bundled) or 'none'})."
        ) from e
    except (RepositoryNotFoundError, EntryNotFoundError) as e:
        raise PredictorNotFoundError(
            f"{name!r} on the Hub has no config.json + model.safetensors (a zest_hf predictor repo): {e}"
        ) from e
    _check_files(Path(files[0]).parent)
    return ZestPredictor.from_pretrained(Path(files[0]).parent)


def _check_files(path: Path) -> None:
    """A predictor directory: both files there, and a config.json that is a JSON object naming its metrics."""
    import json

    missing = [f for f in ("config.json", "model.safetensors") if not (path / f).is_file()]
    if missing:
        raise PredictorNotFoundError(f"{path} is not a zest_hf predictor directory: missing {missing}")
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise PredictorError(f"{path / 'config.json'} is not valid JSON ({e}); re-download or re-save the "
                             "predictor") from None
    if not isinstance(config, dict) or "metrics" not in config:
        raise PredictorError(f"{path / 'config.json'} is not a zest_hf predictor config (a JSON object with "
                             f"'metrics' and the other ZestPredictor arguments); got {type(config).__name__}"
                             + (f" with keys {sorted(config)}" if isinstance(config, dict) else ""))


def push_predictor(directory: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
                   token: str | None = None) -> str:
    """Upload a predictor directory (config.json, model.safetensors, README.md) as a Hub model repo; with
    ``revision``, to that branch (created from the default branch if it does not exist yet)."""
    from huggingface_hub import HfApi

    path = Path(directory)
    _check_files(path)
    ZestPredictor.from_pretrained(path)  # refuse to publish something that does not load
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision and revision != "main":
        # upload_folder only commits to a branch that exists
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model", token=token)
    info = api.upload_folder(folder_path=str(path), repo_id=repo_id, revision=revision, repo_type="model",
                             allow_patterns=["config.json", "model.safetensors", "README.md"])
    return str(getattr(info, "commit_url", info))

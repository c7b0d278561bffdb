"""ZestConfig: what ZEST selects (size, candidates, predictor, probe) and how it trains the selection (full or LoRA).

A config is *unresolved* until :func:`zest_hf.select` (or :func:`zest_hf.prepare_trainer`) probes one batch and fills
``selected_modules`` / ``selection_scores`` / ``modules_to_save``. From then on it is plain data: it is written with
the adapter (``adapter_config.json`` in full mode, ``zest_selection.json`` beside the stock LoRA config in LoRA mode),
reloads with :meth:`ZestConfig.from_pretrained` or :meth:`ZestConfig.from_json`, and never probes again.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from peft import LoraConfig, PeftConfig

from ..defaults import DEFAULT_PREDICTOR
from ..errors import SelectionError, ZestNotSelectedError
from ..serialization import JsonSerializable, check_keys, read_json
from ..validation import check_cost_weight, check_int, check_real, check_size

__all__ = ["ZestConfig", "ZestLoraConfig", "PEFT_TYPE", "PREFIX", "MODES", "SELECTION_FILE", "ZestNotSelectedError"]

MODES = ("full", "lora")
PREFIX = "zest_"
#: Written beside a LoRA-mode adapter's stock ``adapter_config.json``; stock peft ignores it.
SELECTION_FILE = "zest_selection.json"


class ZestPeftType(str):
    """``"ZEST"`` behaving like a member of peft's ``PeftType`` str-enum (transformers reads ``peft_type.value``).

    peft's enum is closed to third parties, but its mappings are plain dicts keyed by the str value, so a str that
    also has ``.value`` and ``.name`` is found everywhere a ``PeftType`` is."""

    @property
    def value(self) -> str:
        return str(self)

    @property
    def name(self) -> str:
        return str(self)

    def __reduce__(self):
        return (ZestPeftType, (str(self),))


PEFT_TYPE = ZestPeftType("ZEST")



@dataclass
class ZestConfig(JsonSerializable, PeftConfig):
    """Configuration of ZEST: rank every candidate projection from one batch, train only the best ones plus the head.

    Args:
        top_k (`int`, *optional*):
            Train the `top_k` best-ranked layers. Give either `top_k` or `budget` (or a ready `selected_modules`).
        budget (`float`, *optional*):
            Train the best-ranked layers that fit in this fraction, in (0, 1], of all candidate layers' parameters
            (weight + bias): down the ranking, each layer is taken if it still fits, so a smaller layer further down
            fills what a large one left. The head is not counted.
        cost_weight (`float`, defaults to 0.0):
            Cost-aware selection: trade predicted importance against a training step's cost, which is set by the
            lowest selected layer (backward must reach it). For every possible lowest block, the best layers at or
            above it are taken, and the choice maximising mean rank utility minus `cost_weight` x (fraction of blocks
            backward runs through) wins. `0`: plain top-k; `0.5`-`1` moves the selection up the model when that costs
            little predicted importance. See `zest_hf.selection.cost_aware`.
        candidates (`Union[list[str], str]`, *optional*):
            The layers ZEST may choose from. `None` (default): every projection inside a numbered block that
            `zest_hf.find_targets` knows for the architecture (q/k/v/o/gate/up/down and their BERT, GPT-2, T5...
            names). A string is a regular expression `re.fullmatch`-ed against full module names; a list matches
            names exactly or as a dot-bounded suffix.
        exclude_modules (`Union[list[str], str]`, *optional*):
            Candidates to leave out, in the same forms as `candidates`. It is spent once the selection is made: a
            resolved config records it in `selection_info["exclude_modules"]` instead (peft would read it here as its
            own option).
        mode (`str`, defaults to `"full"`):
            `"full"`: train the selected weights (and biases) themselves, in place; everything else is frozen. They
            are base weights, so use a full-fine-tuning learning rate, not a LoRA one (measured rates: README,
            "Learning rates", and results/lr_table.md).
            `"lora"`: train LoRA adapters (`r`, `lora_alpha`, `lora_dropout`) on the selected modules only; the saved
            adapter is a stock peft LoRA adapter with the exact module names as `target_modules`.
        r (`int`, defaults to 8):
            LoRA rank (mode `"lora"` only).
        lora_alpha (`int`, defaults to 8):
            LoRA scaling numerator, the update is scaled by `lora_alpha / r` (mode `"lora"` only).
        lora_dropout (`float`, defaults to 0.0):
            Dropout on the LoRA branch's input (mode `"lora"` only).
        predictor (`str`, defaults to `"auto"`):
            What ranks the layers: `"auto"`, the bundled predictor of the model's architecture family
            (`"zest-decoder"`, trained on Llama-style decoders, for a model whose candidates include a gated MLP;
            `"zest-universal"`, trained on every model, for any other), a bundled predictor name, a local directory, a
            Hub repo id,
            `"metric:<probe column>"` (e.g. `"metric:grad_norm"`) to rank by one zero-shot metric, largest first, or
            `"spectrum"`: Spectrum's data-free choice (per projection type, the layers whose singular values stand
            furthest above the Marchenko-Pastur noise edge; every type gets the same share of the budget).
        predictor_revision (`str`, *optional*):
            Hub revision of the predictor; pin it for reproducible selections. (peft's own `revision` field is the
            base model's revision, hence the longer name.)
        modules_to_save (`list[str]`, *optional*):
            The task head, trained in full and saved with the adapter. `None`: detected at selection time
            (`classifier` for BERT-style, `score` for Llama-style sequence classifiers, multiple-choice heads...;
            nothing for a causal LM, whose `lm_head` is usually tied to the embeddings). `[]`: no head.
        probe_batch_size (`int`, *optional*):
            Examples in the batch `zest_hf.prepare_trainer` draws from the Trainer's training data for the probe
            (default: the Trainer's per-device train batch size). `zest_hf.select` probes the batch it is given.
        probe_seed (`int`, defaults to 0):
            Seeds the probe (and the draw of the Trainer's probe batch); the caller's random state is restored. An
            integer >= 0.
        selected_modules (`list[str]`, *optional*):
            The resolved selection: exact full module names, best first. Filled by `zest_hf.select`; a config that
            has it never probes again. Set it yourself to train a fixed set of layers.
        selection_scores (`list[float]`, *optional*):
            The predictor's score of each selected module, aligned with `selected_modules` (`None` for a selection
            given by hand).
        selection_info (`dict`, *optional*):
            How the selection was made (predictor, candidates, parameter counts, probe batch shape and loss).
        target_modules (`list[str]`, *optional*):
            Kept equal to `selected_modules` for peft's tooling; not an input (use `candidates`).
        target_parameters (`list[str]`, *optional*):
            Not supported by ZEST; must stay `None`. Present because peft reads it from every config.

    Example::

        >>> import peft, zest_hf
        >>> cfg = zest_hf.select(model, batch, zest_hf.ZestConfig(top_k=4))   # doctest: +SKIP
        >>> model = peft.get_peft_model(model, cfg)                          # doctest: +SKIP
    """

    top_k: Optional[int] = field(default=None, metadata={"help": "Number of best-ranked layers to train."})
    budget: Optional[float] = field(
        default=None,
        metadata={"help": "Fraction in (0, 1] of the candidate layers' parameters that the selection may hold."},
    )
    cost_weight: float = field(
        default=0.0, metadata={"help": "Importance vs backward-depth trade-off; 0 is plain top-k."})
    candidates: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Layers ZEST may choose from (regex or list of names); None: every known projection."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Candidates to leave out (regex or list of names)."}
    )
    mode: str = field(default="full", metadata={"help": "'full': train the selected weights; 'lora': LoRA on them."})
    r: int = field(default=8, metadata={"help": "LoRA rank (mode 'lora')."})
    lora_alpha: int = field(default=8, metadata={"help": "LoRA alpha (mode 'lora')."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (mode 'lora')."})
    predictor: Optional[str] = field(
        default=DEFAULT_PREDICTOR,
        metadata={"help": "'auto' (the bundled predictor of the model's family), a predictor name, directory or Hub "
                          "id, 'metric:<probe column>' or 'spectrum'."},
    )
    predictor_revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of the predictor."})
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "The task head, trained and saved; None: detected; []: none."}
    )
    probe_batch_size: Optional[int] = field(
        default=None, metadata={"help": "Examples in the Trainer probe batch (default: the train batch size)."}
    )
    probe_seed: int = field(default=0, metadata={"help": "Seed of the probe and of the probe batch draw."})
    selected_modules: Optional[list[str]] = field(
        default=None, metadata={"help": "Resolved selection: exact module names, best first (filled by select)."}
    )
    selection_scores: Optional[list[float]] = field(
        default=None, metadata={"help": "Scores of the selected modules, aligned with selected_modules."}
    )
    selection_info: Optional[dict] = field(default=None, metadata={"help": "How the selection was made."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Mirror of selected_modules for peft; not an input (use candidates)."}
    )
    target_parameters: Optional[list[str]] = field(default=None, metadata={"help": "Not supported; keep None."})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.target_parameters:
            raise ValueError("ZestConfig does not support target_parameters; leave it None")
        if isinstance(self.predictor, os.PathLike):
            self.predictor = os.fspath(self.predictor)
        if self.predictor is not None and not isinstance(self.predictor, str):
            raise TypeError(
                f"predictor must be a name, a directory or 'metric:<column>', got {type(self.predictor).__name__}; "
                "save a ZestPredictor object with .save_pretrained(dir) and pass the directory"
            )
        # the checks hand back plain Python numbers: a numpy one passes them but would stop the JSON writers
        self.cost_weight = check_cost_weight(self.cost_weight, error=ValueError)
        self.r = check_int("r", self.r)
        self.lora_alpha = check_real("lora_alpha", self.lora_alpha, low=0, low_open=True)
        self.lora_dropout = check_real("lora_dropout", self.lora_dropout, low=0, high=1, high_open=True)
        self.probe_batch_size = check_int("probe_batch_size", self.probe_batch_size, optional=True)
        self.probe_seed = check_int("probe_seed", self.probe_seed, minimum=0)
        if self.modules_to_save is not None:
            self.modules_to_save = [self.modules_to_save] if isinstance(self.modules_to_save, str) else list(
                self.modules_to_save)
        if self.selected_modules is None:
            if self.target_modules is not None:
                raise ValueError(
                    "ZestConfig chooses target_modules itself. To restrict what it may choose, pass "
                    "candidates=...; to train a fixed set of modules, pass selected_modules=[full names]."
                )
            self.top_k, self.budget = check_size(self.top_k, self.budget)
            return
        self._check_resolved()

    def _check_resolved(self) -> None:
        if isinstance(self.selected_modules, str) or not self.selected_modules:
            raise ValueError(f"selected_modules must be a non-empty list of full module names, got "
                             f"{self.selected_modules!r}")
        self.selected_modules = [str(n) for n in self.selected_modules]
        if len(set(self.selected_modules)) != len(self.selected_modules):
            raise ValueError(f"selected_modules has duplicates: {self.selected_modules}")
        if self.selection_scores is not None:  # None for a selection given by hand
            self.selection_scores = list(self.selection_scores)
            if len(self.selection_scores) != len(self.selected_modules):
                raise ValueError(f"selection_scores has {len(self.selection_scores)} entries for "
                                 f"{len(self.selected_modules)} selected modules")
            self.selection_scores = [
                float(check_real(f"selection_scores[{i}]", s, hint=f" (the score of {n}; leave selection_scores None "
                                                                  "for a selection given by hand)"))
                for i, (n, s) in enumerate(zip(self.selected_modules, self.selection_scores))]
        if self.top_k is not None or self.budget is not None:
            self.top_k, self.budget = check_size(self.top_k, self.budget)
        if self.exclude_modules is not None:
            # The exclusion was applied when the candidates were ranked. Left in exclude_modules, peft reads it as
            # its own option and warns that it excluded nothing; selection_info keeps it, saved with the rest.
            self.selection_info = {**(self.selection_info or {}), "exclude_modules": self.exclude_modules}
            self.exclude_modules = None
        targets = self.target_modules
        if targets is not None and (isinstance(targets, str) or set(targets) != set(self.selected_modules)):
            raise ValueError(
                f"target_modules ({targets!r}) must equal selected_modules ({self.selected_modules}); ZestConfig "
                "keeps them equal. Set selected_modules only."
            )
        self.target_modules = list(self.selected_modules)

    # ------------------------------------------------------------------------------------------------- selection
    @property
    def is_resolved(self) -> bool:
        """True once the selection is known: the config then never probes again."""
        return self.selected_modules is not None

    def resolved(self, chosen, modules_to_save: list[str] | None = None, info: dict | None = None) -> "ZestConfig":
        """A copy holding the selection ``chosen`` = ``[(name, score), ...]`` (best first)."""
        chosen = list(chosen)
        return dataclasses.replace(
            self,
            selected_modules=[n for n, _ in chosen],
            selection_scores=[float(s) for _, s in chosen],
            modules_to_save=list(modules_to_save) if modules_to_save is not None else self.modules_to_save,
            selection_info=dict(info) if info is not None else self.selection_info,
            target_modules=None,
        )

    def require_resolved(self) -> None:
        if not self.is_resolved:
            raise ZestNotSelectedError(
                "this ZestConfig has no selection yet: resolve it first with "
                "zest_hf.select(model, batch, config) (one batch of your training data), or use "
                "zest_hf.prepare_trainer(trainer, config) with a transformers Trainer, or load a resolved config "
                "with ZestConfig.from_pretrained(adapter_dir) / ZestConfig.from_json(path)."
            )

    def score_of(self, name: str) -> float:
        if self.selection_scores is None:
            return float("nan")
        return self.selection_scores[self.selected_modules.index(name)]

    def to_lora_config(self) -> "ZestLoraConfig":
        """The stock LoRA config of this selection: exact module names as ``target_modules``, the head as
        ``modules_to_save``. It writes ``zest_selection.json`` beside its ``adapter_config.json`` when saved."""
        self.require_resolved()
        cfg = ZestLoraConfig(
            target_modules=list(self.selected_modules),
            modules_to_save=list(self.modules_to_save) if self.modules_to_save else None,
            r=self.r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            task_type=self.task_type,
            base_model_name_or_path=self.base_model_name_or_path,
            revision=self.revision,
            inference_mode=self.inference_mode,
        )
        cfg.zest_config = self
        return cfg

    # ------------------------------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        d = super().to_dict()
        d["peft_type"] = str(self.peft_type)
        return {k: sorted(v) if isinstance(v, set) else v for k, v in sorted(d.items())}

    json_what = "ZestConfig"

    @classmethod
    def from_dict(cls, d: dict, source: str = "the config") -> "ZestConfig":
        """A config from what :meth:`to_json` (or a ZEST ``adapter_config.json``) holds; see zest_hf.serialization."""
        if d.get("peft_type", "ZEST") != "ZEST":
            raise ValueError(f"{source} is not a ZEST config (peft_type={d.get('peft_type')!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        check_keys(d, names | {"peft_type"}, "ZestConfig", source)
        return cls(**{k: v for k, v in d.items() if k != "peft_type"})

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """peft's ``adapter_config.json``, and a model card that says what the adapter is and what loading it
        needs (peft writes its generic card just before; this puts ZEST's words at its top)."""
        super().save_pretrained(save_directory, **kwargs)
        _add_card_section(Path(save_directory), _FULL_CARD.format(
            n=len(self.selected_modules or []), head=self.modules_to_save or "none", version=_zest_version()))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: Optional[str] = None, **kwargs):
        """Load the ZEST config of a saved adapter or Trainer checkpoint, a local directory or a Hub repo id.

        Reads a full-mode adapter's ``adapter_config.json``, or a LoRA-mode adapter's ``zest_selection.json``, or a
        JSON file written by :meth:`to_json`, and checks the adapter's weights file against the selection. ``kwargs``
        that ``huggingface_hub.hf_hub_download`` takes (``revision``, ``token``, ``cache_dir``...) go to it for a
        repo id; the others (those of ``PeftModel.from_pretrained``) are ignored.
        """
        location = Path(pretrained_model_name_or_path)
        path = location / subfolder if subfolder else location
        if path.is_file():
            return cls.from_json(path)
        if location.exists():
            where = str(path)
            if not path.is_dir():
                raise FileNotFoundError(f"no ZEST adapter at {path}: {location} has no subfolder {subfolder!r}")

            def fetch(name: str, required: bool = True) -> Path | None:
                return path / name if (path / name).is_file() else None
        else:
            from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

            repo = str(pretrained_model_name_or_path)
            where = f"{repo} (Hub{f', subfolder {subfolder}' if subfolder else ''})"
            hub = hub_kwargs(kwargs)

            def fetch(name: str, required: bool = True) -> Path | None:
                """The file, None if the repo lacks it; ``required``: a file that could not be looked up is an error
                (offline and not cached says nothing about the repo)."""
                import huggingface_hub

                try:
                    return Path(huggingface_hub.hf_hub_download(repo, name, subfolder=subfolder, **hub))
                except LocalEntryNotFoundError as e:
                    if not required:
                        return None
                    error = e
                except EntryNotFoundError:
                    return None
                except Exception as e:  # an unknown repo, a path that does not exist, no network
                    error = e
                raise FileNotFoundError(
                    f"no ZEST adapter at {where}: not a local directory or file, and {name} could not be fetched from "
                    f"the Hub ({type(error).__name__}: {error})")

        config = None
        adapter_cfg = fetch("adapter_config.json")
        if adapter_cfg is not None:
            data, source = read_json(adapter_cfg, "peft adapter config")
            if data.get("peft_type") == "ZEST":
                config = cls.from_dict(data, source=source)
        if config is None:
            selection = fetch(SELECTION_FILE)
            if selection is None:
                raise SelectionError(
                    f"{where} holds no ZEST selection (neither a ZEST adapter_config.json nor {SELECTION_FILE}); it "
                    "was not saved by a ZEST model."
                )
            config = cls.from_json(selection)
        weights = fetch(WEIGHTS_FILE, required=False)  # peft falls back to adapter_model.bin
        if weights is not None:
            # peft reads this config before it touches the base model, and the weights only after wrapping it:
            # checking the weights file here is what keeps a failed load from leaving the base changed
            check_adapter_weights(weights.parent, config)
        return config


def hub_kwargs(kwargs: dict) -> dict:
    """The keyword arguments among ``kwargs`` that ``huggingface_hub.hf_hub_download`` takes (``subfolder`` apart),
    as ``PeftModel.from_pretrained`` passes them on: the others are its own."""
    import inspect

    from huggingface_hub.file_download import hf_hub_download

    known = set(inspect.signature(hf_hub_download).parameters) - {"repo_id", "filename", "subfolder"}
    return {k: v for k, v in kwargs.items() if k in known}


WEIGHTS_FILE = "adapter_model.safetensors"


def check_adapter_weights(directory: Path, config: "ZestConfig") -> None:
    """Refuse a saved adapter whose weights file is unreadable (truncated, not safetensors) or holds another
    selection than its config: each selected module must have its tensors (``zest_layer`` in full mode, ``lora_A``
    / ``lora_B`` in LoRA mode) and no other module may. Reads only the file's header."""
    file = Path(directory) / WEIGHTS_FILE
    if not file.is_file() or not config.is_resolved:
        return
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt") as f:
            keys = list(f.keys())
    except Exception as e:  # safetensors raises its own error types for a torn or foreign file
        raise SelectionError(f"{file} is not a readable safetensors file ({type(e).__name__}: {e}): it is truncated "
                             "or was not written by save_pretrained; re-save or re-download the adapter. Nothing "
                             "was changed.") from None
    marks = (".zest_layer.",) if config.mode == "full" else (".lora_A.", ".lora_B.")
    owners = {f".{k}".split(m)[0].lstrip(".") for k in keys for m in marks if m in f".{k}"}
    selected = set(config.selected_modules)
    missing = sorted(n for n in selected if not any(o == n or o.endswith(f".{n}") for o in owners))
    foreign = sorted(o for o in owners if not any(o == n or o.endswith(f".{n}") for n in selected))
    if missing or foreign:
        raise SelectionError(
            f"{file} does not hold the selection its config names: no weights for {missing[:4]}, weights of "
            f"unselected modules {foreign[:4]}. The config and the weights come from different saves; re-save the "
            "adapter. Nothing was changed."
        )


_FULL_CARD = """## A ZEST adapter (full mode)

Written by [zest_hf](https://pypi.org/project/zest_hf/) {version}: {n} projections of the base model, trained in
place, and the head ({head}), saved as safetensors; `adapter_config.json` has `peft_type: ZEST` and the selection.
Loading needs zest_hf, imported first, so that peft knows the ZEST method:

```python
import zest_hf, peft                       # pip install zest_hf
model = peft.PeftModel.from_pretrained(base_model, "<this directory or repo>")
```

Without `import zest_hf`, peft stops with `KeyError: 'ZEST'`. `model.merge_and_unload()` gives a plain transformers
model holding the trained weights.
"""

_LORA_CARD = """## A LoRA adapter placed by ZEST

A stock peft LoRA adapter (`peft_type: LORA`), loadable without zest_hf; [zest_hf](https://pypi.org/project/zest_hf/)
{version} chose its {n} target modules from one training batch, and `zest_selection.json` records that selection
(`zest_hf.ZestConfig.from_pretrained(dir)` reads it back).
"""


def _zest_version() -> str:
    from .._version import __version__

    return __version__


def _add_card_section(directory: Path, section: str) -> None:
    """Put ``section`` at the top of the card's body in ``directory/README.md`` (created if missing)."""
    from ..serialization import write_atomic

    path = directory / "README.md"
    text = path.read_text() if path.exists() else ""
    if section.splitlines()[0] in text:
        return
    if text.startswith("---"):  # keep the YAML metadata block first
        end = text.index("---", 3) + 3
        text = text[:end] + "\n\n" + section + "\n" + text[end:].lstrip("\n")
    else:
        text = section + "\n" + text
    write_atomic(path, text)


class ZestLoraConfig(LoraConfig):
    """A stock :class:`peft.LoraConfig` (same fields, same ``adapter_config.json``) that also records the ZEST
    selection it came from in ``zest_selection.json``. Stock peft, without zest_hf, loads what it saves."""

    zest_config = None  # a plain class attribute, not a dataclass field: it stays out of adapter_config.json

    @classmethod
    def from_lora(cls, lora: PeftConfig, zest_config: ZestConfig) -> ZestLoraConfig:
        """``lora`` (a LoRA-mode adapter's saved stock config, every field as saved) recording ``zest_config``, so
        that saving the loaded adapter again writes the selection too."""
        if not isinstance(lora, LoraConfig):
            raise SelectionError(
                f"the adapter's {SELECTION_FILE} is a LoRA-mode ZEST selection, but its adapter_config.json is a "
                f"{type(lora).__name__} (peft_type {lora.peft_type}); the two files come from different saves: "
                "re-save the adapter."
            )
        cfg = cls(**{f.name: getattr(lora, f.name) for f in dataclasses.fields(lora) if f.init})
        cfg.zest_config = zest_config
        return cfg

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        super().save_pretrained(save_directory, **kwargs)
        if self.zest_config is not None:
            self.zest_config.to_json(Path(save_directory) / SELECTION_FILE)
            _add_card_section(Path(save_directory), _LORA_CARD.format(
                n=len(self.zest_config.selected_modules), version=_zest_version()))

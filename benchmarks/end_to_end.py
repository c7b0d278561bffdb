"""End to end: does ZEST fine-tuning win? Accuracy, step time and peak memory against every baseline (Tables 3, 4).

Three phases, each resumable (every finished run is one JSON line in ``--out-dir/runs.jsonl``; a rerun skips it):

``accuracy``
    For every model and task, every method is trained with a stock ``transformers.Trainer`` on the same data, for
    the same number of steps, batch and sequence length. The task head (new, seeded) always trains with the head
    learning rate tuned on head-only; the method's own weights get a learning rate chosen from a small grid on the
    validation split (seed 0); the chosen rate is then run with the other seeds (``SEEDS``: 0-4). Test accuracy:
    mean and std over the seeds. Validation accuracy is also logged during training (the validation curves).

    ZEST's predictor for a task is trained WITHOUT that task's ground truth (leave-one-task-out, on every model's
    other tasks; built once into ``--out-dir/predictors/``), and so is the best single metric's choice: no result
    leans on having seen the task.

``cost``
    For every model and method, a fresh worker process builds the trainable model exactly as the accuracy phase
    does and times one training step (forward, backward, AdamW) on the same batch, with its peak memory
    (``benchmarks/measure.py``). Ratios are to full fine-tuning measured in the same run.

``report``
    ``end_to_end.md`` (Table 3: test accuracy and trainable parameters; Table 4: step time and peak memory ratios;
    the targets, each marked met or not),
    ``curves.png`` (validation accuracy during training: ZEST@5 vs full FT vs Random@5, the paper's Figure 3) and
    ``accuracy_vs_memory.png`` (where cost-aware selection lands against plain top-k).

Methods: head only; full fine-tuning; ZEST@3/5/10 (full mode: the selected weights train in place); Random@5 (draw
= seed); best single zero-shot metric@5; ground-truth contribution@5 (the oracle: the top-5 of the collected ground
truth; for SmolLM2 among its collected 42-layer subset); LoRA r=8 on every projection; LoRA r=8 on ZEST@5 only; and
ZEST@5 with cost-aware selection (``ZestConfig(cost_weight=...)``). Those are Table 3, reported on seeds 0-2.

The anchors, what users pick instead (Table 5, 5 seeds): at each budget of the sweep (1.5, 3, 10 and 30 % of the
projection parameters) ZEST, Spectrum (``predictor="spectrum"``), Random matched on ZEST's parameter count (a
fresh draw per seed) and cost-aware ZEST; LoRA r=16 on every projection; LISA. The report pairs them by task and
seed (``zest_hf.research.stats.paired_bootstrap``: mean difference with a 95 % bootstrap interval over the cells),
draws ``forest.png`` (the differences) and ``pareto.png`` (accuracy against step time and peak memory), and checks
the anchors' targets. Run the cells that decide the headline first, e.g.
``--models minilm --methods "head only,ZEST 10%,Spectrum 10%,Random 10% matched,full FT"``.

    python benchmarks/end_to_end.py                                  # everything, both models (hours on a CPU)
    python benchmarks/end_to_end.py --models minilm --phase accuracy # one phase, one model
    python benchmarks/end_to_end.py --phase report                   # tables and plots from what is there
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from measure import run_worker, time_and_peak  # noqa: E402

from zest_hf.contrib import read_jsonl  # noqa: E402

# Per model: the fine-tuning budget, its tasks (classification tasks with ground truth in predictors/data), the grid
# of learning rates of each method family, and how many validation points the curves get.
# CPU-sized: on 2 cores a MiniLM full fine-tuning step of 16 x 64 tokens takes ~1 s and SmolLM2's ~5 s, and
# evaluation is a large share of each run, so validation and test sets are subsets and the grids have two rates.
BUDGETS = {
    "minilm": dict(steps=100, batch_size=16, max_length=64, val_examples=256, test_examples=500, curve_points=4,
                   # the first three are Table 3's; the other three give the anchors' comparison its power
                   tasks=["bigbench:multiemo/all_sentence_en", "bigbench:fact_checker/fever", "bbc_news",
                          "twitter_sentiment", "bigbench:mnist_ascii", "bigbench:cs_algorithms/valid_parentheses"],
                   grids={"head": [3e-3, 1e-2], "full": [3e-5, 1e-4], "sparse": [3e-4, 1e-3], "lora": [1e-3, 3e-3]}),
    "smollm2": dict(steps=40, batch_size=8, max_length=64, val_examples=128, test_examples=300, curve_points=2,
                    # SmolLM2 tasks whose ground truth separates (predictors/data/README.md): valid_parentheses with
                    # a classification head, goal_step_wikihow as a decoder does multiple choice (the layers alone
                    # train on the gold answer's LM loss; accuracy by log-likelihood; "head only" = untrained).
                    # On fever and multiemo nothing but the head learns; twitter's first layers did not beat its head.
                    # Every SmolLM2 test split is smaller than test_examples (valid_parentheses 100, the multiple
                    # choice ones 195-255): each is used whole. timedial: the decoder task whose ground truth
                    # separates most clearly (+17 points over the untrained model), added beside social_iqa, where
                    # neither ZEST@5 nor Random@5 beat the untrained model at this budget's rates.
                    # bbc_news: as SFT treats a decoder's classification (label names scored by log-likelihood, no
                    # new head; with a head it did not separate), admitted by the same pilot as every task
                    # (scripts/pilot_tasks.py: one layer 0.816 against the untrained model's 0.377), the one SmolLM2
                    # task that needs no BIG-bench package.
                    tasks=["bigbench:cs_algorithms/valid_parentheses", "bigbench:goal_step_wikihow/step_inference",
                           "bigbench:social_iqa", "bigbench:timedial", "bbc_news"],
                    loglik_classification=["bbc_news"],
                    grids={"head": [3e-3, 1e-2], "full": [1e-5, 3e-5], "sparse": [1e-4, 3e-4], "lora": [1e-3, 3e-3]}),
}
SEEDS = [0, 1, 2, 3, 4]
# A method's mean over tasks counts a task once the method has this many seeds there (Table 3 was run with 3).
MIN_SEEDS = 3
# A paired comparison is reported from this many task x seed cells (one task's seeds): a bootstrap over fewer is
# degenerate (one cell gives a zero-width interval and a verdict it cannot support).
MIN_CELLS = 5
# Trainable budgets of the sweep, as fractions of the projection (candidate) parameters. The smallest is 1.5 %, not
# 1 %: MiniLM's smallest projection alone holds 1.39 % of its projection parameters.
SWEEP = (0.015, 0.03, 0.10, 0.30)


def budget_of(model_name: str) -> dict:
    """The model's budget; a model not in BUDGETS (a path or Hub id) gets MiniLM's, overridable from the CLI."""
    return BUDGETS.get(model_name, BUDGETS["minilm"])


@dataclass(frozen=True)
class Method:
    """One way of choosing what trains. ``kind`` says how the model is built; ``family`` picks the LR grid.

    ``k`` (layers) or ``budget`` (a fraction of the projection parameters) sizes a selection; ``r`` is the LoRA
    rank (alpha = r); ``lisa`` is LISA's (active blocks, steps between draws); ``closest`` makes a matched random
    draw land as near ZEST's parameter count as it can rather than at most at it.
    """

    name: str
    # head_only | full | zest | random | single | oracle | lora_all | lora_zest | spectrum | random_matched | lisa
    kind: str
    family: str
    k: int | None = None
    cost_weight: float = 0.0
    budget: float | None = None
    r: int = 8
    lisa: tuple[int, int] | None = None
    closest: bool = False  # random_matched: as close to ZEST's parameter count as the sizes allow, above or below


def pct(budget: float) -> str:
    return f"{budget * 100:g}%"


METHODS = [
    Method("head only", "head_only", "head"),
    Method("full FT", "full", "full"),
    Method("ZEST@3", "zest", "sparse", 3),
    Method("ZEST@5", "zest", "sparse", 5),
    Method("ZEST@10", "zest", "sparse", 10),
    Method("Random@5", "random", "sparse", 5),
    Method("best metric@5", "single", "sparse", 5),
    Method("oracle@5", "oracle", "sparse", 5),
    Method("LoRA all", "lora_all", "lora"),
    Method("LoRA ZEST@5", "lora_zest", "lora", 5),
    Method("ZEST@5 cost 0.5", "zest", "sparse", 5, 0.5),
]
# Table 3's methods: reported as they were run (3 seeds); the anchors and the sweep below are the paired study.
TABLE3 = [m.name for m in METHODS]
# What users pick instead of ZEST, at matched budgets. Spectrum: cognitivecomputations/spectrum's SNR, each
# projection type the same share (predictor="spectrum"); Random matched: random projections holding as many
# parameters as ZEST's selection at that budget on the same task and seed (zest_hf.research.baselines.random_matched,
# a fresh draw per seed; at most as many parameters, and "closest": as near as the sizes allow, above or below: where
# projection sizes differ only by their biases, "at most" can leave a whole layer out); LISA: LMFlow's defaults
# (2 active blocks, re-drawn every 20 steps; embeddings and head always train) at full fine-tuning's rates.
for _b in SWEEP:
    METHODS += [Method(f"ZEST {pct(_b)}", "zest", "sparse", budget=_b),
                Method(f"Spectrum {pct(_b)}", "spectrum", "sparse", budget=_b),
                Method(f"Random {pct(_b)} matched", "random_matched", "sparse", budget=_b),
                Method(f"Random {pct(_b)} closest", "random_matched", "sparse", budget=_b, closest=True),
                Method(f"ZEST {pct(_b)} cost 0.5", "zest", "sparse", budget=_b, cost_weight=0.5)]
METHODS += [Method("LoRA r16 all", "lora_all", "lora", r=16), Method("LISA", "lisa", "full", lisa=(2, 20))]
BY_NAME = {m.name: m for m in METHODS}


# ------------------------------------------------------------------------------------------- what a task needs
def model_family(model: str) -> str:
    """The model's architecture family (:func:`zest_hf.predictor.family.family_of`), read from the layers of any of
    its probes in predictors/data (a model without one has no ground truth to train a family predictor on)."""
    from zest_hf.predictor.family import family_of
    from zest_hf.probe import ProbeResult

    probes = sorted((ROOT / "predictors" / "data" / "probes" / model).glob("*.json"))
    return family_of(ProbeResult.from_json(probes[0]).layers) if probes else "other"


def selectors_dir(out_dir: Path, task: str, family: str = "other") -> Path:
    """Where the leave-one-task-out predictor and ``selection_info.json`` of ``task`` live: one per task for the
    pooled predictor (shared by the models that have the task), one per family and task for a decoder's."""
    from zest_hf.contrib import task_slug

    return out_dir / "predictors" / (f"loto-{task_slug(task)}" if family == "other"
                                     else f"loto-{family}-{task_slug(task)}")


def loto_selectors(model: str, task: str, out_dir: Path, arch: str, normalization: str) -> dict:
    """The leave-one-task-out predictor (a directory) and best single metric for ``task``; built once, then reused
    (so that every run of the benchmark uses the same ones even while the ground-truth data grows). As
    ``predictor="auto"`` does, a decoder's predictor is trained on decoders' ground truth only, any other model's on
    every model's."""
    from zest_hf.evaluation import FEATURES, best_single_metric, is_decoder, load_model_tasks
    from zest_hf.predictor import train_predictor

    family = model_family(model)
    d = selectors_dir(out_dir, task, family)
    info_path = d / "selection_info.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        info["predictor"] = str(d)  # where it is in this checkout (the file may hold another machine's path)
        return info
    data = load_model_tasks(ROOT / "predictors" / "data")
    train = [m for m in data if m.task != task and (family != "decoder" or is_decoder(m))]
    if not train:
        raise SystemExit(f"no ground truth without {task}: collect other tasks first (scripts/collect_ground_truth.py)")
    pred = train_predictor(train, FEATURES, arch=arch, normalization=normalization, seed=0)
    pred.save_pretrained(d)
    col, sign = best_single_metric(train, FEATURES)
    info = {"predictor": str(d), "single": f"metric:{'-' if sign < 0 else ''}{col}",
            "trained_on": [m.key for m in train], "arch": arch, "normalization": normalization,
            "depth_knots": pred.depth_knots, "seed": 0, "family": family}
    info_path.write_text(json.dumps(info, indent=1))
    return info


def oracle_layers(model: str, task: str, k: int) -> list[str]:
    """Top-k layers of the collected ground truth (seed-averaged)."""
    from zest_hf.contrib import HEAD_ONLY
    from zest_hf.study import load_ground_truth

    gt = load_ground_truth(ROOT / "predictors" / "data")
    g = gt[(gt["model"] == model) & (gt["task"] == task) & (gt["layer"] != HEAD_ONLY)]
    if g.empty:
        raise SystemExit(f"no ground truth for {model}/{task}: the oracle needs it")
    if g["layer"].nunique() < k:
        raise SystemExit(f"only {g['layer'].nunique()} layers of {model}/{task} have ground truth, the oracle needs "
                         f">= {k}: finish scripts/collect_ground_truth.py --model {model} first")
    return list(g.groupby("layer")["score"].mean().sort_values(ascending=False, kind="stable").index[:k])


def zest_config(method: Method, model, selectors: dict, oracle: list[str] | None, seed: int):
    """The ZestConfig of a sparse or LoRA-on-selection method (unresolved ones probe inside prepare_trainer)."""
    import zest_hf
    from zest_hf.modeling import find_head

    if method.kind in ("zest", "lora_zest"):
        return zest_hf.ZestConfig(top_k=method.k, budget=method.budget, predictor=selectors["predictor"],
                                  cost_weight=method.cost_weight, mode="lora" if method.kind == "lora_zest" else "full",
                                  probe_seed=seed)
    if method.kind == "spectrum":
        return zest_hf.ZestConfig(top_k=method.k, budget=method.budget, predictor="spectrum", probe_seed=seed)
    if method.kind == "single":
        return zest_hf.ZestConfig(top_k=method.k, predictor=selectors["single"], probe_seed=seed)
    targets = zest_hf.find_targets(model)
    names = [t.name for t in targets]
    if method.kind == "random":
        chosen = [names[i] for i in np.random.default_rng(seed).choice(len(names), method.k, replace=False)]
    elif method.kind == "random_matched":
        from zest_hf.research.baselines import random_matched

        chosen = random_matched([t.to_dict() for t in targets], selectors["matched_params"], seed,
                                closest=method.closest)
    elif method.kind == "oracle":
        chosen = oracle
    else:
        raise ValueError(method.kind)
    return zest_hf.ZestConfig(selected_modules=chosen, modules_to_save=find_head(model))


ZEST_KINDS = ("zest", "lora_zest", "single", "random", "oracle", "spectrum", "random_matched")
PROBING_KINDS = ("zest", "lora_zest", "single", "spectrum")


def build(method: Method, model, selectors: dict, oracle, seed: int, trainer=None, batch=None):
    """Make ``model`` train as ``method`` says; returns ``(model to train, resolved ZestConfig or None)``.

    The ZestConfig methods go through ``zest_hf.prepare_trainer(trainer, config)`` when a Trainer is given (built
    on the plain model: the probe then uses the Trainer's own first batch), else through ``zest_hf.select`` on
    ``batch`` and ``peft.get_peft_model``. The others change the model before any Trainer sees it.
    """
    import peft

    import zest_hf
    from zest_hf.modeling import find_head

    head = find_head(model)
    if method.kind in ("head_only", "full"):
        for n, p in model.named_parameters():
            p.requires_grad_(method.kind == "full" or n.split(".")[0] in head)
        return model, None
    if method.kind == "lora_all":
        names = [t.name for t in zest_hf.find_targets(model)]
        return peft.get_peft_model(model, peft.LoraConfig(target_modules=names, r=method.r, lora_alpha=method.r,
                                                          modules_to_save=head)), None
    if method.kind == "lisa":
        # every block trainable while the optimizer is built; LisaCallback then freezes all but its draw
        for p in model.parameters():
            p.requires_grad_(True)
        return model, None
    cfg = zest_config(method, model, selectors, oracle, seed)
    if trainer is not None:
        cfg = zest_hf.prepare_trainer(trainer, cfg)
        return trainer.model, cfg
    cfg = zest_hf.select(model, batch, cfg)
    target = cfg.to_lora_config() if cfg.mode == "lora" else cfg
    return peft.get_peft_model(model, target), cfg


def _in_head(name: str, head: list[str]) -> bool:
    return any(f".{h}." in f".{name}" for h in head)


def optimizer_groups(model, head: list[str], lr: float, head_lr: float) -> list[dict]:
    """Two AdamW groups: the method's own trainable weights at ``lr``, the (new) task head at ``head_lr``."""
    own, head_params = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (head_params if _in_head(n, head) else own).append(p)
    groups = [{"params": head_params, "lr": head_lr}] if head_params else []
    if own:
        groups.append({"params": own, "lr": lr})
    return groups


# ----------------------------------------------------------------------------------------------- accuracy phase
def run_one(model_name: str, task_name: str, method: Method, lr: float, head_lr: float, seed: int, budget: dict,
            selectors: dict, oracle) -> dict:
    """Train one (method, lr, seed) with a Trainer; validation curve, final validation and test accuracy."""
    import torch
    import transformers

    from zest_hf import find_targets
    from zest_hf.modeling import find_head
    from zest_hf.models import load_model
    from zest_hf.tasks import collator_for, load_task, prepare_tokenizer

    task = load_task(task_name)
    kind = head_kind(model_name, task)
    transformers.set_seed(seed)  # the head's initialisation
    model, tok = load_model(model_name, kind, num_labels=task.num_labels if kind == "seq_cls" else None)
    prepare_tokenizer(tok, model)
    sizes = {t.name: t.num_params for t in find_targets(model)}  # the projections a budget is a fraction of
    # a decoder on multiple choice has no new head: the method's layers alone train on the gold answer's LM loss
    head = find_head(model) if kind == "seq_cls" else []
    train, val, test = _data(model_name, task, tok, budget, kind)
    if kind == "causal_lm" and method.kind == "head_only":
        # nothing to train: the untrained model, scored as the ground truth's baseline is (log-likelihood); the
        # same for every seed and rate, so scored once per process
        key = (model_name, task.name, json.dumps(budget, sort_keys=True))
        if key not in _UNTRAINED:
            _UNTRAINED[key] = {n: _choice_accuracy(model, tok, d, budget) for n, d in (("val", val), ("test", test))}
        acc = _UNTRAINED[key]
        total = sum(p.numel() for p in model.parameters())
        return {"val_acc": acc["val"], "test_acc": acc["test"], "curve": [(budget["steps"], acc["val"])],
                "train_s": 0.0, "trainable": 0, "trainable_wo_head": 0, "total_params": total, "selected": None,
                "predictor": None}

    class TwoRateTrainer(transformers.Trainer):
        """The stock Trainer, with the new head at its own learning rate (the same for every method)."""

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                self.optimizer = torch.optim.AdamW(optimizer_groups(model or self.model, head, lr, head_lr),
                                                   weight_decay=0.0)
            return self.optimizer

    def accuracy(p):
        logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        return {"accuracy": float((logits.argmax(-1) == p.label_ids).mean())}

    every = max(1, budget["steps"] // budget["curve_points"])
    loglik = kind == "causal_lm"
    args = transformers.TrainingArguments(
        output_dir=str(Path("/tmp") / "zest_e2e"), max_steps=budget["steps"],
        per_device_train_batch_size=budget["batch_size"], per_device_eval_batch_size=64, learning_rate=lr,
        weight_decay=0.0, warmup_steps=0, lr_scheduler_type="linear", seed=seed, data_seed=seed,
        eval_strategy="no" if loglik else "steps", eval_steps=every, save_strategy="no", logging_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0)
    trainer_kwargs = dict(args=args, train_dataset=train, data_collator=collator_for(kind, tok))
    if not loglik:
        trainer_kwargs.update(eval_dataset=val, compute_metrics=accuracy)
    cfg = None
    if method.kind not in ZEST_KINDS:
        model, _ = build(method, model, selectors, oracle, seed)
    trainer = TwoRateTrainer(model=model, **trainer_kwargs)
    trainer.remove_callback(transformers.PrinterCallback)  # the curve is read from log_history; keep stdout quiet
    if method.kind == "lisa":
        from zest_hf.train import LisaCallback

        n_blocks, interval = method.lisa
        trainer.add_callback(LisaCallback(trainer.model, n_layers=n_blocks, interval=interval, seed=seed))
    curve = []
    if loglik:  # the Trainer's evaluate cannot score choices: the curve points come from this callback
        trainer.add_callback(_choice_curve(lambda: _choice_accuracy(trainer.model, tok, val, budget), every, curve))
    if method.kind in ZEST_KINDS:
        _, cfg = build(method, model, selectors, oracle, seed, trainer=trainer)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0 - sum(c[2] for c in curve)  # training time, without the curve's scoring
    if loglik:
        curve = [(step, acc) for step, acc, _ in curve]
        if not curve or curve[-1][0] != budget["steps"]:
            curve.append((budget["steps"], _choice_accuracy(trainer.model, tok, val, budget)))
        test_acc = _choice_accuracy(trainer.model, tok, test, budget)
    else:
        curve = [(h["step"], h["eval_accuracy"]) for h in trainer.state.log_history if "eval_accuracy" in h]
        if not curve or curve[-1][0] != budget["steps"]:
            curve.append((budget["steps"], trainer.evaluate()["eval_accuracy"]))
        test_acc = trainer.evaluate(test, metric_key_prefix="test")["test_accuracy"]
    total = sum(p.numel() for p in trainer.model.parameters())
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    head_params = sum(p.numel() for n, p in trainer.model.named_parameters() if p.requires_grad and _in_head(n, head))
    return {"val_acc": curve[-1][1], "test_acc": test_acc, "curve": curve, "train_s": wall,
            "trainable": trainable, "trainable_wo_head": trainable - head_params, "total_params": total,
            "selected": cfg.selected_modules if cfg is not None else None,
            "projection_params": sum(sizes.values()),
            "selected_params": sum(sizes[n] for n in cfg.selected_modules) if cfg is not None else None,
            "predictor": cfg.selection_info.get("predictor") if cfg is not None and cfg.selection_info else None}


def head_kind(model_name: str, task) -> str:
    """``seq_cls`` for a classification task; for multiple choice, a decoder's own LM head scored by log-likelihood
    (``causal_lm``, the ground truth's protocol for decoders); a decoder's classification task listed in its
    budget's ``loglik_classification`` also takes the LM head, its label names scored as choices (what
    ``choose_head`` gives a decoder by default). An encoder's multiple-choice head is not benchmarked."""
    from zest_hf.workflow import choose_head

    loglik = task.name in budget_of(model_name).get("loglik_classification", ())
    kind = choose_head(model_name, task.kind, decoder_classification="causal_lm" if loglik else "seq_cls")
    if kind not in ("seq_cls", "causal_lm"):
        raise SystemExit(f"{task.name} is multiple choice and {model_name} is an encoder: end_to_end benchmarks "
                         "classification tasks, and multiple choice on decoders only")
    return kind


def _choice_accuracy(model, tok, split, budget: dict) -> float:
    """Log-likelihood choice accuracy (zest_hf.tasks.score_choices, which puts the model back in its mode)."""
    from zest_hf.tasks import score_choices

    return float(score_choices(model, tok, split, max_length=budget["max_length"], batch_size=64)["accuracy"])


def _choice_curve(score, every: int, curve: list):
    """A TrainerCallback that scores the validation choices every ``every`` steps into ``curve`` as
    ``(step, accuracy, seconds spent scoring)``."""
    import transformers

    class ChoiceCurve(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every == 0:
                t0 = time.perf_counter()
                acc = score()
                curve.append((state.global_step, acc, time.perf_counter() - t0))

    return ChoiceCurve()


_DATA: dict = {}
_UNTRAINED: dict = {}


def _data(model_name: str, task, tok, budget: dict, kind: str = "seq_cls"):
    """Train / validation / test subsets, once per process: tokenised for ``seq_cls``; for ``causal_lm`` the
    training split is tokenised (prompt + gold answer, loss on the answer) and validation / test stay raw
    (``score_choices`` scores every choice). Training uses a fixed subset of twice the examples the budget reads
    (the same for every method and seed; each seed shuffles it its own way), so that a run does not spend longer
    tokenising a 40k-example split than training."""
    from zest_hf.tasks import tokenize_split

    key = (model_name, task.name, kind, budget["max_length"], budget["steps"], budget["batch_size"],
           budget["val_examples"], budget["test_examples"])
    if key not in _DATA:
        L = budget["max_length"]
        tr = task.splits["train"]
        n = min(len(tr), 2 * budget["steps"] * budget["batch_size"])
        tr = tr.select(np.sort(np.random.default_rng(0).permutation(len(tr))[:n]))
        parts = [tr] + [task.splits[s].select(range(min(budget[f"{k}_examples"], len(task.splits[s]))))
                        for s, k in (("validation", "val"), ("test", "test"))]
        if kind == "causal_lm":
            _DATA[key] = [tokenize_split(parts[0], tok, model_kind=kind, max_length=L)] + parts[1:]
        else:
            _DATA[key] = [tokenize_split(p, tok, model_kind=kind, max_length=L) for p in parts]
    return _DATA[key]


def matched_params(runs_path: Path, model_name: str, task: str, method: Method, seed: int) -> int:
    """The parameter count a ``random_matched`` run must hold: what ZEST at the same budget selected on the same
    task and seed (ZEST's budget takes the best layers that fit, which usually leaves part of the budget unused;
    the random draw is matched to what ZEST holds, not to the budget)."""
    zest = f"ZEST {pct(method.budget)}"
    for r in read_jsonl(runs_path):
        if (r["model"], r["task"], r["method"], r["seed"]) == (model_name, task, zest, seed) \
                and r["budget"] == key_budget(model_name) and r.get("selected_params"):
            return int(r["selected_params"])
    raise SystemExit(f"{method.name} on {model_name}/{task} seed {seed} is matched to {zest}'s selection: run "
                     f"{zest} first (--methods '{zest},{method.name}')")


def key_budget(model_name: str) -> dict:
    """What a run line records of its model's budget; a run counts for the current design only when it matches."""
    budget = budget_of(model_name)
    return {k: budget[k] for k in ("steps", "batch_size", "max_length", "val_examples", "test_examples")}


def best_lr(rows: list[dict]) -> float:
    """The tuning seed's best learning rate: highest validation accuracy, the smaller rate on a tie."""
    return max(rows, key=lambda r: (r["val_acc"], -r["lr"]))["lr"]


def check_task_data(models, phase: str) -> None:
    """Every task the phase will read loads on this machine, checked before the first run: a missing data package
    (or a misspelt task) stops the invocation at once, naming each such task and what to install, instead of
    after hours of work on the tasks before it. The cost phase reads only each model's first task."""
    from zest_hf.errors import MissingDataPackageError
    from zest_hf.tasks import load_task

    if phase not in ("all", "accuracy", "cost"):
        return
    wanted = {t for m in models for t in (budget_of(m)["tasks"] if phase != "cost" else budget_of(m)["tasks"][:1])}
    problems = {}
    for task in sorted(wanted):
        try:
            load_task(task)
        except (MissingDataPackageError, FileNotFoundError, ValueError) as e:
            problems[task] = f"{type(e).__name__}: {e}"
    if problems:
        raise SystemExit("nothing was run: these tasks cannot be read on this machine\n"
                         + "\n".join(f"  {t}: {why}" for t, why in problems.items())
                         + "\nInstall what each names, or leave the task out with --tasks.")


def accuracy_phase(models, methods, out_dir: Path, arch: str, normalization: str) -> None:
    from tqdm.auto import tqdm

    runs_path = out_dir / "runs.jsonl"
    for model_name in models:
        budget = budget_of(model_name)
        kb = key_budget(model_name)
        for task in budget["tasks"]:
            # Built only when a method of this invocation needs them: the leave-one-task-out predictor is frozen
            # when first built, so methods that do not use it (head only, full FT, Random, LoRA all) can run while
            # ground truth of other tasks is still being collected; and the oracle needs this task's own.
            need = {m.kind for m in methods}
            selectors = (loto_selectors(model_name, task, out_dir, arch, normalization)
                         if need & {"zest", "lora_zest", "single"} else {})
            oracle = oracle_layers(model_name, task, 5) if "oracle" in need else None
            # Head-only first: its tuned head learning rate is every other method's head rate. An invocation without
            # it still needs that rate: taken from head-only's finished grid, or head-only joins the invocation.
            order = sorted(methods, key=lambda m: m.kind != "head_only")
            if order[0].kind != "head_only":
                order.insert(0, BY_NAME["head only"])
            plan = sum(len(budget["grids"][m.family]) + len(SEEDS) - 1 for m in order)
            bar = tqdm(total=plan, desc=f"{model_name} {task}", unit="run")
            head_lr = None
            for m in order:
                lrs = budget["grids"][m.family]
                for stage in ("grid", "seeds"):
                    done = [r for r in read_jsonl(runs_path) if r["model"] == model_name and r["task"] == task
                            and r["method"] == m.name and r["budget"] == kb]
                    if stage == "grid":
                        todo = [(lr, SEEDS[0]) for lr in lrs]
                    else:
                        grid = [r for r in done if r["seed"] == SEEDS[0]]
                        todo = [(best_lr(grid), s) for s in SEEDS[1:]]
                    for lr, seed in todo:
                        if any(r["lr"] == lr and r["seed"] == seed for r in done):
                            bar.update()
                            continue
                        hl = lr if m.kind == "head_only" else head_lr
                        sel = selectors
                        if m.kind == "random_matched":
                            sel = {**selectors, "matched_params": matched_params(runs_path, model_name, task, m, seed)}
                        res = run_one(model_name, task, m, lr, hl, seed, budget, sel, oracle)
                        row = {"model": model_name, "task": task, "method": m.name, "lr": lr, "head_lr": hl,
                               "seed": seed, "budget": kb, **res}
                        with runs_path.open("a") as fh:
                            fh.write(json.dumps(row) + "\n")
                        bar.update()
                        bar.set_postfix(method=m.name, lr=lr, seed=seed, test=f"{res['test_acc']:.3f}")
                if m.kind == "head_only":
                    grid = [r for r in read_jsonl(runs_path) if r["model"] == model_name and r["task"] == task
                            and r["method"] == m.name and r["seed"] == SEEDS[0] and r["budget"] == kb]
                    head_lr = best_lr(grid)
            bar.close()


# ---------------------------------------------------------------------------------------------------- cost phase
def _cost_batch(model_name: str):
    """The cost phase's model and batch: one fixed batch, every sequence padded to the full length, so that every
    method (and the selection worker) sees exactly the same tokens."""
    import torch

    from zest_hf.tasks import load_task
    from zest_hf.workflow import prepare

    budget = budget_of(model_name)
    # the head the accuracy phase trains on this task (a decoder's classification task gets a classification head,
    # where prepare's default would keep the LM head)
    head = head_kind(model_name, load_task(budget["tasks"][0]))
    prep = prepare(model_name, budget["tasks"][0], head=head, batch_size=budget["batch_size"],
                   max_length=budget["max_length"], seed=0)
    batch = dict(prep.batch)
    pad = budget["max_length"] - batch["input_ids"].shape[1]
    if pad > 0:
        batch["input_ids"] = torch.nn.functional.pad(batch["input_ids"], (0, pad),
                                                     value=prep.tokenizer.pad_token_id or 0)
        batch["attention_mask"] = torch.nn.functional.pad(batch["attention_mask"], (0, pad), value=0)
        if "token_type_ids" in batch:
            batch["token_type_ids"] = torch.nn.functional.pad(batch["token_type_ids"], (0, pad), value=0)
    return prep.model, batch


def select_worker(model_name: str, method_name: str, out_dir: Path) -> dict:
    """Resolve a probing method's ZestConfig (probe + rank + choose) and return it as JSON. Run in its own process
    so that the probe's memory, which the allocator keeps after it is freed, never counts in a step's peak."""
    import zest_hf

    model, batch = _cost_batch(model_name)
    d = selectors_dir(out_dir, budget_of(model_name)["tasks"][0], model_family(model_name))
    selectors = {**json.loads((d / "selection_info.json").read_text()), "predictor": str(d)}
    cfg = zest_config(BY_NAME[method_name], model, selectors, None, 0)
    return {"config": zest_hf.select(model, batch, cfg).to_json()}


def cost_worker(model_name: str, method_name: str, out_dir: Path, repeats: int) -> dict:
    import peft
    import torch

    import zest_hf
    from zest_hf.modeling import find_head

    budget = budget_of(model_name)
    task = budget["tasks"][0]
    method = BY_NAME[method_name]
    model, batch = _cost_batch(model_name)
    head = find_head(model)
    if method.kind in PROBING_KINDS:
        # Selected in a separate process (see select_worker); here the resolved config is only applied.
        cfg = zest_hf.ZestConfig.from_json(run_worker([__file__, "--select-worker", model_name, method_name,
                                                       "--out-dir", str(out_dir)])["config"])
        model = peft.get_peft_model(model, cfg.to_lora_config() if cfg.mode == "lora" else cfg)
    else:
        oracle = oracle_layers(model_name, task, 5) if method.kind == "oracle" else None
        selectors = {}
        if method.kind == "random_matched":  # as many parameters as ZEST's selection at the budget
            zest = zest_hf.ZestConfig.from_json(run_worker([__file__, "--select-worker", model_name,
                                                            f"ZEST {pct(method.budget)}", "--out-dir",
                                                            str(out_dir)])["config"])
            sizes = {t.name: t.num_params for t in zest_hf.find_targets(model)}
            selectors = {"matched_params": sum(sizes[n] for n in zest.selected_modules)}
        model, cfg = build(method, model, selectors, oracle, 0, batch=batch)
    if method.kind == "lisa":
        from types import SimpleNamespace

        from zest_hf.train import LisaCallback

        # the step of one draw, its optimizer state only: a lower bound of LISA's memory, whose optimizer keeps the
        # state of every block drawn so far
        LisaCallback(model, n_layers=method.lisa[0], interval=method.lisa[1], seed=0).on_train_begin(
            None, SimpleNamespace(global_step=0), None)
    model.train()
    opt = torch.optim.AdamW(optimizer_groups(model, head, 1e-4, 1e-3), weight_decay=0.0)

    def step():
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    res = time_and_peak(step, repeats)
    res.update(model=model_name, method=method_name, task=task, batch=list(batch["input_ids"].shape),
               trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
               selected=cfg.selected_modules if cfg is not None else None,
               backward_cost=(cfg.selection_info or {}).get("backward_cost") if cfg is not None else None)
    return res


def cost_phase(models, methods, out_dir: Path, repeats: int) -> None:
    from tqdm.auto import tqdm

    path = out_dir / "cost.jsonl"
    done = {(r["model"], r["method"]) for r in read_jsonl(path)}
    jobs = [(mo, me.name) for mo in models for me in methods if (mo, me.name) not in done]
    for model_name, method_name in tqdm(jobs, desc="step cost", unit="method"):
        if BY_NAME[method_name].kind == "oracle":
            try:
                oracle_layers(model_name, budget_of(model_name)["tasks"][0], 5)
            except SystemExit as e:  # skipped, not failed: a rerun measures it once the ground truth is there
                print(f"skipping {model_name} {method_name}: {e}", file=sys.stderr)
                continue
        res = run_worker([__file__, "--cost-worker", model_name, method_name, "--out-dir", str(out_dir),
                          "--repeats", str(repeats)])
        with path.open("a") as fh:
            fh.write(json.dumps(res) + "\n")


# -------------------------------------------------------------------------------------------------------- report
def final_runs(runs):
    """Each (model, task, method)'s runs at its chosen rate (best validation accuracy on the first seed), on the
    current design's budget only (runs.jsonl keeps older designs' lines; they are not mixed in)."""
    import pandas as pd

    if runs.empty:
        return runs
    runs = runs[[r["budget"] == key_budget(r["model"]) for _, r in runs.iterrows()]]
    best = (runs[runs["seed"] == SEEDS[0]].sort_values(["val_acc", "lr"], ascending=[False, True])
            .groupby(["model", "task", "method"]).head(1)[["model", "task", "method", "lr"]])
    return pd.DataFrame(runs.merge(best, on=["model", "task", "method", "lr"]))


def accuracy_table(g, names: list[str], every_task: bool = False):
    """Test accuracy of ``names`` on one model's tasks: mean ± std over seeds per task, the mean over the tasks
    every listed method has finished with >= MIN_SEEDS seeds (so that every method's mean runs over the same tasks),
    the seed count and the trainable share. Returns ``(table, complete tasks, method x task means)``.

    ``every_task``: the mean runs over every task of the study instead, and a method that has not finished all of
    them gets none (a method still running would otherwise shrink everyone's mean to the tasks it reached); a
    ``tasks`` column counts the tasks each has finished."""
    import pandas as pd

    g = g[g["method"].isin(names)]
    agg = g.groupby(["method", "task"])["test_acc"].agg(["mean", "std", "count"])
    cell = (agg["mean"] * 100).round(1).astype(str) + " ± " + (agg["std"].fillna(0) * 100).round(1).astype(str)
    t = cell.unstack("task").fillna("")  # a run not there yet: blank
    order = [n for n in names if n in agg.index.get_level_values("method")]
    done = agg["count"].unstack("task").reindex(order)
    finished = done >= MIN_SEEDS
    complete = list(done.columns) if every_task else [c for c in done.columns if finished[c].all()]
    task_mean = agg["mean"].unstack("task")
    t.columns = [c.replace("bigbench:", "") for c in t.columns]
    t["mean"] = (task_mean[complete].mean(axis=1) * 100).round(1)
    if every_task:
        t["mean"] = t["mean"].where(finished.all(axis=1))
        t["tasks"] = finished.sum(axis=1).astype(int).astype(str) + f"/{len(complete)}"
    t["seeds"] = agg["count"].groupby("method").min()
    # the mean over runs: a selection (and so its size) differs from task to task and seed to seed
    tr = (g["trainable_wo_head"] / g["total_params"]).groupby(g["method"]).mean()
    t["trainable (w/o head)"] = (tr * 100).round(3).astype(str) + "%"
    if "selected_params" in g:  # a selection's share of the projection parameters (runs that record it)
        share = (pd.to_numeric(g["selected_params"]) / g["projection_params"]).groupby(g["method"]).mean()
        t["of projections"] = share.map(lambda v: f"{v * 100:.1f}%" if np.isfinite(v) else "")
    return t.reindex(order), complete, task_mean


def gap_to_full(g):
    """Each method's mean paired difference to full fine-tuning (points) over the (task, seed) cells both have:
    what the Pareto plot draws, comparable between methods that have reached different tasks. None below
    MIN_CELLS cells, as for the paired comparisons."""
    cells = g.pivot_table(index=["task", "seed"], columns="method", values="test_acc")
    if "full FT" not in cells:
        return {}
    diffs = {m: (cells[m] - cells["full FT"]).dropna() * 100 for m in cells.columns}
    return {m: d.mean() for m, d in diffs.items() if len(d) >= MIN_CELLS}


def comparisons() -> list[tuple[str, str]]:
    """The paired comparisons ``(a, b)`` the report makes (a - b), the headline ones first."""
    pairs = []
    for b in SWEEP:
        z = f"ZEST {pct(b)}"
        pairs += [(z, f"Spectrum {pct(b)}"), (z, f"Random {pct(b)} matched"), (z, f"Random {pct(b)} closest"),
                  # what "at most ZEST's parameters" cost the random draw, on the cells that have both draws
                  (f"Random {pct(b)} closest", f"Random {pct(b)} matched"),
                  (z, "full FT"), (f"ZEST {pct(b)} cost 0.5", z)]
    z = f"ZEST {pct(0.10)}"
    pairs += [(z, "LoRA all"), (z, "LoRA r16 all"), (z, "LISA"), (z, "head only"),
              ("ZEST@5", "Random@5"), ("ZEST@5", "full FT"), ("ZEST@5", "best metric@5"), ("ZEST@5", "LoRA all"),
              ("ZEST@10", "Random@5"), ("ZEST@10", "full FT"),
              # how much any choice of five layers can matter: the ground truth's own top 5 against a random five
              ("oracle@5", "Random@5"), ("ZEST@5", "oracle@5"), ("best metric@5", "Random@5")]
    return pairs


def paired_rows(final) -> list[dict]:
    """Every comparison with data (at least MIN_CELLS cells), per model and pooled over models: the mean paired
    difference in test accuracy points over (task, seed) cells both methods have, with its 95 % bootstrap interval
    over the cells."""
    import pandas as pd

    from zest_hf.research.stats import paired_bootstrap, verdict

    if final.empty:
        return []
    cells = final.pivot_table(index=["model", "task", "seed"], columns="method", values="test_acc")
    sizes = final.assign(selected_params=pd.to_numeric(final.get("selected_params"), errors="coerce")).pivot_table(
        index=["model", "task", "seed"], columns="method", values="selected_params") if "selected_params" in final \
        else pd.DataFrame()
    rows = []
    for a, b in comparisons():
        if a not in cells or b not in cells:
            continue
        both = cells[[a, b]].dropna()
        scopes = [(m, both.xs(m, level="model", drop_level=False)) for m in both.index.unique("model")]
        if len(scopes) > 1:
            scopes.append(("all models", both))
        for scope, c in scopes:
            if len(c) < MIN_CELLS:
                continue
            d = paired_bootstrap((c[a] - c[b]).to_numpy() * 100, seed=0)
            # b's selection size against a's, cell by cell: how well a "matched" baseline is matched
            ratio = (sizes[b] / sizes[a]).reindex(c.index).mean() if a in sizes and b in sizes else np.nan
            rows.append({"model": scope, "a": a, "b": b, "cells": d.n,
                         "tasks": len(c.index.droplevel("seed").unique()),  # (model, task) pairs
                         "mean": d.mean, "low": d.low, "high": d.high, "verdict": verdict(d), "params b/a": ratio})
    return rows


def report(out_dir: Path) -> str:
    import pandas as pd

    runs = pd.DataFrame(read_jsonl(out_dir / "runs.jsonl"))
    cost = pd.DataFrame(read_jsonl(out_dir / "cost.jsonl"))
    lines = ["# End to end: ZEST against every baseline", "",
             "Reproduce: `python benchmarks/end_to_end.py` (phases accuracy, cost, report; resumable). Seeds "
             f"{list(SEEDS)}; learning rates chosen on validation with seed {SEEDS[0]}; the task head's rate tuned on "
             "head only. ZEST's predictor and the best single metric are leave-one-task-out.", ""]
    table3, anchors = pd.DataFrame(), pd.DataFrame()
    task_means = []  # (model, task, method, mean test accuracy %) over the tasks every method has finished
    final = final_runs(runs)
    paired = paired_rows(final)
    # ZEST@5 and ZEST@10 (the top-k a user sets) join the sweep as two more of ZEST's budgets
    anchor_names = (["head only", "full FT", "LoRA all", "ZEST@5", "ZEST@10"]
                    + [m.name for m in METHODS if m.name not in TABLE3])
    if not final.empty:
        for model_name, g in final.groupby("model"):
            for title, names in (("Table 3", TABLE3), ("Table 5, the anchors and the budget sweep", anchor_names)):
                # Table 3 as it was designed, on its first MIN_SEEDS seeds, so that its methods' means stay paired
                # while the anchors' study adds seeds to some of them
                rows = g[g["seed"].isin(SEEDS[:MIN_SEEDS])] if title == "Table 3" else g
                t, complete, task_mean = accuracy_table(rows, names, every_task=title != "Table 3")
                if t.empty or (title != "Table 3" and t.index.isin(TABLE3).all()):
                    continue
                pending = sorted(set(rows[rows["method"].isin(names)]["task"]) - set(complete))
                over = ", ".join(c.replace("bigbench:", "") for c in complete) or "no task yet"
                if title == "Table 3":
                    note = "`mean`: over " + over + (f" (fewer than {MIN_SEEDS} seeds for some method, left out of "
                                                     f"it: {', '.join(pending)})" if pending else "")
                else:
                    gap = gap_to_full(rows)
                    t["- full FT"] = t.index.map(lambda m: round(gap[m], 1) if m in gap else np.nan)
                    note = (f"`mean`: over every task ({over}), for the methods that have finished all of them "
                            f"(>= {MIN_SEEDS} seeds each; `tasks` counts them). `- full FT`: the mean paired "
                            "difference to full fine-tuning in points over the task x seed cells both have, "
                            "comparable between methods at different stages (`pareto.png` draws it).")
                shown = t.astype(object).where(t.notna(), "")  # not there (yet): blank, not "nan"
                lines += [f"## {title} ({model_name}): test accuracy %, mean ± std over seeds", "", shown.to_markdown(),
                          "", note, ""]
                t["model"] = model_name
                if title == "Table 3":
                    table3 = pd.concat([table3, t])
                    for task in complete:
                        for method, v in task_mean[task].items():
                            task_means.append({"model": model_name, "task": task, "method": method, "acc": v * 100})
                else:
                    anchors = pd.concat([anchors, t])
        _curves(final, out_dir / "curves.png")
    if paired:
        p = pd.DataFrame(paired)
        p["95% CI"] = p.apply(lambda r: f"[{r['low']:+.1f}, {r['high']:+.1f}]", axis=1)
        p["mean"] = p["mean"].map(lambda v: f"{v:+.1f}")
        p["params b/a"] = p["params b/a"].map(lambda v: f"{v:.2f}" if np.isfinite(v) else "")
        lines += ["## Paired differences: test accuracy points, a - b", "",
                  "Each cell is one task and seed, both methods trained on the same data in the same order with the "
                  "same head initialisation; the interval is a 95 % percentile bootstrap over the cells (10,000 "
                  "resamples, seed 0). win / loss: the interval lies above / below 0; tie: it holds 0. A comparison "
                  f"with fewer than {MIN_CELLS} cells (one task's seeds) is left out until its runs are there. "
                  "`params b/a`: b's selected projection parameters over a's, the mean over the cells (selections "
                  "only). `forest.png` draws them.", "",
                  p[["model", "a", "b", "tasks", "cells", "mean", "95% CI", "verdict", "params b/a"]].to_markdown(
                      index=False), ""]
        _forest(pd.DataFrame(paired), out_dir / "forest.png")
    if not cost.empty:
        for model_name, g in cost.groupby("model"):
            full = g[g["method"] == "full FT"]
            if full.empty:
                continue
            f = full.iloc[0]
            t = g.set_index("method")[["time_s", "peak_rss_mb", "trainable"]].copy()
            t["trainable"] = t["trainable"].astype(int)
            t["time vs full"] = (t["time_s"] / f["time_s"]).round(2)
            t["peak vs full"] = (t["peak_rss_mb"] / f["peak_rss_mb"]).round(2)
            t = t.reindex([m.name for m in METHODS if m.name in t.index])
            lines += [f"## Table 4 ({model_name}): one training step, batch {f['batch'][0]} x {f['batch'][1]}, "
                      f"{f['threads']} threads, median of {len(f['times_s'])} after a warm-up", "",
                      t.round(3).to_markdown(), ""]
        if not table3.empty:
            _acc_vs_memory(table3, cost, out_dir / "accuracy_vs_memory.png")
        if not anchors.empty:
            _pareto(anchors, cost, out_dir / "pareto.png")
            lines += ["`pareto.png`: Table 5's paired difference to full fine-tuning against each method's step "
                      "time and peak memory (Table 4), the budget sweep of each selection joined by a line.", ""]
    lines += _targets(pd.DataFrame(task_means), cost, paired)
    text = "\n".join(lines) + "\n"
    (out_dir / "end_to_end.md").write_text(text)
    return text


def _targets(task_means, cost, paired=()) -> list:
    """The targets, checked against what was measured: ZEST@5's mean test accuracy against full fine-tuning
    - 1 point and Random@5 + 2 points (per model and over every finished task of every model), and its step time and
    peak memory against 0.5x and 0.4x of full fine-tuning's. The cost-aware variant is checked beside it.
    Against the anchors, at every budget of at most 10 %: ZEST's paired difference to full fine-tuning >= -1 point,
    to Spectrum and to parameter-matched Random with the interval above 0; on SmolLM2 its step peak memory at or
    below LoRA on every projection's, beside their paired accuracy difference."""
    rows = []
    by = {(r["model"], r["a"], r["b"]): r for r in paired}
    for model_name in sorted({r["model"] for r in paired} - {"all models"}):
        for b in (b for b in SWEEP if b <= 0.10):
            z = f"ZEST {pct(b)}"
            for other, goal in (("full FT", "mean >= -1"), (f"Spectrum {pct(b)}", "interval > 0"),
                                (f"Random {pct(b)} matched", "interval > 0")):
                r = by.get((model_name, z, other))
                if r is None:
                    continue
                met = r["mean"] >= -1 if other == "full FT" else r["low"] > 0
                rows.append(f"| {z} - {other}, {model_name} ({r['tasks']} tasks x seeds = {r['cells']}), points | "
                            f"{r['mean']:+.1f} [{r['low']:+.1f}, {r['high']:+.1f}] | {goal} | "
                            f"{'yes' if met else 'no'} |")
            if model_name == "smollm2" and b == SWEEP[0]:
                # the decoder check: ZEST@5 against a fresh random draw per seed and against full fine-tuning
                checks = (("Random@5", "mean >= +2, interval > 0", lambda r: r["mean"] >= 2 and r["low"] > 0),
                          ("full FT", "mean >= -2", lambda r: r["mean"] >= -2))
                for other, goal, ok in checks:
                    r = by.get((model_name, "ZEST@5", other))
                    if r is not None:
                        rows.append(f"| ZEST@5 - {other}, {model_name} ({r['tasks']} tasks x seeds = {r['cells']}), "
                                    f"points | {r['mean']:+.1f} [{r['low']:+.1f}, {r['high']:+.1f}] | {goal} | "
                                    f"{'yes' if ok(r) else 'no'} |")
            if model_name == "smollm2" and not cost.empty:
                c = cost[cost["model"] == model_name].set_index("method")
                if z in c.index and "LoRA all" in c.index:
                    ratio = c.loc[z, "peak_rss_mb"] / c.loc["LoRA all", "peak_rss_mb"]
                    r = by.get((model_name, z, "LoRA all"))
                    acc = f", accuracy {r['mean']:+.1f} [{r['low']:+.1f}, {r['high']:+.1f}] points" if r else ""
                    rows.append(f"| {z} step peak memory vs LoRA all, {model_name} | {ratio:.2f}x{acc} | <= 1x | "
                                f"{'yes' if ratio <= 1 else 'no'} |")
    zests = ("ZEST@5", "ZEST@5 cost 0.5")
    if not task_means.empty:
        scopes = [(m, task_means[task_means["model"] == m]) for m in sorted(task_means["model"].unique())]
        scopes.append(("all models", task_means))
        for scope, g in scopes:
            wide = g.pivot_table(index=["model", "task"], columns="method", values="acc")
            for zest in (z for z in zests if z in wide):
                for other, margin in (("full FT", -1.0), ("Random@5", 2.0)):
                    # both means over the tasks both methods finished, so that they compare the same tasks
                    both = wide[[zest, other]].dropna() if other in wide else wide.iloc[:0]
                    if both.empty:
                        continue
                    mz, mo = both[zest].mean(), both[other].mean()
                    n, goal = len(both), mo + margin
                    rows.append(f"| {zest}: mean test acc. %, {scope} ({n} task{'s' * (n > 1)}), vs {other} "
                                f"{margin:+.0f} | {mz:.1f} | >= {goal:.1f} | {'yes' if mz >= goal else 'no'} |")
    if not cost.empty:
        for model_name, g in cost.groupby("model"):
            c = g.set_index("method")
            for zest in (z for z in zests if z in c.index and "full FT" in c.index):
                for col, what, goal in (("time_s", "step time", 0.5), ("peak_rss_mb", "peak memory", 0.4)):
                    r = c.loc[zest, col] / c.loc["full FT", col]
                    rows.append(f"| {zest}: {what} vs full FT, {model_name} | {r:.2f}x | <= {goal}x | "
                                f"{'yes' if r <= goal else 'no'} |")
    if not rows:
        return []
    return (["## Targets", "", "| what | measured | target | met |", "| --- | --- | ---: | --- |"] + rows
            + ["", "Accuracy means run over the tasks every method finished with every seed. The step-time and "
               "memory targets are set for SmolLM2-135M; MiniLM's rows are for comparison.", ""])


def _forest(paired, path: Path) -> None:
    """The paired differences with their intervals, one panel per model (and the pooled one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scopes = list(dict.fromkeys(paired["model"]))
    n = max(len(paired[paired["model"] == m]) for m in scopes)
    fig, axes = plt.subplots(1, len(scopes), figsize=(5.5 * len(scopes), 0.32 * n + 1.4), squeeze=False, sharey=False)
    for ax, scope in zip(axes[0], scopes):
        g = paired[paired["model"] == scope].reset_index(drop=True)
        y = np.arange(len(g))[::-1]
        colors = g["verdict"].map({"win": "C2", "loss": "C3", "tie": "C7"})
        for yi, (_, r), color in zip(y, g.iterrows(), colors):
            ax.errorbar(r["mean"], yi, xerr=[[r["mean"] - r["low"]], [r["high"] - r["mean"]]], fmt="o", color=color,
                        elinewidth=1.5, capsize=3)
        ax.axvline(0, color="k", linewidth=0.8)
        ax.set_yticks(y, [f"{a} - {b} ({c})" for a, b, c in zip(g["a"], g["b"], g["cells"])], fontsize=7)
        ax.set_xlabel("test accuracy difference, points (95% bootstrap CI)")
        ax.set_title(scope)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _pareto(anchors, cost, path: Path) -> None:
    """Accuracy against step time and against peak memory, each relative to full fine-tuning, one point per method
    and budget; the budget sweep of each selection method joined by a line (the Pareto front a user reads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(anchors["model"].unique())
    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 8), squeeze=False)
    families = {"ZEST": "C0", "Spectrum": "C1", "Random": "C3", "ZEST cost": "C9"}

    def family(name: str):
        """``(family, budget label)`` of a sweep method's name ("ZEST 3% cost 0.5" -> "ZEST cost", "3%"; "ZEST@5" ->
        "ZEST", "@5"), else None."""
        if re.fullmatch(r"ZEST@\d+", name):
            return "ZEST", name[4:]
        m = re.fullmatch(r"(ZEST|Spectrum|Random) ([0-9.]+%)( matched| cost 0\.5)?", name)
        if m is None:
            return None
        return (m.group(1) + (" cost" if m.group(3) == " cost 0.5" else "")), m.group(2)

    for col, model_name in enumerate(models):
        t = anchors[anchors["model"] == model_name]
        c = cost[cost["model"] == model_name].set_index("method")
        if "full FT" not in c.index:
            continue
        for row, (what, label) in enumerate((("time_s", "step time"), ("peak_rss_mb", "peak memory"))):
            ax = axes[row][col]
            lines: dict = {}
            for i, (method, r) in enumerate(t.iterrows()):
                y = r["- full FT"]
                if method not in c.index or np.isnan(y):
                    continue
                x = c.loc[method, what] / c.loc["full FT", what]
                fam = family(method)
                # a point that does not cover every task yet says how many it covers
                n_done, n_all = r["tasks"].split("/")
                partial = f" ({n_done}/{n_all} tasks)" if n_done != n_all else ""
                if fam:
                    lines.setdefault(fam[0], []).append((x, y, fam[1] + partial))
                    continue
                ax.scatter(x, y, marker="os^Dv<>P"[i % 8], color=f"C{(i + 4) % 10}", s=40, label=method + partial)
            for fam, pts in lines.items():
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", color=families[fam], label=fam, ms=5)
                for x, y, b in pts:
                    ax.annotate(b, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel(f"{label} of a training step / full fine-tuning")
            ax.set_ylabel("test accuracy - full fine-tuning's, points (paired)")
            ax.axhline(0, color="0.8", linewidth=0.8, zorder=0)
            ax.set_title(f"{model_name}: accuracy vs {label}", fontsize=9)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _curves(final, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted(final.groupby(["model", "task"]).groups)
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 3.5), squeeze=False)
    for ax, (model_name, task) in zip(axes[0], pairs):
        g = final[(final["model"] == model_name) & (final["task"] == task)]
        for name, color, line in (("full FT", "k", "-"), ("ZEST@5", "C0", "-"), ("Random@5", "C3", "--"),
                                  ("head only", "C7", ":")):
            runs = g[g["method"] == name]
            if runs.empty:
                continue
            steps = [s for s, _ in runs.iloc[0]["curve"]]
            accs = np.array([[a for _, a in c] for c in runs["curve"] if len(c) == len(steps)])
            if len(steps) == 1:  # a decoder's "head only" is the untrained model: one level, drawn across the axis
                ax.axhline(accs.mean(), color=color, linestyle=line, label=name)
            else:
                ax.plot(steps, accs.mean(0), color=color, linestyle=line, label=name)
        ax.set_title(f"{model_name} {task.replace('bigbench:', '')}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _acc_vs_memory(table3, cost, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(table3["model"].unique())
    # One marker and colour per method, the same in every panel, and a legend instead of labels on the points:
    # several methods land within a point of each other and their labels would overprint.
    methods = list(dict.fromkeys(table3.index))
    style = {m: (("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")[i % 11], f"C{i % 10}")
             for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model_name in zip(axes[0], models):
        t = table3[table3["model"] == model_name]
        c = cost[cost["model"] == model_name].set_index("method")
        if "full FT" not in c.index:
            continue
        for method, row in t.iterrows():
            if method not in c.index:
                continue
            x = c.loc[method, "peak_rss_mb"] / c.loc["full FT", "peak_rss_mb"]
            marker, color = style[method]
            ax.scatter(x, row["mean"], marker=marker, color=color, s=60 if "ZEST" in method else 36,
                       edgecolors="k" if "cost" in method else "none", label=method)
        ax.set_xlabel("peak memory of a training step / full fine-tuning")
        ax.set_ylabel("mean test accuracy % over tasks")
        ax.set_title(model_name)
    handles = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--methods", default=None, help="comma list of method names (default: all)")
    ap.add_argument("--phase", default="all", choices=["all", "accuracy", "cost", "report"])
    ap.add_argument("--out-dir", default=str(HERE / "results" / "end_to_end"))
    ap.add_argument("--predictor-arch", default="linear", choices=["linear", "mlp"])
    ap.add_argument("--predictor-normalization", default="rank", choices=["rank", "zscore"],
                    help="rank: the bundled predictor's variant since zest_hf 0.2 (MiniLM's runs used zscore, 0.1)")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per method in the cost phase")
    ap.add_argument("--steps", type=int, default=None, help="override every model's step budget (quick looks)")
    ap.add_argument("--tasks", default=None, help="override every model's tasks (comma list)")
    ap.add_argument("--eval-examples", type=int, default=None, help="override validation and test subset sizes")
    ap.add_argument("--seeds", default=None, help="override the seeds (comma list; the first one tunes the rates)")
    ap.add_argument("--cost-worker", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    ap.add_argument("--select-worker", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # config.json records the benchmark's design; the overrides below are for quick looks and partial invocations
    # (every run line records its own budget), so they must not rewrite it
    design = json.loads(json.dumps(BUDGETS))
    for b in BUDGETS.values():
        if args.steps:
            b["steps"] = args.steps
        if args.tasks:
            b["tasks"] = args.tasks.split(",")
        if args.eval_examples:
            b["val_examples"] = b["test_examples"] = args.eval_examples
    if args.seeds:
        SEEDS[:] = [int(x) for x in args.seeds.split(",")]
    if args.select_worker:
        print("RESULT " + json.dumps(select_worker(*args.select_worker, out_dir)))
        return 0
    if args.cost_worker:
        print("RESULT " + json.dumps(cost_worker(*args.cost_worker, out_dir, args.repeats)))
        return 0
    models = args.models.split(",")
    methods = [BY_NAME[n] for n in args.methods.split(",")] if args.methods else METHODS
    check_task_data(models, args.phase)
    (out_dir / "config.json").write_text(json.dumps({"budgets": design, "methods": [asdict(m) for m in METHODS],
                                                     "seeds": SEEDS}, indent=1))
    if args.phase in ("all", "accuracy"):
        accuracy_phase(models, methods, out_dir, args.predictor_arch, args.predictor_normalization)
    if args.phase in ("all", "cost"):
        for m in models:  # the cost phase reads the leave-one-task-out selectors of the first task
            loto_selectors(m, budget_of(m)["tasks"][0], out_dir, args.predictor_arch, args.predictor_normalization)
        cost_phase(models, methods, out_dir, args.repeats)
    print(report(out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

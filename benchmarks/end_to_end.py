"""End to end: does ZEST fine-tuning win? Accuracy, step time and peak memory against every baseline (Tables 3, 4).

Three phases, each resumable (every finished run is one JSON line in ``--out-dir/runs.jsonl``; a rerun skips it):

``accuracy``
    For every model and task, every method is trained with a stock ``transformers.Trainer`` on the same data, for
    the same number of steps, batch and sequence length. The task head (new, seeded) always trains with the head
    learning rate tuned on head-only; the method's own weights get a learning rate chosen from a small grid on the
    validation split (seed 0); the chosen rate is then run with seeds 1 and 2. Test accuracy: mean and std over
    the 3 seeds. Validation accuracy is also logged during training (the validation curves).

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
ZEST@5 with cost-aware selection (``ZestConfig(cost_weight=...)``).

    python benchmarks/end_to_end.py                                  # everything, both models (hours on a CPU)
    python benchmarks/end_to_end.py --models minilm --phase accuracy # one phase, one model
    python benchmarks/end_to_end.py --phase report                   # tables and plots from what is there
"""

from __future__ import annotations

import argparse
import json
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
                   tasks=["bigbench:multiemo/all_sentence_en", "bigbench:fact_checker/fever", "bbc_news"],
                   grids={"head": [3e-3, 1e-2], "full": [3e-5, 1e-4], "sparse": [3e-4, 1e-3], "lora": [1e-3, 3e-3]}),
    "smollm2": dict(steps=40, batch_size=8, max_length=64, val_examples=128, test_examples=300, curve_points=2,
                    # SmolLM2 tasks whose ground truth separates (predictors/data/README.md): valid_parentheses with
                    # a classification head, goal_step_wikihow as a decoder does multiple choice (the layers alone
                    # train on the gold answer's LM loss; accuracy by log-likelihood; "head only" = untrained).
                    # On fever and multiemo nothing but the head learns; twitter's first layers did not beat its head.
                    tasks=["bigbench:cs_algorithms/valid_parentheses", "bigbench:goal_step_wikihow/step_inference"],
                    grids={"head": [3e-3, 1e-2], "full": [1e-5, 3e-5], "sparse": [1e-4, 3e-4], "lora": [1e-3, 3e-3]}),
}
SEEDS = [0, 1, 2]


def budget_of(model_name: str) -> dict:
    """The model's budget; a model not in BUDGETS (a path or Hub id) gets MiniLM's, overridable from the CLI."""
    return BUDGETS.get(model_name, BUDGETS["minilm"])


@dataclass(frozen=True)
class Method:
    """One way of choosing what trains. ``kind`` says how the model is built; ``family`` picks the LR grid."""

    name: str
    kind: str  # head_only | full | zest | random | single | oracle | lora_all | lora_zest
    family: str
    k: int | None = None
    cost_weight: float = 0.0


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
BY_NAME = {m.name: m for m in METHODS}


# ------------------------------------------------------------------------------------------- what a task needs
def selectors_dir(out_dir: Path, task: str) -> Path:
    """Where the leave-one-task-out predictor and ``selection_info.json`` of ``task`` live."""
    from zest_hf.contrib import task_slug

    return out_dir / "predictors" / f"loto-{task_slug(task)}"


def loto_selectors(model: str, task: str, out_dir: Path, arch: str, normalization: str) -> dict:
    """The leave-one-task-out predictor (a directory) and best single metric for ``task``; built once, then reused
    (so that every run of the benchmark uses the same ones even while the ground-truth data grows)."""
    from zest_hf.evaluation import FEATURES, best_single_metric, load_model_tasks
    from zest_hf.predictor import train_predictor

    d = selectors_dir(out_dir, task)
    info_path = d / "selection_info.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        info["predictor"] = str(d)  # where it is in this checkout (the file may hold another machine's path)
        return info
    data = load_model_tasks(ROOT / "predictors" / "data")
    train = [m for m in data if m.task != task]
    if not train:
        raise SystemExit(f"no ground truth without {task}: collect other tasks first (scripts/collect_ground_truth.py)")
    pred = train_predictor(train, FEATURES, arch=arch, normalization=normalization, seed=0)
    pred.save_pretrained(d)
    col, sign = best_single_metric(train, FEATURES)
    info = {"predictor": str(d), "single": f"metric:{'-' if sign < 0 else ''}{col}",
            "trained_on": [m.key for m in train], "arch": arch, "normalization": normalization,
            "depth_knots": pred.depth_knots, "seed": 0}
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
        return zest_hf.ZestConfig(top_k=method.k, predictor=selectors["predictor"], cost_weight=method.cost_weight,
                                  mode="lora" if method.kind == "lora_zest" else "full", probe_seed=seed)
    if method.kind == "single":
        return zest_hf.ZestConfig(top_k=method.k, predictor=selectors["single"], probe_seed=seed)
    names = [t.name for t in zest_hf.find_targets(model)]
    if method.kind == "random":
        chosen = [names[i] for i in np.random.default_rng(seed).choice(len(names), method.k, replace=False)]
    elif method.kind == "oracle":
        chosen = oracle
    else:
        raise ValueError(method.kind)
    return zest_hf.ZestConfig(selected_modules=chosen, modules_to_save=find_head(model))


ZEST_KINDS = ("zest", "lora_zest", "single", "random", "oracle")


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
        return peft.get_peft_model(model, peft.LoraConfig(target_modules=names, r=8, lora_alpha=8,
                                                          modules_to_save=head)), None
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

    from zest_hf.modeling import find_head
    from zest_hf.models import load_model
    from zest_hf.tasks import collator_for, load_task, prepare_tokenizer

    task = load_task(task_name)
    kind = head_kind(model_name, task)
    transformers.set_seed(seed)  # the head's initialisation
    model, tok = load_model(model_name, kind, num_labels=task.num_labels if kind == "seq_cls" else None)
    prepare_tokenizer(tok, model)
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
            "predictor": cfg.selection_info.get("predictor") if cfg is not None and cfg.selection_info else None}


def head_kind(model_name: str, task) -> str:
    """``seq_cls`` for a classification task; for multiple choice, a decoder's own LM head scored by log-likelihood
    (``causal_lm``, the ground truth's protocol for decoders). An encoder's multiple-choice head is not benchmarked."""
    from zest_hf.workflow import choose_head

    kind = choose_head(model_name, task.kind, decoder_classification="seq_cls")  # the ground truth's protocol
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


def best_lr(rows: list[dict]) -> float:
    """The tuning seed's best learning rate: highest validation accuracy, the smaller rate on a tie."""
    return max(rows, key=lambda r: (r["val_acc"], -r["lr"]))["lr"]


def accuracy_phase(models, methods, out_dir: Path, arch: str, normalization: str) -> None:
    from tqdm.auto import tqdm

    runs_path = out_dir / "runs.jsonl"
    for model_name in models:
        budget = budget_of(model_name)
        key_budget = {k: budget[k] for k in ("steps", "batch_size", "max_length", "val_examples", "test_examples")}
        for task in budget["tasks"]:
            # Built only when a method of this invocation needs them: the leave-one-task-out predictor is frozen
            # when first built, so methods that do not use it (head only, full FT, Random, LoRA all) can run while
            # ground truth of other tasks is still being collected; and the oracle needs this task's own.
            need = {m.kind for m in methods}
            selectors = (loto_selectors(model_name, task, out_dir, arch, normalization)
                         if need & {"zest", "lora_zest", "single"} else {})
            oracle = oracle_layers(model_name, task, 5) if "oracle" in need else None
            # Head-only first: its tuned head learning rate is every other method's head rate.
            order = sorted(methods, key=lambda m: m.kind != "head_only")
            plan = sum(len(budget["grids"][m.family]) + len(SEEDS) - 1 for m in order)
            bar = tqdm(total=plan, desc=f"{model_name} {task}", unit="run")
            head_lr = None
            for m in order:
                lrs = budget["grids"][m.family]
                for stage in ("grid", "seeds"):
                    done = [r for r in read_jsonl(runs_path) if r["model"] == model_name and r["task"] == task
                            and r["method"] == m.name and r["budget"] == key_budget]
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
                        res = run_one(model_name, task, m, lr, hl, seed, budget, selectors, oracle)
                        row = {"model": model_name, "task": task, "method": m.name, "lr": lr, "head_lr": hl,
                               "seed": seed, "budget": key_budget, **res}
                        with runs_path.open("a") as fh:
                            fh.write(json.dumps(row) + "\n")
                        bar.update()
                        bar.set_postfix(method=m.name, lr=lr, seed=seed, test=f"{res['test_acc']:.3f}")
                if m.kind == "head_only":
                    grid = [r for r in read_jsonl(runs_path) if r["model"] == model_name and r["task"] == task
                            and r["method"] == m.name and r["seed"] == SEEDS[0] and r["budget"] == key_budget]
                    head_lr = best_lr(grid)
            bar.close()


# ---------------------------------------------------------------------------------------------------- cost phase
def _cost_batch(model_name: str):
    """The cost phase's model and batch: one fixed batch, every sequence padded to the full length, so that every
    method (and the selection worker) sees exactly the same tokens."""
    import torch

    from zest_hf.workflow import prepare

    budget = budget_of(model_name)
    prep = prepare(model_name, budget["tasks"][0], batch_size=budget["batch_size"],
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
    d = selectors_dir(out_dir, budget_of(model_name)["tasks"][0])
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
    if method.kind in ("zest", "lora_zest", "single"):
        # Selected in a separate process (see select_worker); here the resolved config is only applied.
        cfg = zest_hf.ZestConfig.from_json(run_worker([__file__, "--select-worker", model_name, method_name,
                                                       "--out-dir", str(out_dir)])["config"])
        model = peft.get_peft_model(model, cfg.to_lora_config() if cfg.mode == "lora" else cfg)
    else:
        oracle = oracle_layers(model_name, task, 5) if method.kind == "oracle" else None
        model, cfg = build(method, model, {}, oracle, 0, batch=batch)
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
def report(out_dir: Path) -> str:
    import pandas as pd

    runs = pd.DataFrame(read_jsonl(out_dir / "runs.jsonl"))
    cost = pd.DataFrame(read_jsonl(out_dir / "cost.jsonl"))
    lines = ["# End to end: ZEST against every baseline", "",
             "Reproduce: `python benchmarks/end_to_end.py` (phases accuracy, cost, report; resumable). Seeds "
             f"{list(SEEDS)}; learning rates chosen on validation with seed 0; the task head's rate tuned on head "
             "only. ZEST's predictor and the best single metric are leave-one-task-out.", ""]
    table3 = pd.DataFrame()
    task_means = []  # (model, task, method, mean test accuracy %) over the tasks every method has finished
    if not runs.empty:
        best = (runs[runs["seed"] == SEEDS[0]].sort_values(["val_acc", "lr"], ascending=[False, True])
                .groupby(["model", "task", "method"]).head(1)[["model", "task", "method", "lr"]])
        final = runs.merge(best, on=["model", "task", "method", "lr"])
        for model_name, g in final.groupby("model"):
            agg = g.groupby(["method", "task"])["test_acc"].agg(["mean", "std", "count"])
            cell = (agg["mean"] * 100).round(1).astype(str) + " ± " + (agg["std"].fillna(0) * 100).round(1).astype(str)
            t = cell.unstack("task").fillna("")  # a run not there yet: blank
            t.columns = [c.replace("bigbench:", "") for c in t.columns]
            # The mean runs over the tasks every method has finished with every seed, so that a task still being
            # collected neither enters some methods' means and not others' nor counts one seed as three.
            names = [m.name for m in METHODS if m.name in agg.index.get_level_values("method")]
            done = agg["count"].unstack("task").reindex(names)
            complete_tasks = [c for c in done.columns if (done[c] >= len(SEEDS)).all()]
            task_mean = agg["mean"].unstack("task")  # method x task, over seeds
            t["mean"] = (task_mean[complete_tasks].mean(axis=1) * 100).round(1)
            t["seeds"] = agg["count"].groupby("method").min()
            tr = g.groupby("method")[["trainable_wo_head", "total_params"]].first()
            t["trainable (w/o head)"] = (tr["trainable_wo_head"] / tr["total_params"] * 100).round(3).astype(str) + "%"
            t = t.reindex([m.name for m in METHODS if m.name in t.index])
            pending = sorted(set(g["task"]) - set(complete_tasks))
            lines += [f"## Table 3 ({model_name}): test accuracy %, mean ± std over seeds", "", t.to_markdown(), "",
                      "`mean`: over " + (", ".join(c.replace("bigbench:", "") for c in complete_tasks) or "no task yet")
                      + (f" (still being collected, left out of it: {', '.join(pending)})" if pending else ""), ""]
            t["model"] = model_name
            table3 = pd.concat([table3, t])
            for task in complete_tasks:
                for method, v in task_mean[task].items():
                    task_means.append({"model": model_name, "task": task, "method": method, "acc": v * 100})
        _curves(final, out_dir / "curves.png")
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
    lines += _targets(pd.DataFrame(task_means), cost)
    text = "\n".join(lines) + "\n"
    (out_dir / "end_to_end.md").write_text(text)
    return text


def _targets(task_means, cost) -> list:
    """The targets, checked against what was measured: ZEST@5's mean test accuracy against full fine-tuning
    - 1 point and Random@5 + 2 points (per model and over every finished task of every model), and its step time and
    peak memory against 0.5x and 0.4x of full fine-tuning's. The cost-aware variant is checked beside it."""
    rows = []
    zests = ("ZEST@5", "ZEST@5 cost 0.5")
    if not task_means.empty:
        scopes = [(m, task_means[task_means["model"] == m]) for m in sorted(task_means["model"].unique())]
        scopes.append(("all models", task_means))
        for scope, g in scopes:
            mean = g.groupby("method")["acc"].mean()
            n = len(g[["model", "task"]].drop_duplicates())
            for zest in (z for z in zests if z in mean):
                for other, margin in (("full FT", -1.0), ("Random@5", 2.0)):
                    if other in mean:
                        goal = mean[other] + margin
                        rows.append(f"| {zest}: mean test acc. %, {scope} ({n} task{'s' * (n > 1)}), vs {other} "
                                    f"{margin:+.0f} | {mean[zest]:.1f} | >= {goal:.1f} | "
                                    f"{'yes' if mean[zest] >= goal else 'no'} |")
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

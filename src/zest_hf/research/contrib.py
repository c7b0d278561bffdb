"""Ground truth: a layer's contribution score is the validation metric after fine-tuning ONLY that layer plus the
task head, from the same pretrained start, for a fixed budget.

Protocol (every figure in ``predictors/data`` follows it; the budget is stored on every line):

* one run per candidate layer, plus a head-only baseline (``layer`` is :data:`.records.HEAD_ONLY`);
* every run starts from the same pretrained weights and the same head initialisation (``seed``), sees the same
  training batches in the same order (``seed``), and is scored on the same validation examples (the first
  ``eval_examples`` of the validation split fixed by ``split_seed``);
* AdamW, constant learning rates (``lr_layer`` for the layer's weight and bias, ``lr_head`` for the head), no weight
  decay, dropout off (the model stays in eval mode: runs are deterministic, and cached block inputs are exact);
* block inputs below the trained layer do not change, so they are computed once per block and reused
  (:class:`zest_hf.research.blocks.BlockRunner`);
* ``score`` = validation accuracy (the paper's contribution score; higher = fine-tuning the layer helps more);
  ``val_loss`` is kept beside it.

A decoder on a multiple-choice task has no head to train (its ``lm_head`` is tied to the embeddings): the layer
alone trains on the LM loss of the gold answer after the prompt, the score is the log-likelihood choice accuracy
(:func:`zest_hf.tasks.score_choices`' rule, run from the cached block inputs), ``val_loss`` is the gold choice's
negative log-likelihood per token, and the ``__head__`` baseline is the untrained model (zero-shot). The lines say
so in ``scoring`` (``"loglik"``; ``"head"`` otherwise).

On a decoder the vocab-sized LM head is most of the cost of a run from an upper block; it runs only where a loss
or a score is read (the answer tokens in training, the choice tokens in evaluation): the same arithmetic on fewer
rows. :func:`setup_contributions` checks on the first batches that this gives the model's own loss and logits, and
falls back to the full head where it does not.

Resumable: one JSON line per (model, task, seed, layer), flushed and fsynced as soon as the layer is done; a rerun
skips what the file already has, so a killed run loses at most the layer in progress.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..modeling import device_of, find_head
from ..targets import find_targets
from ..tasks.tokenize import IGNORE_INDEX
from .blocks import BlockRunner
from .budget import ContribBudget
from .records import HEAD_ONLY, open_for_append, read_jsonl, task_slug

__all__ = ["ContribBudget", "ContribSetup", "setup_contributions", "collect_contributions", "read_jsonl", "HEAD_ONLY", "task_slug"]



@dataclass
class ContribSetup:
    """Everything one (model, task, seed) collection shares across its layer runs, built and checked up front."""

    model: torch.nn.Module
    task: object
    targets: list
    head_names: list[str]
    head_params: list
    head_init: list
    runner: BlockRunner
    train_batches: list
    val_batches: list
    budget: ContribBudget
    row_base: dict
    choice_plan: object = None  # a ChoicePlan: the validation forwards of a decoder scored by log-likelihood
    sparse_head: bool = False  # a causal LM's head runs only at the positions read (checked equal at set-up)

    def caches(self, b: int, below: tuple[int, tuple[list, list]] | None = None) -> tuple[list, list]:
        """Inputs of block ``b`` for every training and validation batch (computed once, shared by its layers).
        ``below`` = ``(b0, caches(b0))`` of a lower block: only the blocks between run."""
        if below is None:
            return ([self.runner.capture(b, x) for x in self.train_batches],
                    [self.runner.capture(b, x) for x in self.val_batches])
        b0, (train0, val0) = below
        return ([self.runner.capture(b, x, start=(b0, h)) for x, h in zip(self.train_batches, train0)],
                [self.runner.capture(b, x, start=(b0, h)) for x, h in zip(self.val_batches, val0)])

    def run(self, target=None, block: int | None = None, caches: tuple | None = None,
            sparse_head: bool | None = None) -> dict:
        """Train ``target`` (``None``: head only) plus the head from the pretrained start, evaluate, restore.

        With ``caches`` (from :meth:`caches` of the target's block) the forward starts at that block; without, it is
        the naive full forward (what :mod:`benchmarks.contrib_cost` compares against). ``sparse_head`` (default
        :attr:`sparse_head`) runs a causal LM's head only at the positions read. Returns the line's fields.
        """
        sparse = self.sparse_head if sparse_head is None else sparse_head
        t0 = time.perf_counter()
        b = block if block is not None else (target.block if target is not None else len(self.runner) - 1)
        layer_params = [] if target is None else list(target.module.parameters())
        layer_init = [p.detach().clone() for p in layer_params]
        start = (lambda h: self.runner.start_at(b, lambda: h)) if caches is not None else (
            lambda h: contextlib.nullcontext())
        train_cache, val_cache = caches if caches is not None else ([None] * len(self.train_batches),
                                                                    [None] * len(self.val_batches))
        try:
            groups = [g for g in ({"params": self.head_params, "lr": self.budget.lr_head},
                                  {"params": layer_params, "lr": self.budget.lr_layer}) if g["params"]]
            for p in self.head_params + layer_params:
                p.requires_grad_(True)
            train_loss = None  # nothing to train: a headless decoder's baseline is the untrained model
            if groups:
                opt = torch.optim.AdamW(groups, weight_decay=0.0)
                loss_fn = _labelled_lm_loss if sparse else _model_loss
                train_loss = _train(self.model, start, self.train_batches, train_cache, opt, loss_fn)
            if self.choice_plan is not None:
                val_acc, val_loss = _evaluate_choices(self.model, start, self.choice_plan, self.val_batches, val_cache,
                                                      sparse)
            else:
                val_acc, val_loss = _evaluate(self.model, start, self.val_batches, val_cache)
        finally:
            with torch.no_grad():
                for p, p0 in zip(self.head_params + layer_params, self.head_init + layer_init):
                    p.copy_(p0)
                    p.requires_grad_(False)
                    p.grad = None
        row = dict(self.row_base)
        if target is None:
            row.update(layer=HEAD_ONLY, type="head", block=-1, depth=-1.0, num_params=0)
        else:
            row.update(layer=target.name, type=target.type, block=target.block, depth=target.depth,
                       num_params=target.num_params)
        row.update(score=val_acc, val_acc=val_acc, val_loss=val_loss, train_loss_last10=train_loss,
                   wall_s=round(time.perf_counter() - t0, 3))
        return row


def setup_contributions(
    model_name: str,
    task_name: str,
    *,
    seed: int = 0,
    budget: ContribBudget | None = None,
    layers: list[str] | None = None,
    split_seed: int = 0,
    device: str | None = None,
    model_label: str | None = None,
    decoder_classification: str = "seq_cls",
) -> ContribSetup:
    """Load, check and tokenise everything a collection needs (see :func:`collect_contributions` for the
    arguments). Every check that can fail runs here, before any training."""
    import transformers

    from ..models import load_model
    from ..tasks import collator_for, load_task, plan_choices, prepare_tokenizer, tokenize_split
    from ..workflow import choose_head

    budget = budget or ContribBudget()
    budget.validate()
    task = load_task(task_name, split_seed=split_seed)
    # the collected protocol: a decoder classifies with a new head, and answers multiple choice by log-likelihood
    head_kind = choose_head(model_name, task.kind, decoder_classification=decoder_classification)
    n_train = len(task.splits["train"])
    need = budget.steps * budget.batch_size
    if need > budget.max_epochs * n_train:
        raise ValueError(
            f"budget needs {need} training examples ({budget.steps} steps x {budget.batch_size}) but {task.name} has "
            f"{n_train} in its train split (max_epochs={budget.max_epochs}). Lower steps/batch_size or pick a "
            "larger task."
        )
    transformers.set_seed(seed)
    model, tok = load_model(model_name, head_kind, num_labels=task.num_labels if head_kind == "seq_cls" else None,
                            device=device)
    prepare_tokenizer(tok, model)
    all_targets = find_targets(model)
    targets = all_targets
    if layers is not None:
        known = {t.name for t in targets}
        missing = [n for n in layers if n not in known]
        if missing:
            raise ValueError(f"layers not among {model_name}'s candidates: {missing[:5]}")
        targets = [t for t in targets if t.name in set(layers)]
    head_names = find_head(model)

    # ---- data: a fixed stream of training batches, a fixed validation set
    dev = device_of(model)
    collate = collator_for(head_kind, tok)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n_train) for _ in range(math.ceil(need / n_train))])[:need]
    # Tokenise only the examples the budget touches (BIG-bench tasks can hold tens of thousands).
    used = np.unique(order)
    pos = {int(i): k for k, i in enumerate(used)}
    train_ds = tokenize_split(task.splits["train"].select(used), tok, model_kind=head_kind,
                              max_length=budget.max_length)
    bs = budget.batch_size
    train_batches = [_to(collate([train_ds[pos[int(i)]] for i in order[s * bs:(s + 1) * bs]]), dev)
                     for s in range(budget.steps)]
    n_val = min(budget.eval_examples, len(task.splits["validation"]))
    plan = None
    if head_kind == "causal_lm":
        # Every (example, choice) sequence, eval_batch_size sequences per forward: the same batches for every
        # layer, so their block inputs can be cached like the training batches'.
        plan = plan_choices(model, tok, task.splits["validation"].select(range(n_val)), max_length=budget.max_length,
                            batch_size=budget.eval_batch_size)
        val_batches = [_to(inp, dev) for inp in plan.inputs]
    else:
        val_ds = tokenize_split(task.splits["validation"].select(range(n_val)), tok, model_kind=head_kind,
                                max_length=budget.max_length)
        val_batches = [_to(collate([val_ds[i] for i in range(j, min(j + budget.eval_batch_size, n_val))]), dev)
                       for j in range(0, n_val, budget.eval_batch_size)]

    model.eval()  # dropout off: deterministic runs, exact cached block inputs
    for p in model.parameters():
        p.requires_grad_(False)
    head_params = [p for n in head_names for p in model.get_submodule(n).parameters()]
    row_base = {"model": model_label or model_name, "task": task.name, "seed": seed, "split_seed": split_seed,
                "budget": asdict(budget), "head": head_names, "n_train": n_train, "n_val": n_val,
                "scoring": "loglik" if plan is not None else "head"}
    return ContribSetup(model=model, task=task, targets=targets, head_names=head_names, head_params=head_params,
                        head_init=[p.detach().clone() for p in head_params],
                        runner=BlockRunner(model, all_targets), train_batches=train_batches,
                        val_batches=val_batches, budget=budget, row_base=row_base, choice_plan=plan,
                        sparse_head=head_kind == "causal_lm" and _sparse_head_is_exact(model, train_batches, plan,
                                                                                       val_batches))


def collect_contributions(
    model_name: str,
    task_name: str,
    out: str | Path,
    *,
    seed: int = 0,
    budget: ContribBudget | None = None,
    layers: list[str] | None = None,
    split_seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    model_label: str | None = None,
    decoder_classification: str = "seq_cls",
) -> list[dict]:
    """Collect contribution scores for every candidate layer (or ``layers``) of a model on a task.

    Args:
        model_name: ``"minilm"``, ``"smollm2"``, a Hub id or a path.
        task_name: A task name for :func:`zest_hf.tasks.load_task` (classification or multiple choice).
        out: The JSONL file (appended to; existing lines for the same model/task/seed are skipped).
        seed: Head initialisation and training-batch order.
        budget: The :class:`ContribBudget`.
        layers: Full module names to collect (a documented subset); default every candidate.
        split_seed: Train/validation/test split of the task.
        device: Where to train (default CPU).
        model_label: The ``model`` value written on each line (default ``model_name``).
        decoder_classification: A decoder on a classification task: ``"seq_cls"`` trains a new classification
            head beside the layer; ``"causal_lm"`` scores the label names by log-likelihood with no head (the
            multiple-choice protocol; ``scoring`` says which on every line).

    Returns:
        All lines of ``out`` for this model, task and seed (old and new).
    """
    from tqdm.auto import tqdm

    setup = setup_contributions(model_name, task_name, seed=seed, budget=budget, layers=layers,
                                split_seed=split_seed, device=device, model_label=model_label,
                                decoder_classification=decoder_classification)
    label, task_full = setup.row_base["model"], setup.row_base["task"]
    out = Path(out)

    def mine():
        return [r for r in read_jsonl(out) if r.get("model") == label and r.get("task") == task_full
                and r.get("seed") == seed]

    existing = mine()
    # what makes two lines' scores comparable; lines written before ``scoring`` was recorded scored with the head
    ours = {k: setup.row_base[k] for k in ("budget", "split_seed", "head", "scoring")}
    for r in existing:
        theirs = {"budget": r.get("budget"), "split_seed": r.get("split_seed", 0), "head": r.get("head"),
                  "scoring": r.get("scoring", "head")}
        differ = [k for k in ours if theirs[k] != ours[k]]
        if differ:
            raise ValueError(
                f"{out} already holds {label}/{task_full}/seed {seed} lines collected with another "
                + ", ".join(f"{k} ({theirs[k]!r}; here {ours[k]!r})" for k in differ)
                + "; write to another --out or collect as they were."
            )
    done = {r["layer"] for r in existing}
    todo = [t for t in setup.targets if t.name not in done]
    run_head = HEAD_ONLY not in done
    if not todo and not run_head:
        return existing

    by_block: dict[int, list] = {}
    for t in todo:
        by_block.setdefault(t.block, []).append(t)
    last = len(setup.runner) - 1
    if run_head:
        by_block.setdefault(last, [])
    bar = tqdm(total=len(todo) + int(run_head), desc=f"contrib {label} {task_full} s{seed}", unit="layer",
               disable=not progress)
    below = None
    with open_for_append(out) as fh:
        for b in sorted(by_block):
            caches = setup.caches(b, below)  # walking up from the last block's inputs: one forward in all
            below = (b, caches)
            for t in list(by_block[b]) + ([None] if run_head and b == last else []):
                row = setup.run(t, b, caches)
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                bar.update()
                bar.set_postfix(layer=row["layer"][-28:], acc=f"{row['val_acc']:.3f}")
            del caches  # `below` keeps this block's inputs until the next block's are made
    bar.close()
    return mine()


def _to(batch, device):
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _model_loss(model, batch) -> torch.Tensor:
    return model(**batch).loss


def _body_and_head(model):
    """``(body, head)`` of a causal LM whose logits are ``head(body(...).last_hidden_state)``, else ``(None, None)``."""
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
    return (body, head) if isinstance(body, torch.nn.Module) and isinstance(head, torch.nn.Module) else (None, None)


def _labelled_lm_loss(model, batch) -> torch.Tensor:
    """The causal-LM loss with the head run only at the positions whose next token is labelled."""
    body, head = _body_and_head(model)
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    hidden = body(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
    return torch.nn.functional.cross_entropy(head(hidden[:, :-1][mask]).float(), labels[mask])


def _selected_logits(model, plan, k: int, batch) -> torch.Tensor:
    """The logits :meth:`ChoicePlan.read_selected` reads from forward ``k``, the head run at those positions only."""
    body, head = _body_and_head(model)
    rows, pos = plan.positions(k)
    hidden = body(**{n: v for n, v in batch.items() if n != "logits_to_keep"}).last_hidden_state
    return head(hidden[rows.to(hidden.device), pos.to(hidden.device)])


@torch.no_grad()
def _sparse_head_is_exact(model, train_batches, plan, val_batches) -> bool:
    """Whether the head run at the read positions gives the model's own loss and logits (a model that scales or
    caps its logits, or has no separable head, does not): checked on the first training and validation batch."""
    body, head = _body_and_head(model)
    if body is None or plan is None or not train_batches or not val_batches:
        return False
    try:
        full = model(**train_batches[0]).loss
        part = _labelled_lm_loss(model, train_batches[0])
        logits = model(**val_batches[0]).logits
        rows, pos, _, _ = plan.reads[0]
        want = logits[rows.to(logits.device), pos.to(logits.device)]
        got = _selected_logits(model, plan, 0, val_batches[0])
    except (TypeError, ValueError, RuntimeError, AttributeError):
        return False
    return bool(torch.allclose(full, part, rtol=1e-5, atol=1e-6)) and got.shape == want.shape and bool(
        torch.allclose(got.float(), want.float(), rtol=1e-4, atol=1e-5))


def _train(model, start, batches, cache, opt, loss_fn=_model_loss) -> float:
    losses = []
    for batch, h in zip(batches, cache):
        with start(h):
            loss = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()}; lower the learning rates")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return float(np.mean(losses[-10:]))


@torch.no_grad()
def _evaluate(model, start, batches, cache) -> tuple[float, float]:
    correct, total, loss_sum = 0, 0, 0.0
    for batch, h in zip(batches, cache):
        with start(h):
            out = model(**batch)
        labels = batch["labels"]
        correct += int((out.logits.argmax(-1) == labels).sum())
        total += labels.numel()
        loss_sum += out.loss.item() * labels.numel()
    return correct / total, loss_sum / total


@torch.no_grad()
def _evaluate_choices(model, start, plan, batches, cache, sparse: bool = False) -> tuple[float, float]:
    """Log-likelihood choice accuracy and the gold choice's NLL per token (a decoder without a head)."""
    totals = plan.totals()
    for k, (batch, h) in enumerate(zip(batches, cache)):
        with start(h):
            if sparse:
                plan.read_selected(k, _selected_logits(model, plan, k, batch), totals)
            else:
                plan.read(k, model(**batch).logits, totals)
    res = plan.result(totals)
    return res["accuracy"], res["gold_nll"]

"""Log-likelihood choice scoring: a causal LM answers a multiple-choice or classification task by the choice whose
answer tokens it finds most likely after the prompt (how the decoder ground truth and end-to-end runs are scored)."""

from __future__ import annotations


import numpy as np
import torch

from ..modeling import device_of, peft_base
from .tokenize import (DEFAULT_ANSWER_CUE, IGNORE_INDEX, _choices_of, _right_padding, _split_of, causal_prompt,
                       collator_for, encode_causal, model_kind, prepare_tokenizer)

__all__ = ["score_choices", "plan_choices", "ChoicePlan"]


def _accepts_logits_to_keep(model) -> bool:
    """Whether the (PEFT-unwrapped) model's forward takes ``logits_to_keep`` (recent transformers decoders do)."""
    import inspect

    base = peft_base(model)
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def _scoring_plan(enc: dict, owner: list[int]):
    """Sequences to run and, per sequence, the (position, token, pair) log-probabilities to read from it.

    A pair (example, choice) normally is its own sequence, prompt + answer, read at every answer token. When every
    choice of an example is ONE token after the same prompt ids, the example runs once, as the prompt alone, and
    each choice is read at the prompt's last position: the same numbers for 1/K of the compute.
    """
    by_example: dict[int, list[int]] = {}
    for j, i in enumerate(owner):
        by_example.setdefault(i, []).append(j)
    seqs, reads = [], []
    for pairs in by_example.values():
        answer_start = [next(t for t, lab in enumerate(enc["labels"][j]) if lab != IGNORE_INDEX) for j in pairs]
        single = all(len(enc["input_ids"][j]) - k == 1 for j, k in zip(pairs, answer_start))
        prompt0 = enc["input_ids"][pairs[0]][:answer_start[0]]
        if single and all(enc["input_ids"][j][:k] == prompt0 for j, k in zip(pairs, answer_start)):
            seqs.append(prompt0)
            reads.append([(len(prompt0) - 1, enc["input_ids"][j][-1], j) for j in pairs])
            continue
        for j, k in zip(pairs, answer_start):
            ids = enc["input_ids"][j]
            seqs.append(ids)
            # Position t predicts token t + 1.
            reads.append([(t - 1, ids[t], j) for t in range(k, len(ids))])
    return seqs, reads


class ChoicePlan:
    """The forward passes that score every choice of a split by log-likelihood, and what to read from each.

    Built once by :func:`plan_choices`; :func:`score_choices` runs it on a model, and so can a caller that runs the
    forwards its own way (the ground-truth collector feeds cached block inputs). ``inputs[k]`` are the model inputs
    of forward ``k`` (CPU tensors: ``input_ids``, ``attention_mask`` and, when the model takes it,
    ``logits_to_keep``); :meth:`read` adds what forward ``k``'s logits say to running totals; :meth:`result` turns
    the totals into predictions.
    """

    def __init__(self, inputs: list[dict], reads: list[tuple], owner: list[int], gold: list[int]):
        self.inputs, self.reads, self.owner, self.gold = inputs, reads, owner, gold

    def __len__(self) -> int:
        return len(self.inputs)

    def totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh (sum of log-probabilities, number of tokens) per (example, choice) pair."""
        return (torch.zeros(len(self.owner), dtype=torch.float64),
                torch.zeros(len(self.owner), dtype=torch.float64))

    def read(self, k: int, logits: torch.Tensor, totals: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Add the choice-token log-probabilities in forward ``k``'s ``logits`` to ``totals``."""
        rows, pos, _, _ = self.reads[k]
        device = logits.device
        self.read_selected(k, logits[rows.to(device), pos.to(device)], totals)

    def positions(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, positions)`` of forward ``k`` whose logits are read, positions counted in the full sequence
        (for a caller that runs the LM head itself, at those hidden states only)."""
        rows, pos, _, _ = self.reads[k]
        kept = self.inputs[k].get("logits_to_keep")
        return rows, (kept[pos] if torch.is_tensor(kept) else pos)

    def read_selected(self, k: int, logits: torch.Tensor, totals: tuple[torch.Tensor, torch.Tensor]) -> None:
        """As :meth:`read`, from the logits at :meth:`positions` only (one row per position, in that order)."""
        _, _, toks, pairs = self.reads[k]
        device = logits.device
        # Only the positions read are normalised, in float32 (bf16 log-softmax is too coarse).
        logp = logits.float().log_softmax(-1)
        token_lp = logp.gather(-1, toks.to(device).unsqueeze(-1)).squeeze(-1).double().cpu()
        totals[0].index_add_(0, pairs, token_lp)
        totals[1].index_add_(0, pairs, torch.ones_like(token_lp))

    def result(self, totals: tuple[torch.Tensor, torch.Tensor], normalize: bool = False) -> dict:
        """``accuracy``, ``predictions``, ``scores`` (per example, per choice) and ``gold_nll`` (mean over examples
        of the gold choice's negative log-likelihood per token: a loss to read beside the accuracy)."""
        total, n_tokens = totals
        flat_scores = (total / n_tokens.clamp(min=1) if normalize else total).tolist()
        per_token = (total / n_tokens.clamp(min=1)).tolist()
        n = len(self.gold)
        scores: list[list[float]] = [[] for _ in range(n)]
        per_token_of: list[list[float]] = [[] for _ in range(n)]
        for i, sc, pt in zip(self.owner, flat_scores, per_token):
            scores[i].append(sc)
            per_token_of[i].append(pt)
        predictions = [int(np.argmax(sc)) for sc in scores]
        accuracy = float(np.mean([p == g for p, g in zip(predictions, self.gold)]))
        gold_nll = float(-np.mean([pt[g] for pt, g in zip(per_token_of, self.gold)]))
        return {"accuracy": accuracy, "predictions": predictions, "scores": scores, "gold_nll": gold_nll}


def plan_choices(model, tokenizer, task_split, *, max_length: int = 128, batch_size: int = 16,
                 split: str = "test", answer_cue: str = DEFAULT_ANSWER_CUE) -> ChoicePlan:
    """The :class:`ChoicePlan` of a split (see :func:`score_choices` for the scoring rule and the arguments)."""
    ds = _split_of(task_split, split)
    if model_kind(model) != "causal_lm":
        raise ValueError(f"score_choices needs a causal LM (...ForCausalLM), got {type(model).__name__}")
    if len(ds) == 0:
        raise ValueError("score_choices got an empty split")
    prepare_tokenizer(tokenizer, model)
    choices = _choices_of(ds)
    gold = [int(x) for x in ds["label"]]
    # a label outside its example's choices would be read as another choice (-1: the last) or fail after every pass
    bad = [i for i, (g, opts) in enumerate(zip(gold, choices)) if not 0 <= g < len(opts)]
    if bad:
        i = bad[0]
        raise ValueError(f"{len(bad)} example(s) have a label that is not one of their choices, e.g. example {i}: "
                         f"label {gold[i]} with {len(choices[i])} choices; labels index each example's choices "
                         "from 0")
    prompts, answers, owner = [], [], []
    for i, (text, opts) in enumerate(zip(ds["text"], choices)):
        prompt = causal_prompt(text, answer_cue)
        for opt in opts:
            prompts.append(prompt)
            answers.append(opt)
            owner.append(i)
    enc = encode_causal(tokenizer, prompts, answers, max_length=max_length)
    seqs, reads = _scoring_plan(enc, owner)
    collate = collator_for("seq_cls", tokenizer)  # plain padding of input_ids / attention_mask
    keep_positions = _accepts_logits_to_keep(model)
    inputs, plan_reads = [], []
    with _right_padding(tokenizer):
        for start in range(0, len(seqs), batch_size):
            chunk = range(start, min(start + batch_size, len(seqs)))
            batch = collate([{"input_ids": seqs[s], "attention_mask": [1] * len(seqs[s])} for s in chunk])
            flat = [(r, pos, tok, j) for r, s in enumerate(chunk) for pos, tok, j in reads[s]]
            rows, pos, toks, pairs = (torch.tensor(c) for c in zip(*flat))
            inp = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            if keep_positions:
                # The LM head (vocab-sized) only runs at the positions read: less compute, far less memory.
                kept = torch.unique(pos)
                inp["logits_to_keep"] = kept
                pos = torch.searchsorted(kept, pos)
            inputs.append(inp)
            plan_reads.append((rows, pos, toks, pairs))
    return ChoicePlan(inputs, plan_reads, owner, gold)


def score_choices(model, tokenizer, task_split, *, max_length: int = 128, batch_size: int = 16,
                  normalize: bool = False, split: str = "test", answer_cue: str = DEFAULT_ANSWER_CUE) -> dict:
    """Zero-shot / evaluation accuracy of a causal LM by log-likelihood of each choice given the prompt.

    For every example and every choice (a classification split's choices are its label names), the score is the
    sum of the log-probabilities of the choice's tokens after ``causal_prompt(text)``, tokenised exactly as
    :func:`tokenize_split` tokenises training examples; with ``normalize=True`` it is divided by the number of
    choice tokens. The prediction is the highest-scoring choice (ties: the first).

    Args:
        task_split: a ``datasets.Dataset`` split, or a :class:`Task` (then ``split`` picks the split).
        batch_size: sequences per forward pass.

    Returns:
        ``{"accuracy": float, "predictions": list[int], "scores": list[list[float]], "gold_nll": float}``
        (``gold_nll``: mean negative log-likelihood per token of the gold choice).

    Runs under ``torch.no_grad()`` in eval mode (restored afterwards) on the model's device, in the model's dtype;
    the log-softmax is computed in float32, so bf16 models score reliably. An example whose choices are all single
    tokens runs once rather than once per choice.
    """
    plan = plan_choices(model, tokenizer, task_split, max_length=max_length, batch_size=batch_size, split=split,
                        answer_cue=answer_cue)
    device = device_of(model)
    totals = plan.totals()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for k, inp in enumerate(plan.inputs):
                plan.read(k, model(**{n: v.to(device) for n, v in inp.items()}).logits, totals)
    finally:
        model.train(was_training)
    return plan.result(totals, normalize=normalize)

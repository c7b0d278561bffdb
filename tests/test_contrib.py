"""Ground-truth collection: cached-block training equals naive training, resumability, and bad input."""

import copy
import json

import pytest
import torch
import transformers
from helpers import tiny_bert_cls, tiny_llama, token_batch

from zest_hf import find_targets
from zest_hf.blocks import BlockRunner
from zest_hf.contrib import HEAD_ONLY, ContribBudget, collect_contributions, read_jsonl

SMALL = ContribBudget(steps=3, batch_size=4, max_length=16, eval_examples=12, eval_batch_size=8)


def test_cached_block_training_equals_naive_training():
    model = tiny_bert_cls().eval()
    naive = copy.deepcopy(model)
    batches = [dict(token_batch(seed=s), labels=torch.tensor([0, 1, 2, 0])) for s in range(3)]
    name = "bert.encoder.layer.1.attention.self.value"

    def train(m, use_cache):
        for p in m.parameters():
            p.requires_grad_(False)
        params = list(m.get_submodule(name).parameters()) + list(m.classifier.parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=1e-2)
        runner = BlockRunner(m, find_targets(m))
        cache = [runner.capture(1, b) for b in batches]
        losses = []
        for b, h in zip(batches, cache):
            if use_cache:
                with runner.start_at(1, lambda h=h: h):
                    loss = m(**b).loss
            else:
                loss = m(**b).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        return losses

    a, b = train(model, True), train(naive, False)
    assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), naive.state_dict().items()):
        assert torch.allclose(v, v2, atol=1e-6), k
    # the block list is restored after use
    assert len(model.bert.encoder.layer) == 2


def test_block_runner_on_llama_is_exact():
    m = tiny_llama().eval()
    batch = token_batch()
    r = BlockRunner(m, find_targets(m))
    with torch.no_grad():
        full = m(**batch).logits
        h = r.capture(1, batch)
        with r.start_at(1, lambda: h):
            part = m(**batch).logits
    assert torch.equal(full, part)
    assert len(m.model.layers) == 2




def test_collect_all_layers_then_resume_skips_and_repairs_torn_line(tiny_dir, tmp_path):
    out = tmp_path / "c.jsonl"
    first = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.output.dense"]
    rows = collect_contributions(str(tiny_dir), "bbc_news", out, seed=1, budget=SMALL, layers=first, progress=False)
    assert {r["layer"] for r in rows} == set(first) | {HEAD_ONLY}
    for r in rows:
        assert {"model", "task", "seed", "layer", "type", "block", "score", "val_acc", "val_loss", "budget"} <= r.keys()
        assert r["score"] == r["val_acc"] and 0 <= r["val_acc"] <= 1 and r["budget"]["steps"] == 3
    # a killed run leaves a torn line; the rerun drops it and does only what is missing
    with out.open("a") as fh:
        fh.write('{"model": "torn')
    rows2 = collect_contributions(str(tiny_dir), "bbc_news", out, seed=1, budget=SMALL, progress=False)
    assert len(rows2) == 12 + 1
    lines = out.read_text().splitlines()
    assert len(lines) == 13 and all(json.loads(l) for l in lines)
    # the same layer trained in a separate run gives the same score: every run starts from the same state
    again = collect_contributions(str(tiny_dir), "bbc_news", tmp_path / "d.jsonl", seed=1, budget=SMALL,
                                  layers=first[:1], progress=False)
    a = [r for r in rows2 if r["layer"] == first[0]][0]
    b = [r for r in again if r["layer"] == first[0]][0]
    assert (a["val_acc"], a["val_loss"]) == (b["val_acc"], pytest.approx(b["val_loss"], rel=1e-6))


def test_bad_input_fails_before_training(tiny_dir, tmp_path):
    out = tmp_path / "c.jsonl"
    with pytest.raises(ValueError, match="unknown task|Unknown task|not a known"):
        collect_contributions(str(tiny_dir), "no_such_task", out, budget=SMALL, progress=False)
    with pytest.raises(ValueError, match="training examples"):
        collect_contributions(str(tiny_dir), "bbc_news", out, budget=ContribBudget(steps=10_000, batch_size=64),
                              progress=False)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        collect_contributions(str(tiny_dir), "bbc_news", out, budget=ContribBudget(steps=0), progress=False)
    with pytest.raises(ValueError, match="not among"):
        collect_contributions(str(tiny_dir), "bbc_news", out, budget=SMALL, layers=["nope"], progress=False)
    assert not out.exists() or read_jsonl(out) == []
    collect_contributions(str(tiny_dir), "bbc_news", out, budget=SMALL, layers=[], progress=False)
    with pytest.raises(ValueError, match="another budget"):
        collect_contributions(str(tiny_dir), "bbc_news", out, budget=ContribBudget(steps=4, batch_size=4,
                              max_length=16, eval_examples=12), layers=[], progress=False)
    # lines scored another way (log-likelihood of the answers, not the task head) are not mixed in either
    line = json.loads(out.read_text().splitlines()[0])
    out.write_text(json.dumps({**line, "scoring": "loglik"}) + "\n")
    with pytest.raises(ValueError, match="another scoring"):
        collect_contributions(str(tiny_dir), "bbc_news", out, budget=SMALL, layers=[], progress=False)


def test_a_whole_last_record_without_its_newline_is_kept_and_a_torn_one_dropped(tmp_path):
    from zest_hf.research.records import open_for_append

    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}')  # the writer was stopped between the record and its newline
    with open_for_append(path) as fh:
        fh.write('{"c": 3}\n')
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}, {"c": 3}]
    path.write_text('{"a": 1}\n{"b": ')
    with open_for_append(path) as fh:
        fh.write('{"c": 3}\n')
    assert read_jsonl(path) == [{"a": 1}, {"c": 3}]


def test_cached_and_naive_runs_of_one_layer_give_the_same_result(tiny_dir):
    from zest_hf.contrib import setup_contributions

    setup = setup_contributions(str(tiny_dir), "bbc_news", seed=2, budget=SMALL)
    before = {k: v.clone() for k, v in setup.model.state_dict().items()}
    t = [t for t in setup.targets if t.block == 1][0]
    cached = setup.run(t, caches=setup.caches(t.block))
    naive = setup.run(t)  # full forward from the embeddings, no cache
    assert cached["layer"] == naive["layer"] == t.name
    assert cached["val_acc"] == naive["val_acc"]
    assert cached["val_loss"] == pytest.approx(naive["val_loss"], rel=1e-5)
    assert cached["train_loss_last10"] == pytest.approx(naive["train_loss_last10"], rel=1e-5)
    # each run restores the pretrained start exactly
    assert all(torch.equal(before[k], v) for k, v in setup.model.state_dict().items())


def test_a_decoder_on_multiple_choice_trains_the_layer_alone_and_scores_by_log_likelihood(tiny_llama_dir, mc_task):
    """No head to train: the baseline is the untrained model, scored exactly as score_choices scores it, and a
    layer's run from cached block inputs equals its naive run."""
    from zest_hf.contrib import setup_contributions
    from zest_hf.tasks import score_choices

    setup = setup_contributions(str(tiny_llama_dir), mc_task, seed=0, budget=SMALL)
    assert setup.head_params == [] and setup.choice_plan is not None
    before = {k: v.clone() for k, v in setup.model.state_dict().items()}
    base = setup.run(None, caches=setup.caches(len(setup.runner) - 1))
    assert base["layer"] == HEAD_ONLY and base["scoring"] == "loglik" and base["train_loss_last10"] is None
    val = setup.task.splits["validation"].select(range(SMALL.eval_examples))
    ref = score_choices(setup.model, transformers.AutoTokenizer.from_pretrained(tiny_llama_dir), val,
                        max_length=SMALL.max_length)
    assert base["val_acc"] == ref["accuracy"]
    assert base["val_loss"] == pytest.approx(ref["gold_nll"], rel=1e-6)

    t = [t for t in setup.targets if t.block == 1 and t.type == "down"][0]
    cached = setup.run(t, caches=setup.caches(t.block))
    naive = setup.run(t)
    assert cached["val_acc"] == naive["val_acc"]
    assert cached["val_loss"] == pytest.approx(naive["val_loss"], rel=1e-5)
    assert cached["train_loss_last10"] == pytest.approx(naive["train_loss_last10"], rel=1e-5)
    assert cached["val_loss"] != pytest.approx(base["val_loss"], rel=1e-6)  # the layer did train
    assert all(torch.equal(before[k], v) for k, v in setup.model.state_dict().items())


def test_the_lm_head_run_at_the_read_positions_only_gives_the_full_heads_scores(tiny_llama_dir, mc_task):
    """The collector's decoder speed-up: the LM head only where the loss or a choice score reads it. The same layer
    run with the full head (cached and naive) gives the same accuracy and, to float precision, the same losses."""
    from zest_hf.contrib import setup_contributions

    setup = setup_contributions(str(tiny_llama_dir), mc_task, seed=1, budget=SMALL)
    assert setup.sparse_head  # checked exact at set-up, so on by default
    for t in [t for t in setup.targets if t.block == 1][:3]:
        caches = setup.caches(t.block)
        fast = setup.run(t, caches=caches)
        full = setup.run(t, caches=caches, sparse_head=False)
        naive = setup.run(t, sparse_head=False)
        for other in (full, naive):
            assert fast["val_acc"] == other["val_acc"]
            assert fast["val_loss"] == pytest.approx(other["val_loss"], rel=1e-5)
            assert fast["train_loss_last10"] == pytest.approx(other["train_loss_last10"], rel=1e-5)


def test_the_sparse_head_is_refused_where_the_model_changes_its_logits_after_the_head(tiny_llama_dir, mc_task):
    from zest_hf.contrib import setup_contributions
    from zest_hf.research.contrib import _sparse_head_is_exact

    setup = setup_contributions(str(tiny_llama_dir), mc_task, seed=0, budget=SMALL)
    args = (setup.model, setup.train_batches, setup.choice_plan, setup.val_batches)
    assert _sparse_head_is_exact(*args)
    real = type(setup.model).forward

    def capped(self, *a, **k):  # as a model with logit soft-capping does
        out = real(self, *a, **k)
        out.logits = 30 * torch.tanh(out.logits / 30)
        if out.loss is not None:
            out.loss = out.loss * 1.01
        return out

    type(setup.model).forward = capped
    try:
        assert not _sparse_head_is_exact(*args)
    finally:
        type(setup.model).forward = real


def test_a_decoder_classification_task_can_take_the_multiple_choice_protocol(tiny_llama_dir):
    """decoder_classification="causal_lm": the label names are the choices, scored by log-likelihood, no head."""
    from zest_hf.contrib import setup_contributions

    setup = setup_contributions(str(tiny_llama_dir), "bbc_news", seed=0, budget=SMALL,
                                decoder_classification="causal_lm")
    assert setup.head_params == [] and setup.choice_plan is not None and setup.row_base["scoring"] == "loglik"
    t = [t for t in setup.targets if t.block == 1][0]
    fast, naive = setup.run(t, caches=setup.caches(t.block)), setup.run(t, sparse_head=False)
    assert fast["val_acc"] == naive["val_acc"] and fast["val_loss"] == pytest.approx(naive["val_loss"], rel=1e-5)
    with_head = setup_contributions(str(tiny_llama_dir), "bbc_news", seed=0, budget=SMALL)
    assert with_head.head_params and with_head.row_base["scoring"] == "head"


def test_block_inputs_walked_up_from_a_lower_block_equal_a_fresh_capture(tiny_llama_dir, mc_task):
    from zest_hf.contrib import setup_contributions

    setup = setup_contributions(str(tiny_llama_dir), mc_task, seed=0, budget=SMALL)
    low, high = setup.caches(0), setup.caches(1)
    walked = setup.caches(1, below=(0, low))
    for fresh, step in zip(high[0] + high[1], walked[0] + walked[1]):
        assert torch.allclose(fresh, step, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="lies above"):
        setup.caches(0, below=(1, high))

"""LISA as a Trainer callback: only the drawn blocks (plus embeddings and head) train, re-drawn every K steps."""

import datasets
import pytest
import torch
import transformers
from helpers import tiny_llama

from zest_hf.train.lisa import LisaCallback


@pytest.mark.usefixtures("one_thread")
def test_lisa_trains_only_the_drawn_blocks_and_redraws_every_interval(tmp_path):
    torch.manual_seed(0)
    model = tiny_llama(num_hidden_layers=6)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(3, 1000, (24, 10), generator=torch.Generator().manual_seed(1))
    train = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4,
                                          learning_rate=1e-2, report_to="none", save_strategy="no",
                                          logging_strategy="no", disable_tqdm=True, seed=0, use_cpu=True)
    lisa = LisaCallback(model, n_layers=1, interval=2, seed=3)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train, callbacks=[lisa])
    trainer.train()
    assert [step for step, _ in lisa.history] == [0, 2, 4] and all(len(a) == 1 for _, a in lisa.history)
    drawn = {b for _, active in lisa.history for b in active}
    changed = {int(n.split(".")[2]) for n, p in model.named_parameters()
               if n.startswith("model.layers.") and not torch.equal(p, before[n])}
    assert changed == drawn and len(drawn) < 6  # the blocks never drawn did not move
    assert not torch.equal(model.model.embed_tokens.weight, before["model.embed_tokens.weight"])  # always trains


def test_lisa_refuses_what_cannot_be_drawn():
    with pytest.raises(ValueError, match="n_layers must be between 1 and the model's 2 blocks"):
        LisaCallback(tiny_llama(), n_layers=3)
    with pytest.raises(ValueError, match="interval"):
        LisaCallback(tiny_llama(), interval=0)


def test_a_resumed_run_trains_the_blocks_the_uninterrupted_run_trained_at_every_step():
    from types import SimpleNamespace

    model = tiny_llama(num_hidden_layers=8)

    def active_per_step(start, end):
        lisa = LisaCallback(model, n_layers=2, interval=5, seed=0)
        lisa.on_train_begin(None, SimpleNamespace(global_step=start), None)
        active = {}
        for step in range(start, end):
            lisa.on_step_begin(None, SimpleNamespace(global_step=step), None)
            active[step] = [i for i, block in enumerate(lisa.blocks) if next(block.parameters()).requires_grad]
        return lisa.history, active

    history, full = active_per_step(0, 20)
    # the uninterrupted draws are those the committed LISA results were run with
    assert history == [(0, [5, 7]), (5, [1, 2]), (10, [0, 7]), (15, [5, 7])]
    for start in (1, 5, 10, 12, 19):  # inside an interval and at its first step
        _, resumed = active_per_step(start, 20)
        assert resumed == {s: full[s] for s in range(start, 20)}, start

"""Run by tests/test_sharded.py under ``torch.distributed.run --nproc_per_node 2`` (gloo, CPU); not a test module.

Each rank builds the same tiny Llama (seeded), applies a resolved ZEST selection (``mode`` from argv) whose selected
projections share blocks with frozen ones, shards every block and the root with FSDP2 ``fully_shard``, trains a few
SGD steps (with momentum, so that there is optimizer state to count; plain SGD, because Adam's first steps amplify
float-order differences to whole learning-rate steps) on its half of a fixed global batch, and writes
``rank<i>.json``: the gathered trained tensors' hashes, which parameters hold a gradient and optimizer state (and how
many bytes), and whether the frozen weights moved.
Both ranks then save the adapter with ``zest_hf.save_adapter`` (a collective gather; rank 0 writes).
"""

import hashlib
import json
import sys
from pathlib import Path

import peft
import helpers
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

import zest_hf

SELECTED = ["model.layers.0.self_attn.v_proj", "model.layers.1.mlp.up_proj", "model.layers.1.self_attn.o_proj"]
STEPS, LR = 3, 0.5


def tiny_llama():
    torch.manual_seed(0)  # the same initial weights on every rank and in the test that compares with them
    return helpers.tiny_llama()


def global_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 1000, (STEPS, 8, 12), generator=g)  # no padding: every rank holds as many tokens


def config(mode):
    return zest_hf.ZestConfig(selected_modules=SELECTED, selection_scores=[3.0, 2.0, 1.0], mode=mode,
                              modules_to_save=[])


def digest(t):
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()


def main():
    out, mode = Path(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = peft.get_peft_model(tiny_llama(), config(mode))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    for block in model.base_model.model.model.layers:
        fully_shard(block)
    fully_shard(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=LR, momentum=0.9)  # momentum: optimizer state to count
    rows = global_batch()[:, rank * 8 // world:(rank + 1) * 8 // world]
    for step in range(STEPS):
        ids = rows[step]
        model(input_ids=ids, labels=ids).loss.backward()
        if step == STEPS - 1:  # what the last backward left: gradients only where something trains
            grads = {n: (p.grad is not None) for n, p in model.named_parameters()}
            grad_bytes = {k: sum(p.grad.to_local().numel() * p.grad.element_size() for p in model.parameters()
                                 if p.grad is not None and p.requires_grad == k) for k in (True, False)}
        opt.step()
        opt.zero_grad(set_to_none=True)
    state_params = {id(p) for p in opt.state}
    opt_bytes = {k: sum(sum(v.to_local().numel() * v.element_size() for v in opt.state[p].values()
                            if torch.is_tensor(v) and v.dim() > 0)
                        for p in model.parameters() if id(p) in state_params and p.requires_grad == k)
                 for k in (True, False)}
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    frozen_moved = [n for n, p0 in before.items() if not torch.equal(full[n], p0)]
    trained = {n: digest(v) for n, v in full.items() if n not in before}
    zest_hf.save_adapter(model, out / f"adapter_{mode}")
    (out / f"rank{rank}_{mode}.json").write_text(json.dumps({
        "trained": trained, "frozen_moved": frozen_moved,
        "frozen_with_grad": [n for n, has in grads.items() if has and n in before],
        "trainable_without_grad": [n for n, has in grads.items() if not has and n not in before],
        "grad_bytes": {str(k): v for k, v in grad_bytes.items()},
        "opt_state_bytes": {str(k): v for k, v in opt_bytes.items()},
        "opt_state_params": len(state_params), "trainable_params": len(trainable),
        "sharded": zest_hf.peft_method.save.is_sharded(model)}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

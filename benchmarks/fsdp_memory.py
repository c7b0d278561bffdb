"""What a ZEST selection costs in gradient and optimizer memory under FSDP1 and FSDP2, measured side by side.

FSDP1 flattens each wrapped module's parameters into one ``FlatParameter``. With ``use_orig_params=True`` (the only
way it accepts frozen and trainable weights in one unit) the flat parameter's gradient is allocated whole, frozen
parts included (pytorch issue 104690), so a per-projection selection pays for every weight of each block it touches.
FSDP2 (``fully_shard``) keeps each parameter its own DTensor: a frozen weight gets no gradient at all. A third
variant wraps FSDP1 along the selection (each selected projection its own unit), which recovers the gain at the
price of more, smaller collectives.

Each variant runs in its own pair of processes (``torch.distributed.run --nproc_per_node 2``, gloo on CPU; NCCL on
GPUs works the same), trains a few SGD-with-momentum steps of the same selection of a random-initialised Llama on
the same global batch, and reports per rank the bytes of gradient held after the last backward and of optimizer
state, each counted from the tensors FSDP holds (the local shards): an exact count, not a noisy RSS reading. The
unsharded single-process run is the reference the ratios are taken to.

    python benchmarks/fsdp_memory.py                       # writes benchmarks/results/fsdp_memory.{md,json}
    python benchmarks/fsdp_memory.py --layers 8 --hidden 512
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VARIANTS = ("unsharded", "fsdp2", "fsdp1_per_block", "fsdp1_follows_selection")
STEPS = 2


def build(args):
    import torch
    import transformers

    import peft
    import zest_hf

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=2048, hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                                   num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=8,
                                   pad_token_id=0)
    base = transformers.LlamaForCausalLM(cfg)
    # a ZEST-like selection: five projections of three blocks (each block also holds frozen projections)
    picks = [(0, "self_attn.v_proj"), (args.layers // 2, "mlp.up_proj"), (args.layers // 2, "self_attn.o_proj"),
             (args.layers - 1, "mlp.down_proj"), (args.layers - 1, "self_attn.q_proj")]
    selected = [f"model.layers.{b}.{m}" for b, m in picks]
    model = peft.get_peft_model(base, zest_hf.ZestConfig(selected_modules=selected, modules_to_save=[]))
    return model, selected


def local_bytes(t) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def worker(args) -> dict:
    import torch
    import torch.distributed as dist

    variant = args.worker
    model, selected = build(args)
    selection_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    sharded = variant != "unsharded"
    if sharded:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    blocks = model.base_model.model.model.layers
    if variant == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in blocks:
            fully_shard(block)
        fully_shard(model)
    elif variant.startswith("fsdp1"):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        import functools

        from torch.distributed.fsdp.wrap import ModuleWrapPolicy, lambda_auto_wrap_policy

        block_type = type(blocks[0])  # taken now: wrapping replaces the list's entries with FSDP units
        if variant == "fsdp1_per_block":
            policy = ModuleWrapPolicy({block_type})
        else:  # each selected projection its own unit: its flat parameter holds only trainable weights
            chosen = {id(m) for n, m in model.named_modules() if any(n.endswith("." + s) for s in selected)}
            assert len(chosen) == len(selected), "every selected projection is wrapped"
            policy = functools.partial(lambda_auto_wrap_policy,
                                       lambda_fn=lambda m: id(m) in chosen or isinstance(m, block_type))
        # FSDP1 needs a device: on a machine without an accelerator, the CPU (gloo)
        device = None if torch.cuda.is_available() else torch.device("cpu")
        model = FSDP(model, auto_wrap_policy=policy, use_orig_params=True, device_id=device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    batch = torch.randint(3, 2048, (STEPS, 8, args.seq), generator=g)
    rows = batch[:, rank * 8 // world:(rank + 1) * 8 // world]
    grad_bytes = 0
    for step in range(STEPS):
        ids = rows[step]
        model(input_ids=ids, labels=ids).loss.backward()
        if step == STEPS - 1:
            if variant.startswith("fsdp1"):
                # the flat parameters FSDP1 allocates gradients for (the originals' .grad are views into them)
                grad_bytes = sum(local_bytes(m._handle.flat_param.grad) for m in FSDP.fsdp_modules(model)
                                 if m._handle is not None and m._handle.flat_param.grad is not None)
            else:
                grad_bytes = sum(local_bytes(p.grad) for p in model.parameters() if p.grad is not None)
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep the buffers: FSDP1 reuses them; counted above before this
    opt_bytes = sum(local_bytes(v) for s in opt.state.values() for v in s.values() if torch.is_tensor(v)
                    and v.dim() > 0)
    res = {"variant": variant, "rank": rank, "world": world, "grad_bytes": grad_bytes, "opt_state_bytes": opt_bytes,
           "selection_bytes": selection_bytes}
    if sharded:
        dist.destroy_process_group()
    return res


def launch(variant: str, args, out: Path) -> list[dict]:
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
                              if variant != "unsharded" else []) + [
        str(Path(__file__).resolve()), "--worker", variant, "--out", str(out), "--layers", str(args.layers),
        "--hidden", str(args.hidden), "--seq", str(args.seq)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return [json.loads(p.read_text()) for p in sorted(out.glob(f"{variant}.rank*.json"))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    if args.worker:
        res = worker(args)
        (out / f"{args.worker}.rank{res['rank']}.json").write_text(json.dumps(res))
        return 0
    import tempfile

    from tqdm.auto import tqdm

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for v in tqdm(VARIANTS, desc="FSDP variants", unit="variant"):
            rows += launch(v, args, Path(tmp))
    ref = next(r for r in rows if r["variant"] == "unsharded")
    lines = ["# ZEST selection under FSDP1 and FSDP2: gradient and optimizer memory per rank", "",
             f"Reproduce: `python benchmarks/fsdp_memory.py --layers {args.layers} --hidden {args.hidden}` (random "
             f"Llama, {args.layers} blocks, hidden {args.hidden}; five selected projections in three blocks; 2 "
             "ranks, gloo on CPU; seed 0). Bytes counted from the tensors each rank holds after the last backward "
             "(gradient) and after the last step (SGD momentum). Ratio: per-rank bytes x ranks / the unsharded "
             "run's, so 1.0 means the shards add up to exactly what one process would hold.", "",
             f"The selection holds {ref['selection_bytes'] / 2**20:.2f} MiB of weights.", "",
             "| variant | rank | gradient MiB | optimizer state MiB | gradient vs unsharded | optimizer vs unsharded |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['rank']} | {r['grad_bytes'] / 2**20:.3f} | "
                     f"{r['opt_state_bytes'] / 2**20:.3f} | {r['grad_bytes'] * r['world'] / ref['grad_bytes']:.2f}x | "
                     f"{r['opt_state_bytes'] * r['world'] / ref['opt_state_bytes']:.2f}x |")
    text = "\n".join(lines) + "\n"
    (out / "fsdp_memory.md").write_text(text)
    (out / "fsdp_memory.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

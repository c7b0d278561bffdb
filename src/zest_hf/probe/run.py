"""The one-batch zero-shot probe: one forward and one backward give every candidate layer a row of metrics.

Everything the probe does to the model happens inside :func:`zest_hf.probe.state.borrowed` and is undone in its
``finally``: hooks, ``requires_grad`` flags, ``.grad`` contents, train/eval mode and (for synflow) weight signs. The
model is never deep-copied: a probe costs about one training step, not one model.

Passes, only those the requested metrics need:

1. static metrics from the weights;
2. forward with hooks (activation statistics, and for fisher each output kept until its gradient arrives);
3. backward: per-layer gradient metrics computed as each weight's gradient is accumulated, then the gradient is
   dropped, so at most one layer's gradient exists at a time; with grasp the gradients are taken with
   ``create_graph=True`` and one double backward gives ``H g``;
4. synflow: its own batch-of-one pass over the all-positive model with an all-ones input.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import NonFiniteError
from ..metrics import ActStats, GradParts, Metric, resolve_metrics
from ..modeling import (FSDP1, dense_weight, device_of, has_mixed_dtypes, is_quantized, sharded_by,
                        stores_transposed, unwrap_parallel, uses_reentrant_checkpointing)
from ..targets import Target, find_targets
from .batch import check_batch, model_loss, prepare_batch
from .result import ProbeResult
from .state import Session, borrowed

__all__ = ["probe"]


def probe(
    model: nn.Module,
    batch: Mapping,
    metrics: str | Sequence[str] | None = None,
    *,
    targets: Sequence[Target] | None = None,
    target_modules: str | Sequence[str] | None = None,
    exclude_modules: str | Sequence[str] | None = None,
    train_mode: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> ProbeResult:
    """Measure zero-shot metrics for every candidate layer of ``model`` from ONE batch.

    Args:
        model: A transformers model with a loss head (sequence classification, multiple choice, causal LM...).
            Any device and dtype; it is left exactly as it was found.
        batch: One collated batch (a dict of tensors, as a transformers data collator returns). It needs
            ``labels`` unless the model is a causal LM, in which case the inputs themselves are the labels.
        metrics: ``None``/"default" (all but grasp), "all", or a list of metric (or column) names; see
            :data:`zest_hf.metrics.METRICS`.
        targets: Candidate layers from :func:`zest_hf.find_targets`; found automatically when ``None``.
        target_modules / exclude_modules: Passed to :func:`find_targets` when ``targets`` is None.
        train_mode: Run the passes in train mode (dropout on). Default eval: metrics then depend only on the batch.
        seed: Seeds the RNG inside the probe (dropout in train mode); the caller's RNG state is restored.
        progress: Show a progress bar over the passes.

    Returns:
        A :class:`ProbeResult`.

    Raises:
        MissingLabelsError, ValueError, TypeError: a bad batch or argument, before any pass runs.
        NonFiniteError: the loss or a layer's gradient is NaN/inf (the model is restored first).

    Example::

        >>> result = probe(model, batch)                    # doctest: +SKIP
        >>> result.to_pandas().sort_values("snip", ascending=False).head()  # doctest: +SKIP
    """
    chosen = resolve_metrics(metrics)
    model_u = unwrap_parallel(model)
    _check_not_sharded(model_u)
    tlist = list(targets) if targets is not None else find_targets(model_u, target_modules, exclude_modules)
    check_batch(model_u, batch)
    _check_weights_finite(tlist)
    sources = {m.source for m in chosen}
    if "synflow" in sources:
        _check_synflow_supported(model_u)
    if "hessian" in sources and any(is_quantized(t.module) for t in tlist):
        raise ValueError("grasp needs a double backward through the weights, and 4-bit weights have no gradient; "
                         "leave grasp out (metrics='default', or a list without 'grasp') on a quantised model.")

    device = device_of(model_u)
    data = prepare_batch(model_u, batch, device)
    rows = [dict() for _ in tlist]
    nonfinite: list[tuple[str, str]] = []
    timings: dict[str, float] = {}
    stages = ["weights"] + (["forward+backward"] if sources & {"forward", "grad", "grad_parts", "fisher", "hessian"}
                            else [])
    stages += ["synflow"] if "synflow" in sources else []
    bar = _progress(len(stages), progress)
    loss_value = None  # no data pass when only static/synflow metrics are asked for

    # torch.manual_seed reseeds every initialised CUDA device, not only the model's: all of them are forked
    rng_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() \
        else []
    if torch.is_inference_mode_enabled():
        # tensors made in inference mode cannot take part in autograd: the probe works on copies of the batch's
        with torch.inference_mode(False):
            data = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in data.items()}
    # the probe needs gradients even when called under torch.no_grad() / inference_mode(): it turns them on for
    # itself only (the caller's mode is back on exit). Under a caller's autocast (a Trainer's bf16/fp16 step, where
    # a pending selection is made) see _outside_autocast.
    with bar, torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=rng_devices), \
            _outside_autocast(model_u, device), \
            borrowed(model_u, [t.weight for t in tlist if not is_quantized(t.module)], train_mode) as session:
        torch.manual_seed(seed)

        t0 = time.perf_counter()
        bar.set_postfix_str("weights")
        for i, t in enumerate(tlist):
            _apply(chosen, "weight", dense_weight(t.module), None, rows[i])
        timings["weights"] = time.perf_counter() - t0
        bar.update()

        if len(stages) > 1 and stages[1] == "forward+backward":
            t0 = time.perf_counter()
            bar.set_postfix_str("forward+backward")
            loss_value = _data_pass(model_u, tlist, data, chosen, sources, rows, session)
            timings["forward+backward"] = time.perf_counter() - t0
            bar.update()

        if "synflow" in sources:
            t0 = time.perf_counter()
            bar.set_postfix_str("synflow")
            _synflow_pass(model_u, tlist, data, chosen, rows, session)
            timings["synflow"] = time.perf_counter() - t0
            bar.update()

    columns = [c for m in chosen for c in m.columns]
    values = {c: [float(r.get(c, float("nan"))) for r in rows] for c in columns}
    for c, vs in values.items():
        for t, v in zip(tlist, vs):
            if not math.isfinite(v):
                nonfinite.append((t.name, c))
    if nonfinite:
        warnings.warn(
            f"{len(nonfinite)} metric value(s) are NaN or inf (e.g. {nonfinite[:3]}); they are reported in "
            "ProbeResult.nonfinite and refuse to rank.",
            RuntimeWarning,
            stacklevel=2,
        )
    ids = data.get("input_ids")
    meta = {
        "model_class": type(model_u).__name__,
        "name_or_path": getattr(getattr(model_u, "config", None), "name_or_path", None),
        "dtype": str(next(model_u.parameters()).dtype).replace("torch.", ""),
        "device": str(device),
        "batch_shape": list(ids.shape) if torch.is_tensor(ids) else None,
        "loss": loss_value,
        "seed": seed,
        "train_mode": train_mode,
        "timings_s": timings,
        "versions": _versions(),
    }
    return ProbeResult(
        layers=[t.to_dict() for t in tlist],
        values=values,
        metrics=[m.name for m in chosen],
        meta=meta,
        nonfinite=nonfinite,
    )




def _check_not_sharded(model: nn.Module) -> None:
    """A sharded model (FSDP2's DTensor parameters, FSDP1's flat parameters or wrapped modules, DeepSpeed ZeRO-3's
    partitioned ones) holds a slice of each weight per process: a probe there would score slices, differently on
    every rank."""
    fsdp1 = any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules())
    for name, p in model.named_parameters():
        kind = FSDP1 if fsdp1 else sharded_by(p)
        if kind is None:
            continue
        raise ValueError(
            f"{name} is sharded by {kind}, so this process holds only a slice of each weight and the probe would "
            "score slices. Select as its own step on the unsharded model (zest select ... --config-out "
            "zest.json, or zest_hf.select(model, batch, config).to_json(...)), then train with "
            "ZestConfig.from_json('zest.json')."
        )


def _check_weights_finite(tlist: Sequence[Target]) -> None:
    bad = [t.name for t in tlist if not _all_finite(dense_weight(t.module))]
    if bad:
        raise NonFiniteError(f"{len(bad)} candidate layer(s) hold NaN or inf weights: {bad[:5]}. The model was "
                             "damaged before the probe (a diverged run, an fp16 overflow, a bad checkpoint); reload it.")


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every entry is finite. A finite sum settles it in one reduction (an inf or NaN entry makes the sum
    inf or NaN); only a non-finite sum, which a huge finite tensor can also give, needs the entry-by-entry check."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def _apply(chosen: Sequence[Metric], source: str, w: torch.Tensor, x, row: dict) -> None:
    for m in chosen:
        if m.source == source:
            row.update(m.fn(w, x))


#: Micro-batches the probe batch's rows are split into for the gradient-part metrics (grad SNR, two halves).
GRAD_GROUPS = 4


def _data_pass(model, tlist, data, chosen, sources, rows, session: Session) -> float:
    """Forward with hooks, then backward (and, for grasp, a double backward). Returns the loss value.

    Each candidate's weight gradient is assembled in a hook on its output from its own input and output gradient
    (``dL/dW = sum over rows and tokens of (dL/dy) x^T``), micro-batch by micro-batch (:class:`GradParts`): the parts
    feed the gradient-part metrics at no extra tokens, and autograd computes no weight gradient (the weights do not
    require grad during this pass; the block inputs do). Only grasp makes the weights require grad: its
    Hessian-gradient product is autograd's. A layer's parts are dropped once its metrics are computed: peak memory
    holds the parts of the layers whose gradient is in flight, not the model's gradient.
    """
    token_mask = None
    if torch.is_tensor(data.get("attention_mask")):
        token_mask = data["attention_mask"].reshape(-1).bool()
    stats = [ActStats() for _ in tlist]
    fisher_sums: list[torch.Tensor | None] = [None] * len(tlist)
    grad_metrics = [m for m in chosen if m.source == "grad"]
    part_metrics = [m for m in chosen if m.source == "grad_parts"]
    need_parts = bool(grad_metrics or part_metrics)
    # one part (one matrix product per call) unless a metric reads the micro-batch split
    groups = GRAD_GROUPS if part_metrics else 1
    parts: list[GradParts | None] = [GradParts(groups) for _ in tlist]
    calls = [[0, 0] for _ in tlist]  # outputs that require grad, and gradients received, per layer
    bad_grads: list[str] = []
    transposed = [stores_transposed(t.module) for t in tlist]

    def finish(i):
        part, parts[i] = parts[i], None
        if part is None or not need_parts:
            return
        w = dense_weight(tlist[i].module)
        if not part.parts:  # no gradient reached this layer: it does not affect the loss
            part.parts.append(torch.zeros(w.shape, dtype=torch.float32, device=w.device))
        g = part.total
        if not _all_finite(g):
            bad_grads.append(tlist[i].name)
            return
        _apply(grad_metrics, "grad", w, g, rows[i])
        _apply(part_metrics, "grad_parts", w, part, rows[i])

    def forward_hook(i):
        def hook(module, args, output):
            if not torch.is_tensor(output):
                return
            if session.phase == "forward" and "forward" in sources:
                y = output.detach().reshape(-1, output.shape[-1])
                if token_mask is not None and y.shape[0] == token_mask.numel():
                    y = y[token_mask.to(y.device)]  # a layer of a model split across devices
                stats[i].update(y)
            # also during backward: reentrant checkpointing re-runs the block there, and only that run has a graph
            if output.requires_grad and session.phase in ("forward", "backward") and (
                    "fisher" in sources or need_parts):
                holder = [output, args[0] if args and torch.is_tensor(args[0]) else None]
                calls[i][0] += 1
                session.kept_outputs.append(holder)  # released when the gradient arrives, or on exit
                output.register_hook(grad_hook(i, holder))

        return hook

    def grad_hook(i, holder):
        def hook(grad):
            if session.phase != "backward" or not holder:
                return None
            y, x = holder
            holder.clear()
            if "fisher" in sources:
                n = y.shape[0] if y.dim() > 1 else 1
                f = (y.detach().float() * grad.detach().float()).reshape(n, -1, y.shape[-1]).sum(1)
                fisher_sums[i] = f if fisher_sums[i] is None else fisher_sums[i] + f
            if need_parts and parts[i] is not None:
                if x is None:
                    raise RuntimeError(f"{tlist[i].name} was called without a positional input tensor, so its weight "
                                       "gradient cannot be assembled from its input; probe without this layer "
                                       "(exclude_modules=...) or call it as module(x)")
                parts[i].add(grad.detach(), x.detach(), transposed[i])
                calls[i][1] += 1
                if calls[i][1] == calls[i][0]:
                    finish(i)
            return None

        return hook

    with session.hooks() as add_hook:
        for i, t in enumerate(tlist):
            add_hook(t.module.register_forward_hook(forward_hook(i)))
        given_embeds = torch.is_tensor(data.get("inputs_embeds"))
        float_targets = [t for t in tlist if not is_quantized(t.module)]
        # without an input to make require grad, the weights must (autograd then also computes their gradients)
        weights_off = "hessian" not in sources and (given_embeds or callable(getattr(model, "get_input_embeddings",
                                                                                      None)))
        if weights_off:
            for t in float_targets:
                t.weight.requires_grad_(False)
        if weights_off or _needs_input_grad(model):
            if given_embeds:
                data = dict(data, inputs_embeds=data["inputs_embeds"].detach().requires_grad_(True))
            else:
                for m in _input_embedding_modules(model):
                    add_hook(m.register_forward_hook(_require_grad))
        try:
            loss_value = _forward_backward(model, tlist, data, chosen, sources, rows, session)
        finally:
            for t in float_targets:
                t.weight.requires_grad_(True)
        for i in range(len(tlist)):
            finish(i)  # layers whose output never reached the loss (no gradient arrived)

    if bad_grads:
        raise NonFiniteError(
            f"the gradient is NaN or inf in {len(bad_grads)} layer(s), e.g. {bad_grads[:3]}. Probe in fp32/bf16 "
            "rather than fp16, or check the batch for extreme inputs."
        )
    if "forward" in sources:
        for i, t in enumerate(tlist):
            _apply(chosen, "forward", None, stats[i], rows[i])
    if "fisher" in sources:
        for i, t in enumerate(tlist):
            s = fisher_sums[i]
            w = dense_weight(t.module)
            if s is None:  # the layer's output never reached the loss
                s = torch.zeros(1, t.out_features, device=w.device)
            _apply(chosen, "fisher", w, s, rows[i])
    return loss_value


def _forward_backward(model, tlist, data, chosen, sources, rows, session: Session) -> float:
    weights = [t.weight for t in tlist]
    # Double backward needs attention kernels that are themselves differentiable: force the math SDPA kernel.
    kernel_ctx = _math_sdpa() if "hessian" in sources else contextlib.nullcontext()
    with kernel_ctx:
        session.phase = "forward"
        loss = model_loss(model, data)
        session.phase = "idle"
        if not bool(torch.isfinite(loss.detach()).all()):
            raise NonFiniteError(
                f"the probe loss is {loss.item()} before any backward pass; check the batch (labels in range? "
                "empty sequences?) and the dtype (fp16 overflow: use bf16 or fp32)."
            )
        if not loss.requires_grad:
            raise RuntimeError(
                "the loss does not depend on any candidate layer (a model whose forward detaches its hidden "
                "states?); nothing can be probed."
            )
        session.phase = "backward"
        if "hessian" in sources:
            grads = torch.autograd.grad(loss, weights, create_graph=True)
            session.phase = "hessian"
            # terms of a model split across devices live on their layers' devices
            z = sum((g * g.detach()).sum().to(loss.device) for g in grads)
            hgs = torch.autograd.grad(z, weights)
            del grads, z
            for i, hg in enumerate(hgs):
                _apply(chosen, "hessian", tlist[i].weight.detach().float(), hg.detach().float(), rows[i])
            del hgs
        else:
            loss.backward()
        session.phase = "idle"
        return loss.item()


def _needs_input_grad(model: nn.Module) -> bool:
    """Reentrant checkpointing (active in train mode only) passes no gradient back through a block whose input does
    not require grad; the probe then makes the block inputs require grad for its own passes."""
    return model.training and uses_reentrant_checkpointing(model)


def _input_embedding_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that look tokens up in the input-embedding table: the table's own module, and those sharing its
    weight (an encoder-decoder's ``encoder.embed_tokens``, which forward calls in place of the shared table)."""
    table = model.get_input_embeddings()
    return [m for m in model.modules() if m is table or (
        isinstance(m, nn.Embedding) and getattr(m, "weight", None) is getattr(table, "weight", False))]


def _require_grad(module, args, output):
    if torch.is_tensor(output) and not output.requires_grad:
        return output.requires_grad_(True)
    return None


def _drop_after(fn, i):
    def hook(p: torch.Tensor) -> None:
        fn(i, p.grad)
        p.grad = None

    return hook


def _synflow_pass(model, tlist, data, chosen, rows, session: Session) -> None:
    """synflow's own pass: all parameters made non-negative, an all-ones input, R = sum of outputs.

    A half-precision model runs this pass in fp32, on non-negative fp32 copies of its floating tensors: R is a
    product of every layer's ``|W|``, and LayerNorm of the near-constant all-ones activations magnifies bf16/fp16
    rounding into errors of several times the value (and a ranking unlike the fp32 one the predictors were trained
    on). The copies cost twice the half-precision weights for the length of the pass. An fp32/fp64 model is made
    non-negative in place and given back exactly (one sign bit per weight is kept).
    """
    emb = model.get_input_embeddings()
    # The all-ones input bypasses the input embedding, so its table (often the largest weight) never enters R unless
    # it is tied to the output layer: left as it is, its signs need no flipping and restoring.
    out_emb = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
    unused = emb.weight if getattr(out_emb, "weight", None) is not emb.weight else None
    params = [p for p in model.parameters() if p.is_floating_point() and p is not unused]
    upcast = any(p.dtype in (torch.float16, torch.bfloat16) for p in params)
    # a 4-bit weight cannot be made positive in place: every 4-bit layer of the model (a target or not: R must run on
    # |W| throughout) runs on |dequantised weight| for this pass instead, and a target's dR/dW is assembled from its
    # input and output gradient
    target_of = {id(getattr(t.module, "base_layer", t.module)): i for i, t in enumerate(tlist) if is_quantized(t.module)}
    quantized = [m for m in model.modules() if is_quantized(m) and not hasattr(m, "base_layer")]
    signs, originals, buffers, patched = [], [], [], []
    try:
        with torch.no_grad():
            if upcast:
                for p in params:
                    originals.append((p, p.data))
                    p.data = p.data.to(torch.float32, copy=True).abs_()  # a copy even of an fp32 one
                for m in model.modules():
                    for name, b in m._buffers.items():
                        if b is not None and b.dtype in (torch.float16, torch.bfloat16):
                            buffers.append((m, name, b))
                for m, name, b in buffers:
                    m._buffers[name] = b.float()
            else:
                signs = [torch.signbit(p.detach()) for p in params]  # one bit of information per weight, not a copy
                for p in params:
                    p.abs_()
        for layer in quantized:
            layer.forward = _positive_dequantized_forward(layer, target_of.get(id(layer)), chosen, rows, session)
            patched.append(layer)
        hidden = emb.weight.shape[-1]
        ids = data.get("input_ids")
        shape = (1, *ids.shape[1:]) if torch.is_tensor(ids) else (1, *data["inputs_embeds"].shape[1:-1])
        dtype = torch.float32 if upcast else emb.weight.dtype
        ones = torch.ones(*shape, hidden, dtype=dtype, device=emb.weight.device)
        # the all-ones input bypasses the embedding layer, so no embedding hook can make it require grad
        ones.requires_grad_(_needs_input_grad(model) or bool(quantized))
        kwargs = {"inputs_embeds": ones, "attention_mask": torch.ones(shape, dtype=torch.long, device=ones.device)}
        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            kwargs["decoder_inputs_embeds"] = ones  # the decoder is fed the same all-ones input
        if "use_cache" in data:
            kwargs["use_cache"] = False
        # every floating tensor is fp32 now (or the model's one dtype): the pass needs no caller's autocast
        with _outside_autocast(model, ones.device, always=True):
            out = model(**kwargs)
        logits = out["logits"] if isinstance(out, Mapping) else out.logits
        r = logits.float().sum()

        def collect(i, g):
            _apply(chosen, "synflow", dense_weight(tlist[i].module), g.detach().float(), rows[i])

        with session.hooks() as add_hook:
            for i, t in enumerate(tlist):
                if not is_quantized(t.module):
                    add_hook(t.weight.register_post_accumulate_grad_hook(_drop_after(collect, i)))
            session.phase = "synflow"
            r.backward()
            session.phase = "idle"
    finally:
        for layer in patched:
            del layer.forward  # the class's own forward again
        with torch.no_grad():
            for p, data_ in originals:  # the caller's own tensors, never written
                p.data = data_
            for m, name, b in buffers:
                m._buffers[name] = b
            for p, s in zip(params, signs):
                # |w| negated where the sign bit was set gives back w exactly, -0.0 included.
                p.copy_(torch.where(s, -p, p))


def _positive_dequantized_forward(layer: nn.Module, i: int | None, chosen, rows, session: Session):
    """The forward of a 4-bit projection during synflow's pass: ``x |W|^T + b`` with ``W`` dequantised on the fly
    (and again in backward: no dense copy outlives its matmul), and the synflow metric from ``dR/dW = dy^T x``."""

    def forward(x, *args, **kwargs):
        y = _PositiveDequantized.apply(x, layer)
        if layer.bias is not None:
            y = y + layer.bias.to(y.dtype)  # already made non-negative with every float parameter
        if i is None:  # not a target: only R's path through it matters
            return y

        def hook(grad):
            if session.phase == "synflow":
                whole = GradParts(groups=1)  # dR/dW from the layer's own input and output gradient
                whole.add(grad.detach(), x.detach())
                _apply(chosen, "synflow", dense_weight(layer).abs(), whole.total, rows[i])

        if y.requires_grad:
            y.register_hook(hook)
        return y

    return forward


class _PositiveDequantized(torch.autograd.Function):
    """``x |W|^T`` for a 4-bit layer; backward recomputes ``|W|`` rather than keeping it."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return x @ dense_weight(layer).abs().to(x.dtype).T

    @staticmethod
    def backward(ctx, grad):
        return grad @ dense_weight(ctx.layer).abs().to(grad.dtype), None


def _check_synflow_supported(model: nn.Module) -> None:
    try:
        accepts = "inputs_embeds" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        accepts = False
    if not accepts or not callable(getattr(model, "get_input_embeddings", None)):
        raise ValueError(
            f"synflow feeds an all-ones `inputs_embeds`, which {type(model).__name__}.forward does not accept. "
            "Leave synflow out: metrics=[m for m in zest_hf.METRICS if m != 'synflow']."
        )


@contextlib.contextmanager
def _outside_autocast(model: nn.Module, device: torch.device, *, always: bool = False):
    """The probe under a caller's autocast. A model of one floating dtype is probed with autocast off (on the CPU and
    its device), so that its metrics are the full-precision ones the predictors know; a model of mixed dtypes (a bf16
    body under an fp32 head) runs at all only under autocast, which is then kept (``always``: off whatever the
    dtypes, for a pass that has made them one). Autocast's cache of cast weights is emptied on the way in and out:
    the probe changes the weights it borrows (synflow's |W|), so no cast made before may serve it, and none made
    inside may serve the caller's forward."""
    torch.clear_autocast_cache()
    with contextlib.ExitStack() as stack:
        if always or not has_mixed_dtypes(model):
            for kind in dict.fromkeys(["cpu", device.type]):
                try:
                    stack.enter_context(torch.autocast(device_type=kind, enabled=False))
                except RuntimeError:  # a device type this torch has no autocast for: nothing to turn off
                    pass
        try:
            yield
        finally:
            torch.clear_autocast_cache()


@contextlib.contextmanager
def _math_sdpa():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: the older context manager
        with torch.backends.cuda.sdp_kernel(enable_flash=False, enable_mem_efficient=False, enable_math=True):
            yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="zest probe", unit="pass", disable=not enabled, leave=False)


def _versions() -> dict:
    import transformers

    from .._version import __version__

    return {"zest_hf": __version__, "torch": torch.__version__, "transformers": transformers.__version__}

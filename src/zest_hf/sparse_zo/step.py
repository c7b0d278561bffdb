"""MeZO's zeroth-order step (SPSA with the seed trick), on any list of fp32 tensors.

    z ~ N(0, 1) from seed s;   l+ = L(theta + eps z);   l- = L(theta - eps z);   restore theta
    g = (l+ - l-) / (2 eps);   theta <- theta - lr (g z + wd theta)      (z regenerated from s, never stored)

Two forward passes, no backward, no gradient buffers and no optimizer state. The perturbation is applied in place.
Restoring: ``restore="copy"`` keeps a copy of the tuned tensors for the two forward passes and copies it back, which
restores them bit for bit (for the sparse mode that copy is the size of the tuned values, 0.1% of the model);
``restore="mezo"`` undoes the perturbation arithmetically as MeZO does (+eps, -2eps, +eps), with no copy, which can
leave a last-bit rounding difference - the only affordable choice when every weight is tuned (dense MeZO).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["zo_step", "perturb", "step_seed", "device_seed"]


def step_seed(base: int, step: int) -> int:
    """The seed of step ``step``: distinct per step, reproducible from ``base`` alone."""
    return (int(base) * 1_000_003 + int(step)) % (2**63 - 1)


def device_seed(seed: int, device: torch.device) -> int:
    """The seed of ``device``'s generator in :func:`perturb`: ``seed`` itself on the CPU and on device index 0 (so a
    one-device run draws what it always drew), a distinct one on each other index. Generators of one kind seeded
    alike give the same stream, so with one seed for all, same-shape layers on two GPUs would get the same z."""
    index = torch.device(device).index or 0
    return seed if index == 0 else step_seed(seed, -index)


@torch.no_grad()
def perturb(params: Sequence[torch.Tensor], seed: int, scale: float) -> None:
    """``p += scale * z`` for every tensor, z ~ N(0, 1) drawn from ``seed`` in order: the same seed gives the same z.
    One tensor's z exists at a time."""
    gens: dict[torch.device, torch.Generator] = {}
    for p in params:
        gen = gens.get(p.device)
        if gen is None:
            gen = gens[p.device] = torch.Generator(device=p.device)
            gen.manual_seed(device_seed(seed, p.device))
        z = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
        p.add_(z, alpha=scale)


def check_fp32(params: Sequence[torch.Tensor], what: str = "tuned values") -> None:
    bad = sorted({str(p.dtype) for p in params if p.dtype != torch.float32})
    if bad:
        raise TypeError(f"zeroth-order updates need fp32 {what}, found {bad}: in {bad[0]} the +-eps perturbation "
                        "does not round-trip and updates of lr x g vanish below the last bit. Keep the tuned tensors "
                        "in fp32 (the sparse mode does this for you, even when the model runs in or is cast to "
                        "bf16/fp16).")


@torch.no_grad()
def zo_step(
    loss_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    lr: float,
    eps: float,
    seed: int,
    weight_decay: float = 0.0,
    restore: str = "copy",
) -> tuple[float, float]:
    """One SPSA step on ``params`` (modified in place). ``loss_fn()`` runs one forward pass on the current batch
    and returns the loss. Returns ``(mean of the two losses, projected gradient)``.

    Raises ``NonFiniteError`` (and leaves ``params`` restored, un-updated) if either loss is not finite.
    """
    from ..errors import NonFiniteError

    if restore not in ("copy", "mezo"):
        raise ValueError(f"restore must be 'copy' or 'mezo', got {restore!r}")
    check_fp32(params)
    backup = [p.detach().clone() for p in params] if restore == "copy" else None
    applied = 0.0  # the perturbation currently on params (undone in finally, whatever happens)
    try:
        perturb(params, seed, eps)
        applied = eps
        loss_pos = float(loss_fn())
        perturb(params, seed, -2 * eps)
        applied = -eps
        loss_neg = float(loss_fn())
    finally:
        if backup is not None:
            for p, b in zip(params, backup):
                p.copy_(b)
        elif applied:
            perturb(params, seed, -applied)
    del backup
    if not (torch.isfinite(torch.tensor(loss_pos)) and torch.isfinite(torch.tensor(loss_neg))):
        raise NonFiniteError(f"zeroth-order step: loss {loss_pos} at +eps and {loss_neg} at -eps; the weights are "
                             "restored and not updated. Lower eps or the learning rate, or check the batch.")
    grad = (loss_pos - loss_neg) / (2 * eps)
    if weight_decay:
        for p in params:
            p.mul_(1 - lr * weight_decay)
    perturb(params, seed, -lr * grad)
    return (loss_pos + loss_neg) / 2, grad

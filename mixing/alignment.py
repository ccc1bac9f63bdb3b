"""Gradient alignments a_j = <grad l(theta; x_j), grad l(theta; y)> for any torch model.

Only the target gradient g_spe is kept (one tensor per trainable parameter); the N domain /
basis gradients are streamed one at a time and reduced to a dot product and a norm, so memory
is two gradients, never N. Gradients come from torch.autograd.grad, which returns them instead
of accumulating into ``.grad``: the training step's gradients and the optimiser are untouched.

A model sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``) takes another route
(``fsdp_alignments``): autograd.grad cannot reach its sharded parameters and every FSDP backward
is a collective, so every rank runs the same N + 1 backward passes into ``.grad`` on the same
batches. FSDP's reduce-scatter averages over ranks, so the average of W copies of one batch's
gradient is that batch's gradient, exactly what one unsharded process computes; each rank dots
its local shards and one all_reduce sums the dots and squared norms. The user's ``.grad`` are
put back afterwards. Each rank thus computes every batch in full (W times the work of one rank of
the DDP route); slicing the batches over ranks would average per-slice mean losses instead, which
is not the batch's gradient when slices hold different numbers of tokens.
"""
from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch


@dataclass
class Alignments:
    """alignments (N,) float64: dot products with the target gradient (after clipping);
    grad_norms (N,) float64: L2 norms of the N gradients (after clipping);
    target_norm: L2 norm of the target gradient (after clipping)."""

    alignments: np.ndarray
    grad_norms: np.ndarray
    target_norm: float


def _loss(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
          batch: Any) -> torch.Tensor:
    """loss_fn(model, batch), checked to be a scalar tensor."""
    loss = loss_fn(model, batch)
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        raise ValueError("loss_fn(model, batch) must return a scalar tensor")
    return loss


def _grads(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
           batch: Any, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """Detached gradient of loss_fn(model, batch) w.r.t. params; None (= zero) where unused."""
    loss = _loss(model, loss_fn, batch)
    if not loss.requires_grad:  # loss does not depend on any trainable parameter
        return [None] * len(params)
    return [None if g is None else g.detach()
            for g in torch.autograd.grad(loss, params, allow_unused=True)]


def _acc(t: torch.Tensor) -> torch.Tensor:
    """Flattened view in at least float32: half-precision dots lose too many digits."""
    t = t.reshape(-1)
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _dot(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> float:
    """sum over parameters of <a_p, b_p> (None = zero), accumulated in float64, one sync."""
    terms = [torch.dot(_acc(x), _acc(y)).double() for x, y in zip(a, b)
             if x is not None and y is not None]
    return float(torch.stack(terms).sum()) if terms else 0.0


def _clip_scale(norm: float, clip: float | None) -> float:
    """Factor that rescales a gradient of L2 norm ``norm`` to norm <= clip (1 when within)."""
    return 1.0 if clip is None or norm <= clip else clip / norm


def select_params(model: torch.nn.Module, pattern: str | None) -> list[torch.Tensor]:
    """The trainable parameters whose names (``named_parameters``) match the regular expression
    ``pattern`` (re.search; None = all). A pattern that matches none is a ValueError naming some."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if pattern is None:
        return [p for _, p in named]
    rx = re.compile(pattern)
    chosen = [p for n, p in named if rx.search(n)]
    if not chosen:
        names = [n for n, _ in named]
        raise ValueError(f"align_params {pattern!r} matches none of the model's trainable parameters "
                         f"({', '.join(names[:4])}, ..., {', '.join(names[-3:])})")
    return chosen


def gradient_alignments(model: torch.nn.Module,
                        loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
                        target_batch: Any, batches: Iterable[Any], *,
                        clip: float | None = None, params: str | None = None) -> Alignments:
    """Alignments of N batches (one per domain or basis) with the target batch.

    loss_fn(model, batch) -> scalar loss tensor. ``batches`` may be a generator (streamed).
    The model is used in whatever mode (train / eval) it is in. Parameters without a
    gradient count as zero. ``clip``: rescale each gradient to norm <= clip before the dot.
    ``params``: a regular expression on parameter names; only those gradients are compared
    (``select_params``). Backward then stops at the earliest matched layer, so e.g. the last
    block costs a forward pass and a short backward instead of a full one (a tied input/output
    embedding is used at both ends: matching it means a full backward).
    A model sharded by FSDP2 goes to ``fsdp_alignments``: then this is a collective call.
    """
    if is_fsdp(model):
        return fsdp_alignments(model, loss_fn, target_batch, batches, clip=clip, params=params)
    _refuse_fsdp1(model)
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    params = select_params(model, params)
    with torch.enable_grad():
        g_spe = _grads(model, loss_fn, target_batch, params)
        t_norm = _dot(g_spe, g_spe) ** 0.5
        t_scale = _clip_scale(t_norm, clip)
        dots, norms = [], []
        for batch in batches:
            g = _grads(model, loss_fn, batch, params)
            norm = _dot(g, g) ** 0.5
            # Clipping is a rescaling, so apply it to the scalars instead of copying g.
            scale = _clip_scale(norm, clip)
            dots.append(scale * t_scale * _dot(g, g_spe))
            norms.append(scale * norm)
            del g  # free before the next backward pass
    target_norm = t_scale * t_norm
    return Alignments(np.asarray(dots, dtype=np.float64), np.asarray(norms, dtype=np.float64),
                      float(target_norm))


# --------------------------------------------------------------------------- FSDP2

def is_fsdp(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds a module sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``)."""
    if "torch.distributed.fsdp" not in sys.modules:  # nothing can be sharded before it is imported
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def _refuse_fsdp1(model: torch.nn.Module) -> None:
    """A ValueError for FSDP1's wrapper, whose flat parameters autograd.grad cannot compare."""
    if "torch.distributed.fsdp" not in sys.modules:
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        raise ValueError("FullyShardedDataParallel (FSDP1) is not supported: shard the model with "
                         "torch.distributed.fsdp.fully_shard (FSDP2) instead")


def _check_fsdp(model: torch.nn.Module) -> None:
    """ValueError for FSDP settings under which ``.grad`` after a backward is not the batch's
    gradient. Every rank has the same settings, so every rank raises (no rank is left waiting)."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if not isinstance(m, FSDPModule):
            continue
        for group in getattr(m._get_fsdp_state(), "_fsdp_param_groups", []):
            if not getattr(group, "reduce_grads", True):
                raise ValueError("FSDP gradient sync is off (set_requires_gradient_sync(False)): the "
                                 "alignment's backward passes would add to the accumulated gradients; "
                                 "reweight where gradients are synchronised (e.g. after optimizer.step)")
            if getattr(group, "gradient_divide_factor", None) is not None:
                raise ValueError("a custom FSDP gradient divide factor (set_gradient_divide_factor) "
                                 "rescales every gradient and so the alignments; reweighting needs the default")


def _local_share(p: torch.Tensor, world: int) -> float:
    """1 / the number of ranks holding the same local piece of p's gradient: a sharded piece is
    counted once in the sum over ranks, a replicated one once per copy."""
    from torch.distributed.tensor import DTensor

    if not isinstance(p, DTensor):  # left out of sharding: every rank holds all of it
        return 1.0 / world
    if any(pl.is_partial() for pl in p.placements):
        raise ValueError("a parameter with a Partial placement has no gradient to compare per rank")
    mesh = p.device_mesh
    shards = math.prod(mesh.size(i) for i, pl in enumerate(p.placements) if pl.is_shard())
    return shards / world


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's piece of t (a DTensor's local shard; a plain tensor is itself)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _wdot(a: list[torch.Tensor | None], b: list[torch.Tensor | None], w: list[float]) -> float:
    """sum over parameters of w_p <a_p, b_p> (None = zero), accumulated in float64, one sync."""
    terms = [torch.dot(_acc(x), _acc(y)).double() * s for x, y, s in zip(a, b, w)
             if x is not None and y is not None]
    return float(torch.stack(terms).sum()) if terms else 0.0


def fsdp_alignments(model: torch.nn.Module,
                    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
                    target_batch: Any, batches: Iterable[Any], *,
                    clip: float | None = None, params: str | None = None) -> Alignments:
    """``gradient_alignments`` of a model sharded by FSDP2; a collective call.

    Every rank must call it at the same point with the same target batch and the same N batches
    (in the same order): each batch is one FSDP backward (a collective) into ``.grad``, and FSDP's
    reduce-scatter averages the W identical gradients back to that batch's gradient. Each rank
    keeps the target's local shards, dots them with each batch's local shards, and one all_reduce
    of the (2N + 1) local dots and squared norms gives every rank the same full alignments, norms
    and target norm. ``clip`` rescales by those global norms. ``params`` selects by the original
    parameter names (FSDP2 keeps them); backward still runs in full (FSDP backward cannot stop at a
    layer). The ``.grad`` of every trainable parameter is put back as it was, so gradients the user
    accumulated survive; call it with FSDP's gradient sync on (a ValueError otherwise).
    """
    import torch.distributed as dist

    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    _check_fsdp(model)
    chosen = select_params(model, params)
    world = dist.get_world_size()
    share = [_local_share(p, world) for p in chosen]
    trainable = [p for p in model.parameters() if p.requires_grad]
    saved = [p.grad for p in trainable]

    def local_grads(batch: Any, keep: bool) -> list[torch.Tensor | None]:
        """This rank's shards of the batch's gradient on the chosen parameters; ``.grad`` cleared."""
        loss = _loss(model, loss_fn, batch)
        if loss.requires_grad:  # the same on every rank: all run this backward or none does
            loss.backward()
        out = [None if p.grad is None else _local(p.grad).detach() for p in chosen]
        out = [g.clone() if keep and g is not None else g for g in out]
        for p in trainable:
            p.grad = None
        return out

    local = []
    try:
        for p in trainable:
            p.grad = None
        with torch.enable_grad():
            g_spe = local_grads(target_batch, keep=True)
            local.append(_wdot(g_spe, g_spe, share))
            norms = []
            for batch in batches:
                g = local_grads(batch, keep=False)
                local.append(_wdot(g, g_spe, share))
                norms.append(_wdot(g, g, share))
                del g  # free before the next backward pass
    finally:
        for p, g in zip(trainable, saved):
            p.grad = g
    n = len(norms)
    device = "cpu" if dist.get_backend() == "gloo" else next(model.parameters()).device
    buf = torch.tensor(local + norms, dtype=torch.float64, device=device)
    dist.all_reduce(buf)
    out = buf.cpu().numpy()
    t_norm = max(float(out[0]), 0.0) ** 0.5
    t_scale = _clip_scale(t_norm, clip)
    g_norms = np.sqrt(np.maximum(out[1 + n:], 0.0))
    scales = np.array([_clip_scale(x, clip) for x in g_norms], dtype=np.float64)
    return Alignments((scales * t_scale * out[1:1 + n]).astype(np.float64), scales * g_norms,
                      float(t_scale * t_norm))

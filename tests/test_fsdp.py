"""Gradient alignments of a model sharded by FSDP2 (``fully_shard``, gloo on CPU, 2 processes, loopback
only) equal the unsharded ones of the same model on the same batches; the user's ``.grad`` survive;
OnlineMixture.maybe_reweight on the sharded model gives every rank the unsharded process's weights."""
from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dgamix.mixing.alignment import gradient_alignments, is_fsdp

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")]
VOCAB, DIM, HIDDEN, SEQ, BATCH, PROBES = 40, 16, 32, 8, 6, 4


class TinyLM(torch.nn.Module):
    """Embedding -> Linear -> tanh -> Linear over the vocabulary (2 592 parameters, float64)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, DIM)
        self.hidden = torch.nn.Linear(DIM, HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(self.emb(tokens).reshape(-1, DIM))))


def _lm_loss(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy."""
    logits = model(tokens[:, :-1]).reshape(tokens.shape[0], SEQ - 1, VOCAB)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def _batches() -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Target batch, PROBES probe batches (each from its own token range: distinct gradients), and
    a training batch; the same on every rank."""
    g = torch.Generator().manual_seed(7)
    target = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    probes = [torch.randint(8 * j, 8 * j + 16, (BATCH, SEQ), generator=g) for j in range(PROBES)]
    return target, probes, torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)


def _mixture(rank: int, world: int):
    """OnlineMixture.from_arrays over PROBES domains of token texts (domain j: tokens 8j..8j+15),
    a target of the first range: one DGA update at step 0."""
    from dgamix.mixing import DGAConfig, OnlineMixture

    g = np.random.default_rng(3)
    doms = np.repeat(np.arange(PROBES), 10)
    texts = [" ".join(map(str, g.integers(8 * d, 8 * d + 16, SEQ))) for d in doms]
    target = [" ".join(map(str, g.integers(0, 16, SEQ))) for _ in range(12)]
    return OnlineMixture.from_arrays(np.arange(len(doms)), doms, texts, target, mixer="dga",
                                     config=DGAConfig(reweight_start=0, reweight_every=1),
                                     collate=lambda ts: torch.tensor([[int(x) for x in t.split()] for t in ts]),
                                     align_batch_size=BATCH, target_batch_size=BATCH, rank=rank, world_size=world)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_dict(al) -> dict:
    return {"alignments": al.alignments.tolist(), "grad_norms": al.grad_norms.tolist(),
            "target_norm": al.target_norm}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.fsdp import fully_shard

        torch.manual_seed(0)
        model = TinyLM().double()
        target, probes, train = _batches()
        # the unsharded reference, in this process, on the same initial parameters
        ref = gradient_alignments(model, _lm_loss, target, probes)
        clip = float(np.median(ref.grad_norms))  # clips some probe gradients, not all
        variants = {"plain": {}, "clip": {"clip": clip}, "head": {"params": r"^head\."}}
        refs = {k: _as_dict(gradient_alignments(model, _lm_loss, target, probes, **kw))
                for k, kw in variants.items()}
        alone = _mixture(0, 1)  # the same mixture in one unsharded process
        alone.maybe_reweight(0, model, loss_fn=_lm_loss)
        assert not is_fsdp(model)
        for sub in (model.emb, model.hidden, model.head):
            fully_shard(sub)
        fully_shard(model)
        assert is_fsdp(model)
        assert all(hasattr(p, "to_local") for p in model.parameters())  # really sharded
        _lm_loss(model, train).backward()  # the user's pending gradients (e.g. mid accumulation)
        before = [(p.grad, p.grad.to_local().clone()) for p in model.parameters()]
        got = {k: _as_dict(gradient_alignments(model, _lm_loss, target, iter(probes), **kw))
               for k, kw in variants.items()}
        restored = all(p.grad is g and torch.equal(p.grad.to_local(), v)
                       for p, (g, v) in zip(model.parameters(), before))
        mix = _mixture(rank, world)  # through OnlineMixture.maybe_reweight: collective on every rank
        mix.maybe_reweight(0, model, loss_fn=_lm_loss)
        weights = {"alone": alone.weights().tolist(), "sharded": mix.weights().tolist()}
        model.set_requires_gradient_sync(False)  # gradient accumulation without communication: refused
        try:
            gradient_alignments(model, _lm_loss, target, probes)
            refused = ""
        except ValueError as e:
            refused = str(e)
        with open(os.path.join(out, f"rank-{rank}.json"), "w") as f:
            json.dump({"ref": refs, "fsdp": got, "clip": clip, "restored": restored, "refused": refused,
                       "weights": weights}, f)
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


def test_fsdp_alignments_equal_the_unsharded_ones(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2))
    assert r0["fsdp"] == r1["fsdp"]                 # one all_reduce: the same numbers on every rank
    for kind in ("plain", "clip", "head"):
        ref, got = r0["ref"][kind], r0["fsdp"][kind]
        for key in ("alignments", "grad_norms", "target_norm"):
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-6, atol=0, err_msg=f"{kind} {key}")
    plain, clipped, head = (r0["ref"][k] for k in ("plain", "clip", "head"))
    assert len(set(np.round(plain["alignments"], 12))) == 4 and min(plain["grad_norms"]) > 0
    assert max(clipped["grad_norms"]) <= r0["clip"] * (1 + 1e-12) < max(plain["grad_norms"])
    assert head["target_norm"] < plain["target_norm"]   # a strict subset of the parameters
    assert r0["restored"] and r1["restored"]
    # OnlineMixture on the sharded model: identical weights on both ranks, equal to one unsharded process's
    assert r0["weights"]["sharded"] == r1["weights"]["sharded"]
    np.testing.assert_allclose(r0["weights"]["sharded"], r0["weights"]["alone"], rtol=1e-9, atol=0)
    assert max(r0["weights"]["alone"]) - min(r0["weights"]["alone"]) > 1e-3  # the update moved them
    assert "gradient sync is off" in r0["refused"] and r0["refused"] == r1["refused"]

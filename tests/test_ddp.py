"""OnlineMixture under real torch.distributed (DDP, gloo on CPU, 2 processes, loopback only): the
same weights on both ranks after every reweighting, disjoint documents per step, exact resume of
both ranks from their checkpoints."""
from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dgamix.mixing import DGAConfig, OnlineMixture
from tests.helpers import tiny_gpt2

pytestmark = pytest.mark.slow
STEPS, SAVE_AT = 8, 4
CONFIG = DGAConfig(reweight_every=3, reweight_start=0)  # step 0 aligns on the initial model: comparable below


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, ws: str, out: str, mode: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
                      HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _, _, collate, model = tiny_gpt2()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
        mix = OnlineMixture.from_workspace(ws, "c", 2, "t", basis="b", collate=collate, align_batch_size=4,
                                           target_batch_size=4, config=CONFIG)
        assert (mix.rank, mix.world_size) == (rank, world)
        ckpt, start = os.path.join(out, f"ckpt-{rank}.pt"), 0
        if mode == "resume":
            state = torch.load(ckpt, weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            mix.load_state_dict(state["mix"])
            start = state["step"]
        rows = []
        for step in range(start, STEPS):
            done = mix.maybe_reweight(step, ddp)
            batch = mix.next_batch(4)
            loss = ddp(**collate(batch.texts)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            rows.append({"step": step, "ids": batch.doc_ids.tolist(), "weights": mix.weights().tolist(),
                         "loss": loss.item(), "param": float(next(model.parameters()).detach().double().sum()),
                         "alignment": None if done is None else done.alignments.tolist()})
            if mode == "full" and step + 1 == SAVE_AT:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "mix": mix.state_dict(),
                            "step": step + 1}, ckpt)
        with open(os.path.join(out, f"{mode}-{rank}.json"), "w") as f:
            json.dump(rows, f)
    finally:
        dist.destroy_process_group()


def _spawn(ws, out, mode):
    mp.spawn(_worker, args=(2, _free_port(), str(ws.root), str(out), mode), nprocs=2, join=True)
    return [json.loads((out / f"{mode}-{r}.json").read_text()) for r in range(2)]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this torch build")
def test_ddp_two_ranks_same_weights_disjoint_docs_exact_resume(tiny_ws, tmp_path):
    full = _spawn(tiny_ws, tmp_path, "full")
    resumed = _spawn(tiny_ws, tmp_path, "resume")
    r0, r1 = full
    for a, b in zip(r0, r1, strict=True):
        assert a["weights"] == b["weights"], a["step"]          # identical weights on both ranks
        assert not set(a["ids"]) & set(b["ids"]), a["step"]    # disjoint documents
        assert a["param"] == b["param"]                        # DDP kept the replicas equal
    assert r0[-1]["weights"] != r0[0]["weights"]               # and the weights moved
    assert [row["step"] for row in r0 if row["alignment"] is not None] == [0, 3, 6]
    # the alignments each rank computed for its half of the bases, summed across ranks, equal one
    # process computing all of them on the same (initial) model
    _, _, collate, model = tiny_gpt2()
    single = OnlineMixture.from_workspace(tiny_ws, "c", 2, "t", basis="b", collate=collate, align_batch_size=4,
                                          target_batch_size=4, config=CONFIG, rank=0, world_size=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the same float32 reduction order
    try:
        np.testing.assert_allclose(r0[0]["alignment"], single.maybe_reweight(0, model).alignments, rtol=1e-9)
    finally:
        torch.set_num_threads(threads)
    for rank in range(2):
        assert resumed[rank] == full[rank][SAVE_AT:], rank
    assert np.isfinite([row["loss"] for row in r0]).all()

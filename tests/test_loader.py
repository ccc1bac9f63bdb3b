"""The DataLoader-worker data path (mixing/loader.py): a batch sampler of doc ids in the training
process, texts read in workers. A fixed delay makes the documents independent of the loader's
prefetch; StatefulDataLoader and plain DataLoader resume exactly; examples/own_loop.py with 2
workers equals 0 workers, through a SIGKILL and --resume; examples/hf_trainer.py under torchrun
(2 processes, gloo on loopback): disjoint doc ids, identical weights, exact resume."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dgamix.mixing import DGAConfig, OnlineMixture
from dgamix.mixing.loader import DocDataset, MixtureBatchSampler, min_delay
from dgamix.pipeline.core.errors import DgamixError
from tests.helpers import ROOT, tiny_gpt2

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
           TOKENIZERS_PARALLELISM="false", GLOO_SOCKET_IFNAME="lo")
CONFIG = DGAConfig(reweight_every=2, reweight_start=2)


def _mix(ws, collate):
    return OnlineMixture.from_workspace(ws, "c", 2, "t", basis="b", collate=collate, align_batch_size=4,
                                       target_batch_size=4, config=CONFIG)


def _ids(items):  # DocDataset(encode=len, with_ids=True) items -> doc ids
    return [i for i, _ in items]


def _train(ws, loader_cls, workers, steps, delay, state=None, model=None):
    """``steps`` steps of a loop that reweights before taking each batch; returns (doc ids per step,
    weights per step, the loader state after them, the sampler)."""
    _, _, collate, fresh = tiny_gpt2()
    model = model or fresh
    mix = _mix(ws, collate)
    sampler = MixtureBatchSampler(mix, 4, delay=delay)
    loader = loader_cls(DocDataset(mix.texts, len, with_ids=True), batch_sampler=sampler, collate_fn=_ids,
                        num_workers=workers, prefetch_factor=2 if workers else None)
    start = 0
    if state is not None:
        mix.load_state_dict(state["mix"])
        (loader if "loader" in state else sampler).load_state_dict(state.get("loader", state.get("sampler")))
        start = state["step"]
    it, ids, weights = iter(loader), [], []
    for step in range(start, start + steps):
        mix.maybe_reweight(step, model)
        ids.append(next(it))
        weights.append(mix.weights().tolist())
    return ids, weights, mix, sampler, loader


@pytest.mark.slow
def test_stateful_dataloader_resume_is_exact_and_workers_do_not_change_the_documents(tiny_ws):
    from torchdata.stateful_dataloader import StatefulDataLoader

    _, _, _, model = tiny_gpt2()
    delay = min_delay(2 * 2)  # 2 workers x prefetch 2
    assert delay == 4
    ids0, w0, _, _, _ = _train(tiny_ws, torch.utils.data.DataLoader, 0, 9, delay, model=model)
    ids, w, mix, sampler, loader = _train(tiny_ws, StatefulDataLoader, 2, 5, delay, model=model)
    assert sampler.drawn == 5 + 4  # the prefetch: 2 workers x 2 batches drawn ahead of the loop
    state = {"mix": mix.state_dict(), "loader": loader.state_dict(), "step": 5}
    more, w2, _, _, _ = _train(tiny_ws, StatefulDataLoader, 2, 4, delay, state=state, model=model)
    assert ids + more == ids0 and w + w2 == w0  # 2 workers + resume == 0 workers, uninterrupted
    assert w0[-1] != w0[0]  # the weights moved, and the doc ids drawn with them agree
    all_ids = [i for b in ids0 for i in b]
    assert len(set(all_ids)) == len(all_ids)  # without replacement


@pytest.mark.slow
def test_plain_dataloader_state_at_the_consumed_position(tiny_ws):
    _, _, _, model = tiny_gpt2()
    ids0, _, _, _, _ = _train(tiny_ws, torch.utils.data.DataLoader, 0, 9, 4, model=model)
    ids, _, mix, sampler, _ = _train(tiny_ws, torch.utils.data.DataLoader, 1, 5, 4, model=model)
    assert sampler.drawn == 5 + 2
    state = {"mix": mix.state_dict(), "sampler": sampler.state_dict(consumed=5), "step": 5}
    assert state["sampler"]["drawn"] == 5
    more, _, _, _, _ = _train(tiny_ws, torch.utils.data.DataLoader, 0, 4, 4, state=state, model=model)
    assert ids + more == ids0


def test_a_delay_shorter_than_the_prefetch_is_refused_and_settings_must_match(tiny_ws):
    _, _, collate, model = tiny_gpt2()
    with pytest.raises(DgamixError, match=r"step 2's reweighting has not happened yet.*delay=1"):
        _train(tiny_ws, torch.utils.data.DataLoader, 1, 6, 1, model=model)
    mix = _mix(tiny_ws, collate)
    state = MixtureBatchSampler(mix, 4, delay=4).state_dict()
    with pytest.raises(DgamixError, match=r"batch_size=4 \(this sampler: 8\)"):
        MixtureBatchSampler(mix, 8, delay=4).load_state_dict(state)
    assert min_delay(1 + 2 * 2, 2, fetch_first=True) == 4 and min_delay(0) == 0


def test_doc_dataset_reads_batches_and_pickles_without_its_cache(tiny_ws):
    import pickle

    from dgamix.pipeline.core.sources import DocTexts

    texts = DocTexts(tiny_ws)
    data = DocDataset(texts, str.upper)
    assert data.__getitems__([3, 1]) == [t.upper() for t in texts[[3, 1]]] and data[2] == texts[[2]][0].upper()
    assert texts.reader._cols  # read: cached here
    copy = pickle.loads(pickle.dumps(data))
    assert not copy.texts.reader._cols and copy[5] == data[5]


# --------------------------------------------------------------------------- the examples, in processes

def _log(path: Path) -> dict[int, dict]:
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row  # a resumed run rewrites the steps after its checkpoint
    return out


@pytest.mark.slow
def test_own_loop_two_workers_killed_and_resumed_equals_zero_workers(tiny_ws, tmp_path):
    args = [sys.executable, str(ROOT / "examples" / "own_loop.py"), "--workspace", str(tiny_ws.root),
            "--clusters", "c", "--level", "2", "--target", "t", "--basis", "b", "--steps", "12",
            "--batch-size", "4", "--save-every", "4"]
    zero = subprocess.Popen([*args, "--out", str(tmp_path / "zero"), "--run", "own-w0"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    two = [*args, "--out", str(tmp_path / "two"), "--run", "own-w2", "--num-workers", "2"]
    killed = subprocess.Popen(two, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = tmp_path / "two" / "log.jsonl"
    t0 = time.time()
    while not (log.exists() and len(log.read_text().splitlines()) >= 6):  # checkpoint at 4, then more steps
        assert killed.poll() is None, killed.stderr.read().decode()[-800:]
        assert time.time() - t0 < 240
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert len(log.read_text().splitlines()) < 12
    out, err = zero.communicate(timeout=300)
    assert zero.returncode == 0, err.decode()[-800:]
    assert b"trained 12 steps" in out
    r = subprocess.run([*two, "--resume"], env=ENV, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-800:]
    a, b = _log(tmp_path / "zero" / "log.jsonl"), _log(log)
    assert sorted(a) == sorted(b) == list(range(12))
    for s in range(12):
        assert a[s]["doc_ids"] == b[s]["doc_ids"], s
        assert a[s]["weights"] == b[s]["weights"], s
        assert a[s]["loss"] == pytest.approx(b[s]["loss"], rel=1e-5), s
    assert a[11]["weights"] != a[0]["weights"]
    assert (tiny_ws.run_dir("own-w2") / "weights.parquet").exists()  # the resumed run wrote its run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_hf_trainer_example_under_torchrun_two_processes_and_its_resume(tiny_ws, tmp_path):
    def torchrun(out, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(ROOT / "examples" / "hf_trainer.py"),
               "--workspace", str(tiny_ws.root), "--clusters", "c", "--level", "2", "--target", "t", "--basis", "b",
               "--batch-size", "4", "--save-every", "4", "--steps", "8", "--log-ids", "--out", str(out),
               "--run-name", "hf-ddp", *extra]
        r = subprocess.run(cmd, env=ENV, capture_output=True, timeout=400)
        assert r.returncode == 0, r.stderr.decode()[-1500:]
        return [_log(out / f"ids-{rank}.jsonl") for rank in range(2)]

    full = torchrun(tmp_path / "full")
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4")
    resumed = torchrun(tmp_path / "resumed", "--resume")
    r0, r1 = full
    assert sorted(r0) == sorted(r1) == list(range(8))
    for s in range(8):
        a, b = set(np.ravel(r0[s]["doc_ids"]).tolist()), set(np.ravel(r1[s]["doc_ids"]).tolist())
        assert len(a) == len(b) == 4 and not a & b, s         # every rank its own documents
        assert r0[s]["weights"] == r1[s]["weights"], s        # identical weights on both ranks
    assert r0[7]["weights"] != r0[0]["weights"]              # one reweighting (step 5) moved them
    for rank in range(2):
        assert sorted(resumed[rank]) == list(range(4, 8))
        for s in range(4, 8):
            assert resumed[rank][s] == full[rank][s], (rank, s)

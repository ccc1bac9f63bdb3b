"""OnlineMixture's holes closed (issue 28): a user-loop run's schedule holds no general held-out document,
a frozen model is refused, a state carries its run's identity (foreign states refused by kind, a batch
size change refused or accepted as documented), and ``from_arrays``: your own domains, no workspace."""
from __future__ import annotations

import io
import re

import numpy as np
import polars as pl
import pytest
import torch

from dgamix.mixing import DGAConfig, OnlineMixture, model_identity
from dgamix.mixing.inputs import training_pool
from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.errors import DgamixError
from tests.helpers import one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")  # tests.conftest

CONFIG = DGAConfig(reweight_every=2, reweight_start=2, eta=1.0)
ALPHABETS = {"alpha": "abcde ", "digits": "0123456789 ", "upper": "VWXYZ ", "punct": ".,;:!? "}
TARGET = "digits"


# --------------------------------------------------------------------------- a user's corpus and model

def corpus(n_per: int = 30, seed: int = 0):
    """(doc ids, domain names, texts (list indexed by doc id), target texts): 4 domains, each its own
    alphabet; the target is written in the digits' alphabet. Doc ids are sparse (not 0..D-1)."""
    rng = np.random.default_rng(seed)
    names = list(ALPHABETS)
    labels = np.repeat(names, n_per)
    ids = np.arange(labels.size, dtype=np.int64) * 2 + 1  # every other id: the reader is indexed by doc id
    texts = [""] * (int(ids.max()) + 1)
    for i, name in zip(ids, labels):
        letters = ALPHABETS[name]
        texts[i] = "".join(letters[j] for j in rng.integers(0, len(letters), 24))
    target = ["".join(ALPHABETS[TARGET][j] for j in rng.integers(0, len(ALPHABETS[TARGET]), 24)) for _ in range(12)]
    perm = rng.permutation(ids.size)  # the arrays need no order
    return ids[perm], labels[perm], texts, target


def collate(texts: list[str]) -> torch.Tensor:
    """Byte tokens, (rows, 25) int64 (texts are 24 characters; +1 for a start byte)."""
    return torch.tensor([[2] + list(t.encode()) for t in texts], dtype=torch.int64)


def byte_lm(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(256, 16), torch.nn.Linear(16, 256))


def lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))


def from_arrays(**kw) -> OnlineMixture:
    ids, labels, texts, target = corpus()
    kw = {"config": CONFIG, "collate": collate, "align_batch_size": 8, "target_batch_size": 8, **kw}
    return OnlineMixture.from_arrays(ids, labels, texts, target, **kw)


def train(mix: OnlineMixture, model, opt, steps, record: list) -> None:
    for step in steps:
        mix.maybe_reweight(step, model, lm_loss)
        batch = mix.next_batch(8)
        loss = lm_loss(model, collate(batch.texts))
        opt.zero_grad()
        loss.backward()
        opt.step()
        record.append((step, batch.doc_ids.tolist(), mix.weights().tolist(), loss.item()))


def saved(obj) -> dict:
    """``obj`` through torch.save / torch.load(weights_only=True), as a checkpoint holds it."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# --------------------------------------------------------------------------- from_arrays

def test_from_arrays_mixes_your_domains_resumes_exactly_and_moves_towards_the_target():
    def fresh():
        model = byte_lm()
        return from_arrays(), model, torch.optim.SGD(model.parameters(), lr=0.1)

    mix, model, opt = fresh()
    assert sorted(mix.names) == sorted(ALPHABETS) and mix.kind == "domain"
    full: list = []
    train(mix, model, opt, range(10), full)
    # texts follow the labels: every drawn document is written in its domain's alphabet
    b = mix.next_batch(8)
    for d, text in zip(b.domains, b.texts):
        assert set(text) <= set(ALPHABETS[mix.names[int(np.flatnonzero(mix.ids == d)[0])]])
    # stop at step 6, save model + optimiser + mixture, resume in a new object: identical continuation
    mix, model, opt = fresh()
    part: list = []
    train(mix, model, opt, range(6), part)
    ckpt = saved({"model": model.state_dict(), "opt": opt.state_dict(), "mix": mix.state_dict()})
    mix, model, opt = fresh()
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    mix.load_state_dict(ckpt["mix"])
    train(mix, model, opt, range(6, 10), part)
    assert part == full
    # four reweightings (steps 2, 4, 6, 8) moved the weights towards the target's domain
    w = np.array(full[-1][2])
    t = mix.names.index(TARGET)
    assert [r["step"] for r in mix.log] == [0, 2, 4, 6, 8]
    assert w[t] > 0.4 and w[t] > 2 * np.delete(w, t).max(), dict(zip(mix.names, w))


def test_from_arrays_readers_and_labels():
    ids, labels, texts, target = corpus()
    base = OnlineMixture.from_arrays(ids, labels, texts, target, mixer="uniform")
    identity = base.identity
    # ints with names give the same mixture as the names themselves; any reader gives the same texts
    names = sorted(ALPHABETS)
    as_ints = np.array([names.index(x) for x in labels])
    for reader in (np.array(texts, dtype=object), lambda d: [texts[i] for i in d]):
        other = OnlineMixture.from_arrays(ids, as_ints, reader, target, mixer="uniform", domain_names=names)
        assert other.names == base.names and other.identity == identity
        base = OnlineMixture.from_arrays(ids, labels, texts, target, mixer="uniform")
        a, b = base.next_batch(5), other.next_batch(5)
        assert a.doc_ids.tolist() == b.doc_ids.tolist() and a.texts == b.texts
    natural = OnlineMixture.from_arrays(ids, labels[:-10].tolist() + ["alpha"] * 10, texts, target, mixer="natural")
    assert natural.weights().max() > natural.weights().min()  # domain sizes
    cases = [
        (dict(doc_ids=np.r_[ids[:-1], ids[0]]), "appear more than once"),
        (dict(domains=labels[:-1]), "one label per document"),
        (dict(texts=texts[:5]), "has no text"),
        (dict(mixer="is"), "mixer='is'"),
        (dict(mixer="dga", collate=collate, config=DGAConfig(init="target")), "DGAConfig(init='target')"),
        (dict(mixer="dga"), "pass collate="),
        (dict(domain_names=["alpha"]), "not in domain_names"),
    ]
    for change, needle in cases:
        kw = {**dict(doc_ids=ids, domains=labels, texts=texts, target_texts=target, mixer="uniform"), **change}
        with pytest.raises(DgamixError, match=re.escape(needle)):
            OnlineMixture.from_arrays(kw.pop("doc_ids"), kw.pop("domains"), kw.pop("texts"), kw.pop("target_texts"),
                                      **kw)


def test_a_from_arrays_run_is_written_to_a_given_workspace(tmp_path):
    mix = from_arrays(mixer="uniform")
    mix.next_batch(8)
    with pytest.raises(DgamixError, match="workspace=FOLDER"):
        mix.write_run("arrays")
    path = mix.write_run("arrays", metrics=[{"step": 1, "split": "train", "loss": 1.0}], step=1,
                         workspace=tmp_path / "ws", model=model_identity(byte_lm(), vocab_size=256))
    meta = manifest.read_meta(path / "weights.parquet")
    assert meta["params"]["clusters"] is None and meta["model"] == {"model": "Sequential", "n_params": 8448,
                                                                      "vocab_size": 256}
    assert set(pl.read_parquet(path / "weights.parquet")["name"]) == set(ALPHABETS)
    r = run_cli("schedule", "--workspace", tmp_path / "ws", "--clusters", "c", "--level", 1, "--run", "arrays",
                "--steps", 2, "--batch-size", 2, "--name", "arrays")
    one_line_error(r, "domains of your own", "dgamix weights")


# --------------------------------------------------------------------------- the holes

def test_frozen_model_is_refused_in_one_line():
    mix = from_arrays()
    model = byte_lm()
    for p in model.parameters():
        p.requires_grad_(False)
    assert mix.maybe_reweight(0, model, lm_loss) is None  # not a reweighting step: nothing to align
    with pytest.raises(DgamixError, match="no trainable parameter") as e:
        mix.maybe_reweight(2, model, lm_loss)
    assert "\n" not in str(e.value)


def test_a_state_of_another_run_is_refused_naming_what_differs():
    mix = from_arrays()
    mix.next_batch(8)
    state = saved(mix.state_dict())
    assert state["identity"]["batch_size"] == 8 and state["identity"]["seed"] == 0
    with pytest.raises(DgamixError) as e:
        from_arrays(seed=1, mixer="doge").load_state_dict(state)
    assert str(e.value).startswith("the state is from another run: ")
    assert "mixer doge here, dga in the state" in str(e.value) and "seed 1 here, 0 in the state" in str(e.value)
    ids, labels, texts, target = corpus()
    other = OnlineMixture.from_arrays(ids[:-1], labels[:-1], texts, target, config=CONFIG, collate=collate,
                                      align_batch_size=8, target_batch_size=8)
    for strict in (True, False):  # other documents: never accepted
        with pytest.raises(DgamixError, match="doc ids and domains [0-9a-f]{16} here, [0-9a-f]{16} in the state"):
            other.load_state_dict(state, strict=strict)
    # a deliberate config change: refused by default, accepted with strict=False (the new config holds)
    changed = from_arrays(config=DGAConfig(reweight_every=2, reweight_start=2, eta=0.5))
    with pytest.raises(DgamixError, match=r"eta 0.5 here, 1.0 in the state; pass strict=False"):
        changed.load_state_dict(state)
    changed.load_state_dict(state, strict=False)
    assert changed.mixer.config.eta == 0.5
    # the sampler's own check (a raw ValueError before) reaches the user as one line
    bad = saved(mix.state_dict())
    bad["sampler"]["pool_sizes"] = bad["sampler"]["pool_sizes"][:-1]
    with pytest.raises(DgamixError, match=r"the state does not fit this mixture \(sampler state was saved"):
        from_arrays().load_state_dict(bad)
    old = {**state, "format": 1}
    old.pop("identity")
    with pytest.raises(DgamixError, match="has format 1 .* reads format 2"):
        from_arrays().load_state_dict(old)


def test_batch_size_change_is_refused_on_the_first_draw_or_accepted_with_strict_false():
    mix = from_arrays()
    mix.next_batch(8)
    with pytest.raises(DgamixError, match="draws 8 documents at a time .* n=4"):
        mix.next_batch(4)
    state = saved(mix.state_dict())
    resumed = from_arrays()
    resumed.load_state_dict(state)
    with pytest.raises(DgamixError, match="n=4"):
        resumed.next_ids(4)
    assert len(resumed.next_batch(8)) == 8
    drew = from_arrays()
    drew.next_batch(4)
    with pytest.raises(DgamixError, match="batch size 4 here, 8 in the state"):
        drew.load_state_dict(state)
    changed = from_arrays()
    changed.load_state_dict(state, strict=False)
    assert len(changed.next_batch(4)) == 4 and changed.state_dict()["identity"]["batch_size"] == 4


def test_a_user_loop_runs_schedule_holds_no_general_held_out_document(tiny_ws):
    mix = OnlineMixture.from_workspace(tiny_ws, "c", 2, "t", mixer="uniform")  # defaults: 2% held out, at most 64
    for step in range(4):
        mix.maybe_reweight(step, None)
        mix.next_batch(4)
    mix.write_run("api-pool", step=4)
    r = run_cli("schedule", "--workspace", tiny_ws.root, "--clusters", "c", "--level", 2, "--run", "api-pool",
                "--steps", 120, "--batch-size", 4, "--name", "api-pool", "--overwrite")
    assert r.exit_code == 0, r.output
    scheduled = pl.read_parquet(tiny_ws.schedule("api-pool"))["doc_id"].to_numpy()
    held = training_pool(tiny_ws, "c", 2, 0.02, 64).held  # the slice as the library computes it
    assert scheduled.size == 480 and held.size > 0
    assert not set(scheduled.tolist()) & set(held.tolist())
    p = manifest.read_meta(tiny_ws.run_dir("api-pool") / "weights.parquet")["params"]
    assert (p["general_holdout"], p["eval_size"]) == (0.02, 64)

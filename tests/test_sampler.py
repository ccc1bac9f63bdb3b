"""Domain index, mixture sampler (frequencies, limited data, resumable state), dataset."""
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from dgamix.mixing.dga import BasisMatrix
from dgamix.mixing.sampler import DomainIndex, MixtureSampler, _InverseCdf, _stable_argsort
from tests.helpers import SamplerDataset


def _index(k: int = 12, n_docs: int = 400, seed: int = 0, sparse: int = 1, tokens=False):
    """Random doc -> domain map; domain ids multiplied by ``sparse`` to make them sparse."""
    rng = np.random.default_rng(seed)
    doms = rng.integers(0, k, n_docs)
    doms[:k] = np.arange(k)                       # every domain has a document
    doc_ids = rng.permutation(n_docs) + 1000      # ids unrelated to positions
    n_tok = rng.integers(1, 100, n_docs) if tokens else None
    return DomainIndex.from_arrays(doc_ids, doms * sparse, n_tokens=n_tok)


def _doc_set(index, j):
    return set(index.docs[index.offsets[j]:index.offsets[j + 1]].tolist())


def test_index_layout_and_positions():
    idx = DomainIndex.from_arrays(np.array([10, 11, 12, 13, 14]), np.array([70000, 3, 70000, 3, 5]))
    assert idx.domains.tolist() == [3, 5, 70000] and idx.sizes.tolist() == [2, 1, 2]
    assert idx.offsets.tolist() == [0, 2, 3, 5] and idx.docs.tolist() == [11, 13, 14, 10, 12]
    assert idx.positions(np.array([5, 4, 70000, 262143])).tolist() == [1, -1, 2, -1]
    with pytest.raises(ValueError, match="same length"):
        DomainIndex.from_arrays(np.arange(3), np.arange(2))


@given(st.lists(st.integers(0, 2 ** 40), max_size=300))
def test_stable_argsort_matches_numpy(values):
    x = np.array(values, dtype=np.int64)
    assert np.array_equal(_stable_argsort(x), np.argsort(x, kind="stable"))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1e-12, 0.3, 1.0, 5.0]), min_size=1, max_size=40),
       st.integers(0, 2 ** 32))
def test_mixture_draw_equals_searchsorted(p, seed):
    p = np.array(p)
    if p.sum() == 0:
        p[0] = 1.0
    mix = _InverseCdf(np.arange(p.size), p)
    u = np.random.default_rng(seed).random(2000)
    assert np.array_equal(mix.draw(u), np.searchsorted(mix.cdf, u, side="right"))


@pytest.mark.parametrize("limited", [True, False])
def test_domain_frequencies_match_alpha(limited):
    idx = _index(k=40, n_docs=2000, seed=1, sparse=97)
    w = np.random.default_rng(2).dirichlet(np.ones(40))
    w[[3, 17]] = 0.0
    s = MixtureSampler(idx, seed=3, limited=limited)
    _, doms = s.sample(1_000_000, w)
    counts = np.bincount(idx.positions(doms), minlength=40)
    assert counts[3] == 0 and counts[17] == 0
    keep = w > 0
    assert chisquare(counts[keep], w[keep] / w.sum() * 1_000_000).pvalue > 0.001
    assert s.draws.sum() == 1_000_000 and np.array_equal(s.draws, counts)


def test_basis_frequencies_match_w_at_P():
    idx = _index(k=10, n_docs=500, seed=4)
    rng = np.random.default_rng(5)
    P = rng.dirichlet(np.ones(10), size=3) * (rng.random((3, 10)) < 0.6)
    P[:, 0] += 0.01
    basis = BasisMatrix(P / P.sum(1, keepdims=True))
    w = np.array([0.5, 0.2, 0.3])
    _, doms = MixtureSampler(idx, basis, seed=6).sample(1_000_000, w)
    counts = np.bincount(doms, minlength=10)
    alpha = basis.alpha(w)
    assert (counts[alpha == 0] == 0).all()
    assert chisquare(counts[alpha > 0], alpha[alpha > 0] * 1_000_000).pvalue > 0.001


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.0, 1e-9, 0.5, 2.0]), min_size=6, max_size=6),
       st.integers(0, 1000), st.integers(1, 3000))
def test_zero_weight_domains_never_sampled(w, seed, n):
    idx = _index(k=6, n_docs=60, seed=seed)
    w = np.array(w)
    if w.sum() == 0:
        w[seed % 6] = 1.0
    docs, doms = MixtureSampler(idx, seed=seed).sample(n, w)
    assert (w[idx.positions(doms)] > 0).all()
    # and every doc is one of its domain's documents
    owner = dict(zip(idx.docs.tolist(), np.repeat(idx.domains, idx.sizes).tolist()))
    assert [owner[d] for d in docs.tolist()] == doms.tolist()


def test_limited_every_document_once_before_repeats():
    idx = _index(k=8, n_docs=300, seed=7)
    s = MixtureSampler(idx, seed=8)
    w = np.random.default_rng(9).dirichlet(np.ones(8))
    docs = np.concatenate([s.sample(m, w)[0] for m in (1, 17, 250, 3, 1400, 90)])
    _, doms = MixtureSampler(idx, seed=8).sample(docs.size, w)
    for j, dom in enumerate(idx.domains):
        seq, size = docs[doms == dom], idx.sizes[j]
        for b in range(0, seq.size, size):  # each epoch is a permutation of the domain
            block = seq[b:b + size].tolist()
            assert len(set(block)) == len(block) and set(block) <= _doc_set(idx, j)
            if len(block) == size:
                assert set(block) == _doc_set(idx, j)
        assert s.epochs[j] == seq.size // size
    assert s.epochs.max() >= 2  # the test exercised repeats


def test_epochs_reshuffle():
    idx = DomainIndex.from_arrays(np.arange(50), np.zeros(50, dtype=np.int64))
    docs, _ = MixtureSampler(idx, seed=0).sample(150, np.ones(1))
    assert not np.array_equal(docs[:50], docs[50:100]) and sorted(docs[50:100]) == list(range(50))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=2, max_size=8), st.integers(0, 7),
       st.booleans())
def test_state_round_trip_continues_stream(calls, cut, limited):
    idx = _index(k=9, n_docs=120, seed=10, sparse=1000)
    w = np.random.default_rng(11).dirichlet(np.ones(9) * 0.3)
    cut = cut % len(calls)
    full = MixtureSampler(idx, seed=12, limited=limited)
    expect = [full.sample(m, w) for m in calls]
    first = MixtureSampler(idx, seed=12, limited=limited)
    got = [first.sample(m, w) for m in calls[:cut]]
    state = pickle.loads(pickle.dumps(first.state_dict()))
    fresh = MixtureSampler(idx, seed=12, limited=limited)
    fresh.load_state_dict(state)
    got += [fresh.sample(m, w) for m in calls[cut:]]
    for (d0, c0), (d1, c1) in zip(expect, got):
        assert np.array_equal(d0, d1) and np.array_equal(c0, c1)
    assert np.array_equal(full.draws, fresh.draws)


def test_stream_does_not_depend_on_call_sizes():
    idx = _index(k=5, n_docs=40, seed=13)
    w = np.array([0.5, 0.1, 0.1, 0.2, 0.1])
    one = MixtureSampler(idx, seed=14).sample(700, w)[0]
    s = MixtureSampler(idx, seed=14)
    parts = np.concatenate([s.sample(1, w)[0] for _ in range(300)] + [s.sample(400, w)[0]])
    assert np.array_equal(one, parts)


def test_load_state_rejects_other_index():
    s = MixtureSampler(_index(k=5, n_docs=40, seed=13))
    with pytest.raises(ValueError, match="different domain index"):
        MixtureSampler(_index(k=5, n_docs=41, seed=13)).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="seed"):
        MixtureSampler(_index(k=5, n_docs=40, seed=13), seed=1).load_state_dict(s.state_dict())


def test_tokens_per_domain_caps_pool():
    idx = _index(k=6, n_docs=600, seed=15, tokens=True)
    s = MixtureSampler(idx, seed=16, tokens_per_domain=300)
    docs, doms = s.sample(20_000, np.ones(6))
    tok = dict(zip(idx.docs.tolist(), idx.tokens.tolist()))
    for j, dom in enumerate(idx.domains):
        pool = set(docs[doms == dom].tolist())
        assert len(pool) == s.pool_sizes[j] < idx.sizes[j] and pool <= _doc_set(idx, j)
        assert sum(tok[d] for d in pool) <= 300 or len(pool) == 1
    # the subset is seeded: the same seed picks the same pool
    again = MixtureSampler(idx, seed=16, tokens_per_domain=300)
    assert np.array_equal(np.sort(again.pool), np.sort(s.pool))
    one = MixtureSampler(idx, seed=16, tokens_per_domain=1)       # below any document
    assert (one.pool_sizes == 1).all()
    with pytest.raises(ValueError, match="n_tokens"):
        MixtureSampler(_index(), tokens_per_domain=10)


def test_weights_on_empty_domains_raise():
    idx = _index(k=4, n_docs=20, seed=17, sparse=10)       # domains 0, 10, 20, 30
    s = MixtureSampler(idx, domain_ids=np.array([0, 5, 10, 20, 30]))
    docs, doms = s.sample(100, np.array([1.0, 0.0, 1.0, 0.0, 0.0]))
    assert set(doms.tolist()) == {0, 10}
    with pytest.raises(ValueError, match="no documents: ids \\[5\\]"):
        s.sample(10, np.array([1.0, 1.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        s.sample(10, np.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        s.sample(10, np.array([1.0, 0, -1, 0, 0]))
    P = BasisMatrix.from_rows(np.array([0, 1]), np.array([3, 10]), np.array([1.0, 1.0]), k=40)
    with pytest.raises(ValueError, match="ids \\[3\\]"):
        MixtureSampler(idx, P).sample(10, np.array([0.5, 0.5]))


def test_dataset_reads_weights_every_step():
    class Switch:  # a mixer whose weights the loop changes between batches
        name, n, w = "switch", 3, np.array([1.0, 0.0, 0.0])

        def weights(self):
            return self.w

    idx, mixer = _index(k=3, n_docs=30, seed=18), Switch()
    ds = SamplerDataset(MixtureSampler(idx, seed=19), mixer, batch_size=8, steps=3,
                        with_domains=True)
    seen = []
    for docs, doms in ds:
        seen.append(set(doms.tolist()))
        assert docs.shape == (8,)
        mixer.w = np.array([0.0, 1.0, 0.0])
    assert seen == [{0}, {1}, {1}]
    loader = torch.utils.data.DataLoader(SamplerDataset(MixtureSampler(idx), mixer, 4, steps=2),
                                         batch_size=None)
    assert [b.shape for b in loader] == [torch.Size([4])] * 2


def test_probe_sampler_shares_the_training_pool_under_a_token_budget():
    """Alignment probes must measure the documents training uses: with pool_seed the budgeted
    subsets are the training sampler's, while the order (seed) differs."""
    rng = np.random.default_rng(0)
    docs = np.arange(400)
    index = DomainIndex.from_arrays(docs, docs % 8, n_tokens=rng.integers(20, 200, 400))
    train = MixtureSampler(index, seed=5, tokens_per_domain=300)
    probe = MixtureSampler(index, seed=5 + 1_000_003, tokens_per_domain=300, pool_seed=5)
    other = MixtureSampler(index, seed=5 + 1_000_003, tokens_per_domain=300)
    assert np.array_equal(np.sort(train.pool), np.sort(probe.pool))
    assert not np.array_equal(np.sort(train.pool), np.sort(other.pool))  # what probes drew from before
    w = np.full(8, 1 / 8)
    assert not np.array_equal(train.sample(64, w)[0], probe.sample(64, w)[0])  # own order
    assert set(probe.sample(400, w)[0]) <= set(train.pool.tolist())

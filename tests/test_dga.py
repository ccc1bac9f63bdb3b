"""DGA maths (docs/method.md, stage 3), the mixers and the basis matrix."""
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dgamix.mixing.alignment import gradient_alignments
from dgamix.mixing.dga import DGA, BasisMatrix, DGAConfig, ema, mirror_step, normalise_alignments
from dgamix.mixing.mixers import MIXER_NAMES, DoGE, Mixer, Static, make_mixer
from dgamix.mixing.sampler import DomainIndex, MixtureSampler
from dgamix.mixing.state import from_plain, to_plain

finite = st.one_of(st.floats(-1e6, 1e6), st.floats(allow_nan=False, allow_infinity=False))


def eg_step(w, a, eta):
    """Exponentiated gradient in probability space, written independently of dgamix.mixing.dga."""
    v = w * np.exp(eta * a)
    return v / v.sum()


def test_mirror_step_exact_small_case():
    log_w = np.log(np.array([0.5, 0.25, 0.25]))
    a = np.array([1.0, 0.0, -1.0])
    w = np.exp(mirror_step(log_w, a, eta=np.log(2)))  # exp(eta a) = 2, 1, 1/2
    np.testing.assert_allclose(w, np.array([1.0, 0.25, 0.125]) / 1.375, rtol=1e-14)


def test_ema_endpoints_and_interior():
    rng = np.random.default_rng(0)
    w, w_hat = rng.dirichlet(np.ones(6)), rng.dirichlet(np.ones(6))
    lw, lh = np.log(w), np.log(w_hat)
    assert np.array_equal(ema(lw, lh, 0.0), lh)
    assert np.array_equal(ema(lw, lh, 1.0), lw)
    np.testing.assert_allclose(np.exp(ema(lw, lh, 0.1)), 0.1 * w + 0.9 * w_hat, rtol=1e-13)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 12), data=st.data(), beta=st.floats(0, 1), eta=st.floats(0, 5),
       floor=st.sampled_from([0.0, 1e-3, 0.2]))
def test_weights_stay_on_simplex(n, data, beta, eta, floor):
    dga = DGA(n, DGAConfig(eta=eta, ema_beta=beta, floor=floor, normalise="none"))
    for _ in range(4):
        a = data.draw(arrays(np.float64, n, elements=finite))
        w = dga.update(0, a)
        assert w.shape == (n,) and w.dtype == np.float64
        assert (w >= 0).all() and abs(w.sum() - 1) < 1e-12
        assert (w >= floor / n * (1 - 1e-9)).all()


def test_extreme_alignments_exact():
    dga = DGA(3, DGAConfig(eta=0.3, ema_beta=0.1, normalise="none"))
    w = dga.update(0, np.array([1e6, -1e6, 0.0]))
    np.testing.assert_allclose(w, 0.1 / 3 + 0.9 * np.array([1.0, 0.0, 0.0]), rtol=1e-14)
    w = dga.update(50, np.array([-1e6, 1e6, 1e6]))  # the winner flips; nothing is NaN
    assert np.isfinite(dga.log_w[:2]).all() and abs(w.sum() - 1) < 1e-12
    huge = DGA(3, DGAConfig(eta=5.0, ema_beta=0.0, normalise="none"))   # eta * a overflows float64
    np.testing.assert_array_equal(huge.update(0, np.array([-1.7e308, 1.7e308, 0.0])), [0, 1, 0])
    np.testing.assert_array_equal(huge.update(1, np.array([1.7e308, -1.7e308, 0.0])), [0, 1, 0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_alignments_raise_and_leave_state(bad):
    dga = DGA(4)
    dga.update(0, np.array([0.1, -0.2, 0.3, 0.0]))
    before = dga.state_dict()
    with pytest.raises(ValueError, match="non-finite alignments"):
        dga.update(50, np.array([0.1, bad, 0.0, 0.0]))
    after = dga.state_dict()
    assert np.array_equal(before["log_w"], after["log_w"]) and after["n_updates"] == 1


def test_wrong_shape_raises():
    with pytest.raises(ValueError, match="shape"):
        DGA(4).update(0, np.zeros(3))


@given(arrays(np.float64, 5, elements=finite))
def test_beta_one_never_moves(a):
    dga = DGA(5, DGAConfig(ema_beta=1.0), init_weights=np.array([1, 2, 3, 4, 5.0]))
    w0 = dga.weights()
    dga.update(0, a)
    assert np.array_equal(dga.weights(), w0)


def test_beta_zero_is_exponentiated_gradient():
    rng = np.random.default_rng(1)
    w = rng.dirichlet(np.ones(7))
    dga = DGA(7, DGAConfig(eta=0.4, ema_beta=0.0, normalise="none"), init_weights=w)
    for t in range(10):
        a = rng.normal(size=7) * 3
        w = eg_step(w, a, 0.4)
        np.testing.assert_allclose(dga.update(t, a), w, rtol=1e-12)


def test_ema_trajectory_matches_probability_space():
    rng = np.random.default_rng(2)
    w = np.full(5, 0.2)
    dga = DGA(5, DGAConfig(eta=0.3, ema_beta=0.1, normalise="none"))
    for t in range(20):
        a = rng.normal(size=5)
        w = 0.1 * w + 0.9 * eg_step(w, a, 0.3)
        np.testing.assert_allclose(dga.update(t, a), w, rtol=1e-12)


def test_floor_keeps_weights_above_eps_over_n():
    dga = DGA(8, DGAConfig(eta=1.0, ema_beta=0.0, floor=0.04, normalise="none"))
    for t in range(30):
        w = dga.update(t, np.r_[1e6, np.zeros(7)])
    assert w.min() >= 0.04 / 8 * (1 - 1e-12)
    np.testing.assert_allclose(w[1:], 0.04 / 8, rtol=1e-9)


def test_needs_alignment_every_period_from_the_start_step():
    dga = DGA(3, DGAConfig(reweight_every=50, reweight_start=0))
    assert [s for s in range(201) if dga.needs_alignment(s)] == [0, 50, 100, 150, 200]
    late = DGA(3, DGAConfig(reweight_every=25, reweight_start=20))
    assert [s for s in range(101) if late.needs_alignment(s)] == [25, 50, 75, 100]


def test_lr_schedule_scales_eta():
    cfg = DGAConfig(eta=0.4, ema_beta=0.0, eta_schedule="lr", normalise="none")
    dga, ref = DGA(3, cfg), DGA(3, DGAConfig(eta=0.4, ema_beta=0.0, normalise="none"))
    a = np.array([1.0, -0.5, 0.2])
    np.testing.assert_allclose(dga.update(0, a, lr=1e-3), ref.update(0, a), rtol=1e-14)
    half = DGA(3, DGAConfig(eta=0.2, ema_beta=0.0, normalise="none"), init_weights=ref.weights())
    np.testing.assert_allclose(dga.update(50, a, lr=5e-4), half.update(0, a), rtol=1e-13)
    with pytest.raises(ValueError, match="lr"):
        dga.update(100, a)


def test_normalise_modes():
    a, g, t = np.array([2.0, -3.0, 0.0]), np.array([1.0, 3.0, 0.0]), 2.0
    np.testing.assert_allclose(normalise_alignments(a, g, t, "cosine"), [1.0, -0.5, 0.0])
    np.testing.assert_allclose(normalise_alignments(a, g, t, "mean_norm"), a / (4 / 3 * 2))
    assert np.array_equal(normalise_alignments(a, None, None, "none"), a)
    with pytest.raises(ValueError, match="grad_norms"):
        normalise_alignments(a, None, None, "cosine")
    dga = DGA(3, DGAConfig(normalise="cosine", eta=1.0, ema_beta=0.0))
    np.testing.assert_allclose(dga.update(0, a, grad_norms=g, target_norm=t),
                               eg_step(np.full(3, 1 / 3), np.array([1.0, -0.5, 0.0]), 1.0))


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(3)
    cfg = DGAConfig(eta=0.5, ema_beta=0.2, floor=1e-3, eta_schedule="lr", normalise="none")
    a_seq = rng.normal(size=(10, 6))
    dga = DGA(6, cfg)
    for t in range(4):
        dga.update(t, a_seq[t], lr=0.1 / (t + 1))
    state = pickle.loads(pickle.dumps(dga.state_dict()))
    other = DGA(6)
    other.load_state_dict(state)
    for t in range(4, 10):
        assert np.array_equal(dga.update(t, a_seq[t], lr=0.1 / (t + 1)),
                              other.update(t, a_seq[t], lr=0.1 / (t + 1)))
    with pytest.raises(ValueError, match="weights"):
        DGA(5).load_state_dict(state)


def test_dga_state_is_torch_saveable(tmp_path):
    """DGA's state as a checkpoint holds it (to_plain: numpy arrays as tensors) is plain types only:
    torch.load(weights_only=True) reads it back, and the restored DGA continues identically."""
    dga = DGA(4)
    dga.update(0, np.arange(4.0))
    torch.save(to_plain(dga.state_dict()), tmp_path / "m.pt")
    other = DGA(4)
    other.load_state_dict(from_plain(torch.load(tmp_path / "m.pt", weights_only=True)))
    assert np.array_equal(other.weights(), dga.weights())
    a = np.array([0.5, -1.0, 2.0, 0.0])
    assert np.array_equal(other.update(1, a), dga.update(1, a))


def test_zero_initial_weight_stays_zero():
    dga = DGA(3, init_weights=np.array([0.0, 1.0, 1.0]))
    assert dga.update(0, np.array([1e3, 0.0, 0.0]))[0] == 0.0


# --------------------------------------------------------------------------- basis matrix

def test_basis_matrix_alpha_and_validation():
    P = BasisMatrix.from_rows(np.array([0, 0, 1, 1, 1]), np.array([0, 2, 1, 1, 3]),
                              np.array([0.5, 0.5, 0.25, 0.25, 0.5]), k=4)
    assert P.n == 2 and P.k == 4
    np.testing.assert_allclose(P.alpha(np.array([0.2, 0.8])), [0.1, 0.4, 0.1, 0.4])
    with pytest.raises(ValueError, match="basis 1 sums to 0.9"):
        BasisMatrix(np.array([[1.0, 0.0], [0.5, 0.4]]))
    with pytest.raises(ValueError, match="negative"):
        BasisMatrix(np.array([[1.5, -0.5]]))
    with pytest.raises(ValueError, match="outside"):
        BasisMatrix.from_rows(np.array([0]), np.array([7]), np.array([1.0]), k=4)
    assert np.array_equal(BasisMatrix.identity(3).alpha(np.array([0.2, 0.3, 0.5])), [0.2, 0.3, 0.5])


# --------------------------------------------------------------------------- toy problems

def _toy_regression(k: int, n_per: int, d: int, seed: int, thetas: np.ndarray):
    """k domains of least-squares data y = x @ theta_c + noise; doc id = row."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(k * n_per, d))
    dom = np.repeat(np.arange(k), n_per)
    y = np.einsum("nd,nd->n", X, thetas[dom]) + 0.01 * rng.normal(size=k * n_per)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), dom


def _mse(model, batch):
    x, y = batch
    return ((model(x).squeeze(-1) - y) ** 2).mean()


def _run_dga(mixer, sampler, X, Y, target, *, updates, train_steps, batch, lr, seed):
    """Alternate DGA updates (batch j drawn from basis / domain j) and SGD on the mixture."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(X.shape[1], 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    traj = [mixer.weights()]
    for t in range(updates):
        onehots = np.eye(mixer.n)
        batches = ((X[d], Y[d]) for d in (sampler.sample(batch, e)[0] for e in onehots))
        al = gradient_alignments(model, _mse, target, batches)
        traj.append(mixer.update(t, al.alignments, grad_norms=al.grad_norms,
                                  target_norm=al.target_norm))
        for _ in range(train_steps):
            d, _ = sampler.sample(batch, mixer.weights())
            (g,) = torch.autograd.grad(_mse(model, (X[d], Y[d])), model.weight)
            with torch.no_grad():  # plain SGD (torch.optim's first use imports ~2 s of modules)
                model.weight -= lr * g
    return np.array(traj)


def test_sign_domain_sharing_target_optimum_gains_weight():
    d, k = 6, 4
    rng = np.random.default_rng(4)
    theta = np.zeros((k, d))
    theta[0, 0] = 2.0                       # the target's optimum
    theta[1:, 1:4] = 2.0 * np.eye(3)        # others: orthogonal optima
    X, Y, dom = _toy_regression(k, 200, d, 5, theta)
    Xt = torch.tensor(rng.normal(size=(64, d)), dtype=torch.float32)
    target = (Xt, Xt[:, 0] * 2.0)
    index = DomainIndex.from_arrays(np.arange(dom.size), dom)
    # cosine alignments: a gradual climb (raw dots here are large and saturate in one step)
    cfg = DGAConfig(eta=1.0, ema_beta=0.1, normalise="cosine")
    traj = _run_dga(DGA(k, cfg), MixtureSampler(index, seed=0),
                    X, Y, target, updates=8, train_steps=5, batch=32, lr=0.05, seed=0)
    w0 = traj[:, 0]
    assert (np.diff(w0) > 0).all() and w0[-1] > 0.5
    assert (traj[-1, 1:] < 0.25).all()


def test_identity_basis_equals_domain_reweighting():
    d, k = 5, 4
    theta = np.random.default_rng(6).normal(size=(k, d))
    X, Y, dom = _toy_regression(k, 60, d, 7, theta)
    target = (X[:32], X[:32] @ torch.tensor(theta[2], dtype=torch.float32))
    index = DomainIndex.from_arrays(np.arange(dom.size), dom)
    cfg = DGAConfig(eta=0.5, ema_beta=0.1, normalise="none")
    basis = BasisMatrix.identity(k)
    by_domain = _run_dga(DGA(k, cfg), MixtureSampler(index, seed=1), X, Y, target,
                         updates=5, train_steps=3, batch=16, lr=0.05, seed=0)
    by_basis = _run_dga(DGA(k, cfg), MixtureSampler(index, basis, seed=1), X, Y, target,
                        updates=5, train_steps=3, batch=16, lr=0.05, seed=0)
    alphas = np.array([basis.alpha(w) for w in by_basis])
    assert np.array_equal(alphas, by_domain)
    assert not np.allclose(by_domain[-1], 0.25)  # it did move


# --------------------------------------------------------------------------- mixers

def test_doge_cumulative_and_average():
    rng = np.random.default_rng(8)
    w0 = rng.dirichlet(np.ones(4))
    doge = DoGE(4, DGAConfig(eta=0.2, normalise="none"), init_weights=w0)
    np.testing.assert_allclose(doge.average_weights(), w0)
    a_seq, ws = rng.normal(size=(6, 4)), []
    for t, a in enumerate(a_seq):
        ws.append(doge.update(t, a))
        expect = eg_step(w0, a_seq[: t + 1].sum(0), 0.2)
        np.testing.assert_allclose(ws[-1], expect, rtol=1e-12)
    np.testing.assert_allclose(doge.average_weights(), np.mean(ws, axis=0), rtol=1e-12)
    other = DoGE(4)
    other.load_state_dict(pickle.loads(pickle.dumps(doge.state_dict())))
    np.testing.assert_array_equal(other.average_weights(), doge.average_weights())
    with pytest.raises(ValueError):
        doge.update(6, np.array([np.nan, 0, 0, 0]))


def test_make_mixer_names_and_behaviour():
    sizes = np.array([1.0, 3.0, 6.0])
    assert np.array_equal(make_mixer("uniform", 3).weights(), np.full(3, 1 / 3))
    nat = make_mixer("natural", 3, init=sizes)
    np.testing.assert_allclose(nat.weights(), [0.1, 0.3, 0.6])
    assert not nat.needs_alignment(0)
    np.testing.assert_allclose(nat.update(0, np.ones(3)), [0.1, 0.3, 0.6])
    assert make_mixer("dga-noema", 3, config=DGAConfig()).config.ema_beta == 0.0
    assert make_mixer("dga", 3).config.ema_beta == 0.1
    with pytest.raises(ValueError, match="dga-noema is dga with ema_beta = 0"):  # refused, not replaced
        make_mixer("dga-noema", 3, config=DGAConfig(ema_beta=0.3))
    with pytest.raises(ValueError, match="doge has no EMA"):
        make_mixer("doge", 3, config=DGAConfig(ema_beta=0.3))
    for name in MIXER_NAMES:
        m = make_mixer(name, 3, init=sizes)
        assert isinstance(m, Mixer) and m.name == name and m.n == 3
        m.load_state_dict(pickle.loads(pickle.dumps(m.state_dict())))
    with pytest.raises(ValueError, match="uniform\\|natural\\|is\\|dga\\|dga-noema\\|doge"):
        make_mixer("doremi", 3)
    with pytest.raises(ValueError, match="cluster sizes"):
        make_mixer("natural", 3)
    with pytest.raises(ValueError, match="non-negative"):
        Static(np.array([1.0, -1.0]), "is")


def test_eta_zero_is_no_step_even_for_alignments_past_float64s_range():
    log_w = np.log(np.array([0.2, 0.3, 0.5]))
    out = mirror_step(log_w, np.array([1.7e308, -1.7e308, 0.0]), 0.0)  # a - max overflows to -inf
    np.testing.assert_allclose(np.exp(out), [0.2, 0.3, 0.5])
    dga = DGA(3, DGAConfig(eta=0.0, ema_beta=0.0, reweight_start=0, normalise="none"))
    assert np.isfinite(dga.update(0, np.array([1.7e308, -1.7e308, 0.0]))).all()


def test_standardise_is_a_z_score_whatever_the_gradient_scale():
    a = np.array([1.0, 2.0, 3.0, 6.0])
    z = normalise_alignments(a, None, None, "standardise")
    np.testing.assert_allclose(z, (a - 3.0) / np.sqrt(3.5))   # population std of a is sqrt(3.5)
    np.testing.assert_allclose(normalise_alignments(1e-6 * a, None, None, "standardise"), z)
    assert (normalise_alignments(np.full(3, 5.0), None, None, "standardise") == 0).all()  # no spread, no move
    # the same update whether the raw dots are 1e-6 or 1e3: eta means the same on any model
    small, big = DGA(4, DGAConfig(eta=1.0, normalise="standardise")), DGA(4, DGAConfig(eta=1.0, normalise="standardise"))
    np.testing.assert_allclose(small.update(0, 1e-6 * a), big.update(0, 1e3 * a))


def test_clip_is_a_dga_setting_and_is_validated():
    assert DGAConfig().clip is None and DGAConfig(clip=2.5).clip == 2.5
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="clip"):
            DGAConfig(clip=bad)
    with pytest.raises(ValueError, match="normalise"):
        DGAConfig(normalise="zscore")


def test_target_mixture_recovers_the_group_shares_and_the_histogram():
    """EM for the mixture weights: with one basis per group (each the histogram of its group's
    examples) the maximiser is each group's share of the examples; with P = I the histogram."""
    from dgamix.mixing.dga import target_mixture

    # 3 groups of examples over 5 domains; group j's basis is its examples' histogram
    groups = [np.array([0, 0, 1]), np.array([1, 2, 2, 2, 3, 3]), np.array([4])]
    rows = [np.bincount(g, minlength=5) / len(g) for g in groups]
    generic = np.full(5, 0.2)
    domains = np.concatenate(groups)
    hist = np.bincount(domains, minlength=5) / domains.size
    # the group shares 3/10, 6/10, 1/10 reproduce the empirical histogram exactly
    np.testing.assert_allclose(target_mixture(BasisMatrix(np.vstack(rows)), domains), [0.3, 0.6, 0.1], atol=1e-7)
    # with a generic basis the maximum is on the boundary (generic 0), which EM approaches as 1/t
    P = BasisMatrix(np.vstack(rows + [generic]))
    w = target_mixture(P, domains, iters=5000, tol=1e-13)
    np.testing.assert_allclose(w, [0.3, 0.6, 0.1, 0.0], atol=0.02)

    def loglik(v):
        return float(np.log(v @ P.P.toarray()[:, domains]).sum())

    assert loglik(np.array([0.3, 0.6, 0.1, 0.0])) - loglik(w) < 1e-3
    assert loglik(w) > loglik(np.full(4, 0.25))
    np.testing.assert_allclose(target_mixture(BasisMatrix.identity(5), domains), hist, atol=1e-9)
    # examples in domains no basis covers are ignored; none at all gives uniform weights
    P2 = BasisMatrix(np.vstack(rows[:2]))  # domain 4 is covered by neither
    np.testing.assert_allclose(target_mixture(P2, np.array([4, 4])), [0.5, 0.5])
    assert abs(target_mixture(P2, domains).sum() - 1) < 1e-12


def test_shrink_alignments_exact_small_case():
    from dgamix.mixing.dga import shrink_alignments

    # means (1.5, 0.5); sample variances 0.5 each over 2 updates -> se^2 = 0.25: keep (2.25 - 0.25) / 2.25 and 0
    np.testing.assert_allclose(shrink_alignments(np.array([3.0, 1.0]), np.array([5.0, 1.0]), 2), [4 / 3, 0.0],
                               rtol=1e-14)
    np.testing.assert_array_equal(shrink_alignments(np.array([3.0, 1.0]), np.array([5.0, 1.0]), 1), [0.0, 0.0])
    np.testing.assert_array_equal(shrink_alignments(np.zeros(2), np.ones(2), 3), [0.0, 0.0])  # mean 0: no step


def test_dga_shrink_steps_on_persistent_alignments_and_not_on_flipping_ones():
    c = np.sqrt(1.5)  # the z-score of +-1 among (1, 0, -1)
    dga = DGA(3, DGAConfig(eta=np.log(2) / c, ema_beta=0.0, normalise="shrink"))
    np.testing.assert_allclose(dga.update(0, np.array([1.0, 0.0, -1.0])), np.full(3, 1 / 3), rtol=1e-14)  # no spread yet
    w = dga.update(25, np.array([10.0, 0.0, -10.0]))  # the same ranking again: zero spread, full z-scores
    np.testing.assert_allclose(w, np.array([2.0, 1.0, 0.5]) / 3.5, rtol=1e-13)
    restored = DGA(3, DGAConfig(normalise="shrink"))
    restored.load_state_dict(pickle.loads(pickle.dumps(dga.state_dict())))
    # the ranking flips: mean (c/3, 0, -c/3), se^2 = 4 c^2 / 9 > mean^2 -> no step, on the restored copy too
    for d in (dga, restored):
        np.testing.assert_allclose(d.update(50, np.array([-1.0, 0.0, 1.0])), np.array([2.0, 1.0, 0.5]) / 3.5,
                                   rtol=1e-13)
    np.testing.assert_allclose(dga.z_sum, [c, 0.0, -c], rtol=1e-14)
    with pytest.raises(ValueError, match="shrink"):
        make_mixer("doge", 3, config=DGAConfig(normalise="shrink"))

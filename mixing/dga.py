"""Dynamic Gradient Alignment (docs/method.md, stage 3): mirror-descent weights with an EMA, in log space.

Every ``reweight_every`` steps the trainer measures alignments a_j = <g_j, g_spe> (see
``alignment.py``) and calls ``DGA.update``:

    w_hat = w * exp(eta * a) / sum(w * exp(eta * a))       (exponentiated-gradient step)
    w     <- beta * w + (1 - beta) * w_hat                 (beta = weight on the PREVIOUS w)
    w     <- (1 - eps) * w + eps / n                       (optional floor, eps = ``floor``)

The weights are stored as log w so that tiny weights (exp(-1e5)) neither underflow to a
spurious 0 that later divides, nor make the step lose precision. A weight that starts at
exactly 0 stays 0 (mirror descent never revives it) unless ``floor > 0``.

``BasisMatrix`` is the sparse N x k matrix P of basis distributions (distribution
reweighting): DGA learns w over the N bases and the sampler draws domains from alpha = w @ P.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp

Normalise = Literal["none", "cosine", "mean_norm", "standardise", "shrink"]
NORMALISE_MODES = ("none", "cosine", "mean_norm", "standardise", "shrink")


DEFAULT_EMA_BETA = 0.1  # dga's EMA weight when DGAConfig.ema_beta is None


@dataclass
class DGAConfig:
    """DGA's settings: the one object from `dgamix train`'s options (or a user's code) to the update.

    eta: step size of the exponentiated-gradient step (units: 1 / alignment units).
    ema_beta: EMA weight on the PREVIOUS weights; 0 = pure mirror descent, 1 = frozen; None = the
        mixer's own (DEFAULT_EMA_BETA for dga, 0 for dga-noema; doge has no EMA).
    reweight_every: T_r, the number of training steps between updates.
    reweight_start: no update before this step (at initialisation every gradient points along the
        same unigram direction, so the alignments are 10-100x larger than later and measure that,
        not relevance to the target; the default skips the trainer's learning-rate warmup).
    floor: eps in w <- (1 - eps) w + eps / n, applied after each update (0 disables).
    normalise: how raw dot products are rescaled before the step, see ``normalise_alignments``;
        "shrink" (DGA only) also remembers every update's standardised alignments and steps with
        their mean shrunk by its standard error (``shrink_alignments``).
    clip: if set, every gradient (each probe's and the target's) is rescaled to L2 norm <= clip
        before the dot product (``gradient_alignments``); None disables.
    eta_schedule: "constant", or "lr" for eta_t = eta * lr_t / lr_0 (lr_0 = lr of the first update).
    align_params: None (every trainable parameter), or a regular expression on parameter names
        (``named_parameters``): the alignments compare only those gradients, e.g. the last block and
        the final norm (cheaper: backward stops there; see ``alignment.gradient_alignments``).
    init: the starting weights: "uniform" (1/n), or "target": the mixture of the n entries that
        best explains the target's own examples (``target_mixture``: for group bases, each group's
        share of the examples, i.e. DGA starts where importance sampling is), mixed with uniform
        at INIT_FLOOR so that no entry starts at exactly 0 (mirror descent never revives a 0).
    """

    eta: float = 0.3
    ema_beta: float | None = None
    reweight_every: int = 25
    reweight_start: int = 20
    floor: float = 0.0
    normalise: Normalise = "standardise"
    clip: float | None = None
    eta_schedule: Literal["constant", "lr"] = "constant"
    init: Literal["uniform", "target"] = "uniform"
    align_params: str | None = None

    def __post_init__(self) -> None:
        if not (np.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"eta must be finite and >= 0, got {self.eta}")
        if self.ema_beta is not None and not 0.0 <= self.ema_beta <= 1.0:
            raise ValueError(f"ema_beta must be in [0, 1], got {self.ema_beta}")
        if int(self.reweight_every) < 1:
            raise ValueError(f"reweight_every must be >= 1, got {self.reweight_every}")
        if int(self.reweight_start) < 0:
            raise ValueError(f"reweight_start must be >= 0, got {self.reweight_start}")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {self.floor}")
        if self.normalise not in NORMALISE_MODES:
            raise ValueError(f"normalise must be {'|'.join(NORMALISE_MODES)}, got {self.normalise!r}")
        if self.clip is not None and not (np.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be > 0 (or None), got {self.clip}")
        if self.eta_schedule not in ("constant", "lr"):
            raise ValueError(f"eta_schedule must be constant|lr, got {self.eta_schedule!r}")
        if self.init not in ("uniform", "target"):
            raise ValueError(f"init must be uniform|target, got {self.init!r}")
        if self.align_params is not None:
            import re

            try:
                re.compile(self.align_params)
            except re.error as e:
                raise ValueError(f"align_params {self.align_params!r} is not a regular expression ({e})") from None

    def due(self, step: int) -> bool:
        """Whether ``step`` is a reweighting step: from reweight_start on, every reweight_every steps."""
        return step >= self.reweight_start and step % self.reweight_every == 0


# --------------------------------------------------------------------------- pure maths

def mirror_step(log_w: np.ndarray, a: np.ndarray, eta: float) -> np.ndarray:
    """One exponentiated-gradient step in log space: log_softmax(log_w + eta * a). Shapes (n,).

    a is shifted by its maximum over the support first (the softmax does not change), so
    any finite a, even +-1e308, gives finite exponents for the winner and never NaN.
    """
    a = np.asarray(a, dtype=np.float64)
    live = log_w > -np.inf             # a zero weight stays zero (and is not inf - inf)
    z = np.full_like(log_w, -np.inf)
    if eta:  # eta = 0 is no step: 0 * (a spread past float64's range = -inf) would be NaN
        with np.errstate(over="ignore"):
            z[live] = log_w[live] + eta * (a[live] - a[live].max())  # overflow only gives -inf
    else:
        z[live] = log_w[live]
    return z - logsumexp(z)


def ema(log_w: np.ndarray, log_w_hat: np.ndarray, beta: float) -> np.ndarray:
    """log(beta * w + (1 - beta) * w_hat), computed with logaddexp; beta weighs the PREVIOUS w.

    beta = 0 returns log_w_hat and beta = 1 returns log_w exactly (no rounding).
    """
    if beta == 0.0:
        return log_w_hat.copy()
    if beta == 1.0:
        return log_w.copy()
    out = np.logaddexp(np.log(beta) + log_w, np.log1p(-beta) + log_w_hat)
    return out - logsumexp(out)  # both inputs sum to 1; renormalise away the rounding


def apply_floor(log_w: np.ndarray, eps: float) -> np.ndarray:
    """log((1 - eps) w + eps / n): every weight ends >= eps / n. eps = 0 is the identity."""
    if eps == 0.0:
        return log_w
    n = log_w.shape[0]
    return np.logaddexp(np.log1p(-eps) + log_w, np.log(eps / n))


def normalise_alignments(a: np.ndarray, grad_norms: np.ndarray | None,
                         target_norm: float | None, mode: Normalise) -> np.ndarray:
    """Rescale raw dot products a_j = <g_j, g_spe> (shape (n,)) so that eta is scale-free.

    none:      a_j unchanged (units: loss^2 / param^2, depends on model and learning rate).
    cosine:    a_j / (|g_j| |g_spe|), in [-1, 1]; discards how large each domain's gradient is.
    mean_norm: a_j / (mean_i |g_i| * |g_spe|); one common scale for all j, so a domain with a
               larger gradient still moves its weight more (keeps the ranking of raw dots).
    standardise: (a_j - mean a) / std a over this update's n alignments (population std): every
               update has the same spread, whatever the scale of the gradients; needs no norms.
               With n = 2 it keeps only the sign of a_1 - a_2 (z = +-1).
    shrink:    as standardise for one update; DGA then averages the z-scores across updates and
               shrinks the mean by its standard error (``shrink_alignments``).
    A zero denominator (a zero gradient, or all a_j equal) gives alignment 0: no information, no move.
    """
    a = np.asarray(a, dtype=np.float64)
    if mode == "none":
        return a
    if mode in ("standardise", "shrink"):
        scale = np.abs(a).max() if a.size else 0.0
        if not scale > 0:
            return np.zeros_like(a)
        b = a / scale  # z-scores do not change under scaling; this keeps +-1e308 from overflowing
        sd = b.std()
        # differences at rounding level (sd ~ 1e-16 of the largest) are no signal: no move
        return (b - b.mean()) / sd if sd > 1e-12 else np.zeros_like(a)
    if grad_norms is None or target_norm is None:
        raise ValueError(f"normalise={mode!r} needs grad_norms and target_norm")
    g = np.asarray(grad_norms, dtype=np.float64)
    if g.shape != a.shape:
        raise ValueError(f"grad_norms has shape {g.shape}, alignments {a.shape}")
    if mode == "cosine":
        den = g * float(target_norm)
    elif mode == "mean_norm":
        den = np.full_like(a, g.mean() * float(target_norm))
    else:
        raise ValueError(f"unknown normalise mode {mode!r}; use {'|'.join(NORMALISE_MODES)}")
    out = np.zeros_like(a)
    np.divide(a, den, out=out, where=den > 0)
    return out


def shrink_alignments(total: np.ndarray, total_sq: np.ndarray, count: int) -> np.ndarray:
    """The step of normalise="shrink": the mean m_j of the standardised alignments z_j seen in ``count``
    updates (sums ``total`` = sum z, ``total_sq`` = sum z^2, shapes (n,)), shrunk towards 0 by its
    squared standard error se_j^2 = s_j^2 / count (s_j^2 the sample variance of z_j across updates):

        m_j * max(0, 1 - se_j^2 / m_j^2)

    A standardised alignment has unit spread whether it is signal or noise, so a step of z alone
    moves the weights as far on pure noise as on signal. An entry whose alignment keeps its sign
    from update to update has a mean larger than its standard error and keeps most of it; an entry
    whose alignment is noise has a mean within about one standard error of 0 and gets little or no
    step. The first update (no spread yet) gives no step; an entry with m_j = 0 gets 0."""
    if count < 2:
        return np.zeros_like(np.asarray(total, dtype=np.float64))
    m = np.asarray(total, dtype=np.float64) / count
    var = np.maximum(np.asarray(total_sq, dtype=np.float64) / count - m * m, 0.0) * count / (count - 1)
    m2 = m * m
    keep = np.zeros_like(m)
    np.divide(np.maximum(m2 - var / count, 0.0), m2, out=keep, where=m2 > 0)
    return m * keep


INIT_FLOOR = 0.05  # init="target": every entry starts with at least INIT_FLOOR / n of the mass


def target_mixture(P: "BasisMatrix", domains: np.ndarray, iters: int = 500, tol: float = 1e-10) -> np.ndarray:
    """Weights w (N,) on the simplex maximising the target's likelihood sum_i log (w @ P)[d_i].

    domains (m,) int64: the domain of each target example (reweight examples). The maximiser is
    found by EM for mixture weights (w_j <- mean_i w_j P_j(d_i) / (w @ P)(d_i)), which increases
    the likelihood at every iteration. For bases built one per target group (or k-means group)
    it is each group's share of the examples; for P = I it is the target's histogram. Examples
    in domains no basis covers are ignored.
    """
    d = np.asarray(domains, dtype=np.int64)
    d = d[(d >= 0) & (d < P.k)]
    L = P.P.tocsc()[:, d].T.tocsr()          # (m, N): P_j(d_i)
    covered = np.asarray(L.sum(axis=1)).ravel() > 0
    L = L[covered]
    w = np.full(P.n, 1.0 / P.n)
    if L.shape[0] == 0:
        return w
    for _ in range(iters):
        mix = L @ w                            # (m,) likelihood of each example
        new = w * np.asarray(L.T @ (1.0 / mix)).ravel() / L.shape[0]
        new /= new.sum()
        if np.abs(new - w).max() < tol:
            return new
        w = new
    return w


def log_init_weights(n: int, init_weights: np.ndarray | None) -> np.ndarray:
    """log of the initial weights (uniform when None), validated and normalised. Shape (n,)."""
    if init_weights is None:
        return np.full(n, -np.log(n))
    w = np.asarray(init_weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"init_weights has shape {w.shape}, expected ({n},)")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("init_weights must be finite, non-negative and not all zero")
    with np.errstate(divide="ignore"):
        return np.log(w) - np.log(w.sum())


# --------------------------------------------------------------------------- the updater

class DGA:
    """DGA weights over n domains or bases. ``weights()`` is what the sampler uses.

    The state is log w (n,), the first learning rate (for eta_schedule="lr") and counters.
    """

    def __init__(self, n: int, config: DGAConfig | None = None,
                 init_weights: np.ndarray | None = None, name: str = "dga") -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = int(n)
        self.name = name
        config = config or DGAConfig()
        self.config = replace(config, ema_beta=DEFAULT_EMA_BETA) if config.ema_beta is None else config
        self.log_w = apply_floor(log_init_weights(self.n, init_weights), self.config.floor)
        self.lr0: float | None = None
        self.n_updates = 0
        self.last_step: int | None = None
        # normalise="shrink": sums of the standardised alignments and of their squares over updates
        self.z_sum, self.z_sq = np.zeros(self.n), np.zeros(self.n)

    def weights(self) -> np.ndarray:
        """Current weights, float64 (n,), non-negative and summing to 1."""
        w = np.exp(self.log_w)
        return w / w.sum()

    def needs_alignment(self, step: int) -> bool:
        """True on reweighting steps (``DGAConfig.due``)."""
        return self.config.due(step)

    def step_size(self, lr: float | None) -> float:
        """eta for this update: constant, or eta * lr / lr_0 with eta_schedule="lr"."""
        cfg = self.config
        if cfg.eta_schedule == "constant":
            return cfg.eta
        if lr is None or not np.isfinite(lr) or lr < 0:
            raise ValueError(f"eta_schedule='lr' needs a finite lr >= 0 at every update, got {lr}")
        lr0 = self.lr0 if self.lr0 is not None else lr
        return cfg.eta * lr / lr0 if lr0 > 0 else cfg.eta

    def update(self, step: int, alignments: np.ndarray, grad_norms: np.ndarray | None = None,
               target_norm: float | None = None, lr: float | None = None) -> np.ndarray:
        """Apply one DGA update from alignments (n,); returns the new weights (n,).

        Raises ValueError (state unchanged) on a wrong shape or a NaN/inf alignment.
        """
        a = np.asarray(alignments, dtype=np.float64)
        if a.shape != (self.n,):
            raise ValueError(f"alignments has shape {a.shape}, expected ({self.n},)")
        if not np.isfinite(a).all():
            bad = np.flatnonzero(~np.isfinite(a))[:5].tolist()
            raise ValueError(f"non-finite alignments (NaN or inf) at indices {bad}; the "
                             "weights were not updated (check the loss / gradients)")
        a = normalise_alignments(a, grad_norms, target_norm, self.config.normalise)
        z_sum, z_sq = self.z_sum, self.z_sq
        if self.config.normalise == "shrink":
            z_sum, z_sq = z_sum + a, z_sq + a * a
            a = shrink_alignments(z_sum, z_sq, self.n_updates + 1)
        eta = self.step_size(lr)
        # Compute everything first, commit at the end: an error leaves the state unchanged.
        log_w = apply_floor(ema(self.log_w, mirror_step(self.log_w, a, eta), self.config.ema_beta),
                            self.config.floor)
        if self.config.eta_schedule == "lr" and self.lr0 is None:
            self.lr0 = float(lr)
        self.log_w = log_w
        self.z_sum, self.z_sq = z_sum, z_sq
        self.n_updates += 1
        self.last_step = int(step)
        return self.weights()

    def state_dict(self) -> dict:
        """Plain python / numpy state (picklable, torch.save-able)."""
        return {"kind": "dga", "n": self.n, "name": self.name, "config": asdict(self.config),
                "log_w": self.log_w.copy(), "lr0": self.lr0, "n_updates": self.n_updates,
                "last_step": self.last_step, "z_sum": self.z_sum.copy(), "z_sq": self.z_sq.copy()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from ``state_dict`` (config included)."""
        log_w = np.asarray(state["log_w"], dtype=np.float64)
        if log_w.shape != (self.n,):
            raise ValueError(f"state has {log_w.shape[0]} weights, this DGA has {self.n}")
        self.config = DGAConfig(**state["config"])
        self.log_w = log_w.copy()
        self.lr0 = state["lr0"]
        self.n_updates = int(state["n_updates"])
        self.last_step = state["last_step"]
        # a state saved before normalise="shrink" existed has no sums: they start at 0
        self.z_sum = np.asarray(state.get("z_sum", np.zeros(self.n)), dtype=np.float64).copy()
        self.z_sq = np.asarray(state.get("z_sq", np.zeros(self.n)), dtype=np.float64).copy()


# --------------------------------------------------------------------------- bases

class BasisMatrix:
    """Sparse N x k matrix P whose row j is basis distribution P_j over k domain ids.

    Columns are domain ids 0..k-1 at one tree level (what WS/bases/B.parquet stores).
    """

    def __init__(self, P: sp.spmatrix | np.ndarray, tol: float = 1e-6) -> None:
        P = sp.csr_matrix(P, dtype=np.float64)
        P.sum_duplicates()
        if P.nnz and (not np.isfinite(P.data).all() or (P.data < 0).any()):
            rows = np.unique(np.repeat(np.arange(P.shape[0]), np.diff(P.indptr))[
                ~(np.isfinite(P.data) & (P.data >= 0))])
            raise ValueError(f"basis matrix has negative or non-finite weights in bases "
                             f"{rows[:10].tolist()}")
        sums = np.asarray(P.sum(axis=1)).ravel()
        bad = np.flatnonzero(np.abs(sums - 1.0) > tol)
        if bad.size:
            raise ValueError(f"basis {int(bad[0])} sums to {sums[bad[0]]:.8g}, not 1 "
                             f"({bad.size} bad bases: {bad[:10].tolist()}); every basis must "
                             "be a distribution over domains")
        self.P = P

    @property
    def n(self) -> int:
        """N, the number of bases."""
        return self.P.shape[0]

    @property
    def k(self) -> int:
        """k, the number of domain ids (columns)."""
        return self.P.shape[1]

    def alpha(self, w: np.ndarray) -> np.ndarray:
        """Domain weights alpha = w @ P, float64 (k,), for basis weights w (N,)."""
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (self.n,):
            raise ValueError(f"basis weights have shape {w.shape}, expected ({self.n},)")
        return np.asarray(self.P.T @ w).ravel()

    @classmethod
    def identity(cls, k: int) -> "BasisMatrix":
        """P = I: basis j is domain j (distribution reweighting = domain reweighting)."""
        return cls(sp.identity(k, dtype=np.float64, format="csr"))

    @classmethod
    def from_rows(cls, basis: np.ndarray, domain: np.ndarray, weight: np.ndarray, k: int,
                  n: int | None = None) -> "BasisMatrix":
        """Build from long-format arrays (columns basis, domain, weight of B.parquet).

        basis ids are 0..N-1 (N = max + 1 unless ``n`` is given); domain ids 0..k-1;
        repeated (basis, domain) pairs are summed.
        """
        basis = np.asarray(basis, dtype=np.int64)
        domain = np.asarray(domain, dtype=np.int64)
        weight = np.asarray(weight, dtype=np.float64)
        if not (basis.shape == domain.shape == weight.shape) or basis.ndim != 1:
            raise ValueError("basis, domain and weight must be 1-d arrays of the same length")
        n = int(basis.max()) + 1 if n is None and basis.size else int(n or 0)
        if basis.size and (basis.min() < 0 or basis.max() >= n):
            raise ValueError(f"basis ids must lie in [0, {n})")
        if domain.size and (domain.min() < 0 or domain.max() >= k):
            raise ValueError(f"domain id {int(domain.max())} is outside [0, {k}); wrong level?")
        return cls(sp.coo_matrix((weight, (basis, domain)), shape=(n, k)).tocsr())

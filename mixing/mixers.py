"""One interface for every weight updater, so the trainer runs baselines and DGA alike.

A ``Mixer`` owns weights on a simplex of size ``n``: N basis weights (distribution
reweighting; the sampler maps them to domains through a ``BasisMatrix``) or k domain weights.
The trainer asks ``needs_alignment(step)``; if True it measures alignments and calls
``update(step, alignments, **info)`` (info: grad_norms, target_norm, lr).

Names accepted by ``make_mixer``: uniform, natural, is, dga, dga-noema, doge.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from typing import Protocol, runtime_checkable

import numpy as np

from dgamix.mixing.dga import DEFAULT_EMA_BETA, DGA, DGAConfig, log_init_weights, mirror_step, normalise_alignments

MIXER_NAMES = ("uniform", "natural", "is", "dga", "dga-noema", "doge")
"""The mixer names make_mixer builds (the --mixer choices)."""
ADAPTIVE = ("dga", "dga-noema", "doge")  # the mixers that align gradients (need a target and probes)


@runtime_checkable
class Mixer(Protocol):
    """What the trainer, sampler and schedule writer rely on."""

    name: str
    n: int

    def weights(self) -> np.ndarray:
        """Current weights, float64 (n,), on the simplex."""

    def needs_alignment(self, step: int) -> bool:
        """Whether ``update`` wants alignments measured at this step."""

    def update(self, step: int, alignments: np.ndarray, **info) -> np.ndarray:
        """Update from alignments (n,); returns the new weights (n,)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Static:
    """Fixed weights (uniform, natural = cluster sizes, is = a static basis). Never updates."""

    def __init__(self, weights: np.ndarray, name: str) -> None:
        self.name = name
        w = np.asarray(weights, dtype=np.float64)
        self.n = w.shape[0]
        self._w = np.exp(log_init_weights(self.n, w))  # validates: finite, >= 0, not all zero

    def weights(self) -> np.ndarray:
        return self._w.copy()

    def needs_alignment(self, step: int) -> bool:
        return False

    def update(self, step: int, alignments: np.ndarray, **info) -> np.ndarray:
        """No-op (a static mixture ignores alignments)."""
        return self.weights()

    def state_dict(self) -> dict:
        return {"kind": "static", "name": self.name, "weights": self._w.copy()}

    def load_state_dict(self, state: dict) -> None:
        w = np.asarray(state["weights"], dtype=np.float64)
        if w.shape != (self.n,):
            raise ValueError(f"state has {w.shape[0]} weights, this mixer has {self.n}")
        self._w = w.copy()


class DoGE:
    """DoGE-style weights: w_t proportional to w_0 * exp(eta * sum_{s<=t} a_s) (log space).

    Uses eta, reweight_every, reweight_start and normalise of the DGAConfig (no EMA, no floor,
    constant eta).
    ``weights()`` drives sampling during the run (and is what `dgamix train` logs);
    ``average_weights()`` (the mean of the weights produced by the updates; w_0 before any
    update) is DoGE's final mixture, available from Python.
    """

    def __init__(self, n: int, config: DGAConfig | None = None,
                 init_weights: np.ndarray | None = None, name: str = "doge") -> None:
        self.n = int(n)
        self.name = name
        self.config = config or DGAConfig()
        if self.config.normalise == "shrink":
            raise ValueError("normalise='shrink' is DGA's (it averages alignments across updates); DoGE already "
                             "sums them: use standardise")
        self.log_w0 = log_init_weights(self.n, init_weights)
        self.cum_a = np.zeros(self.n)      # sum of (normalised) alignments over updates
        self.sum_w = np.zeros(self.n)      # sum of the weights after each update
        self.n_updates = 0

    def weights(self) -> np.ndarray:
        w = np.exp(mirror_step(self.log_w0, self.cum_a, self.config.eta))
        return w / w.sum()

    def average_weights(self) -> np.ndarray:
        """Mean of the weights over updates, float64 (n,): the exported DoGE mixture."""
        if self.n_updates == 0:
            return np.exp(self.log_w0)
        return self.sum_w / self.n_updates

    def needs_alignment(self, step: int) -> bool:
        return self.config.due(step)

    def update(self, step: int, alignments: np.ndarray, grad_norms: np.ndarray | None = None,
               target_norm: float | None = None, **info) -> np.ndarray:
        a = np.asarray(alignments, dtype=np.float64)
        if a.shape != (self.n,) or not np.isfinite(a).all():
            raise ValueError(f"alignments must be finite with shape ({self.n},); got shape "
                             f"{a.shape}; the weights were not updated")
        cum_a = self.cum_a + normalise_alignments(a, grad_norms, target_norm, self.config.normalise)
        if not np.isfinite(cum_a).all():
            raise ValueError("the summed alignments overflow float64; rescale them "
                             "(DGAConfig.normalise); the weights were not updated")
        w = np.exp(mirror_step(self.log_w0, cum_a, self.config.eta))
        self.cum_a = cum_a
        self.sum_w += w / w.sum()
        self.n_updates += 1
        return self.weights()

    def state_dict(self) -> dict:
        return {"kind": "doge", "name": self.name, "config": asdict(self.config),
                "log_w0": self.log_w0.copy(), "cum_a": self.cum_a.copy(),
                "sum_w": self.sum_w.copy(), "n_updates": self.n_updates}

    def load_state_dict(self, state: dict) -> None:
        n_state = np.shape(state["cum_a"])[0]
        if n_state != self.n:
            raise ValueError(f"state has {n_state} weights, this mixer has {self.n}")
        self.config = DGAConfig(**state["config"])
        self.log_w0 = np.array(state["log_w0"], dtype=np.float64)
        self.cum_a = np.array(state["cum_a"], dtype=np.float64)
        self.sum_w = np.array(state["sum_w"], dtype=np.float64)
        self.n_updates = int(state["n_updates"])


def mixer_ema_beta(name: str, ema_beta: float | None) -> float | None:
    """The EMA weight mixer ``name`` runs with when ``ema_beta`` is asked for (None = its own):
    dga the given one (default DEFAULT_EMA_BETA), dga-noema 0, doge and the static mixers none.
    A value the mixer would ignore is a ValueError, never silently replaced."""
    if name == "dga":
        return DEFAULT_EMA_BETA if ema_beta is None else ema_beta
    if name == "dga-noema":
        if ema_beta not in (None, 0.0):
            raise ValueError(f"dga-noema is dga with ema_beta = 0; got ema_beta = {ema_beta}")
        return 0.0
    if ema_beta is not None:
        raise ValueError(f"{name} has no EMA; got ema_beta = {ema_beta}")
    return None


def make_mixer(name: str, n: int, *, init: np.ndarray | None = None,
               config: DGAConfig | None = None) -> Mixer:
    """Build a mixer by name over a simplex of size n.

    uniform: 1/n (init ignored). natural: init = cluster sizes (required). is: init = the
    static importance-sampling weights (required). dga / dga-noema / doge: init = starting
    weights (uniform when None); dga-noema is DGA with ema_beta = 0 (config.ema_beta None or 0);
    doge has no EMA (config.ema_beta None). A setting the mixer would not use is an error.
    """
    if name not in MIXER_NAMES:
        raise ValueError(f"unknown mixer {name!r}; valid: {'|'.join(MIXER_NAMES)}")
    if name == "uniform":
        return Static(np.ones(n), name)
    if name in ("natural", "is"):
        if init is None:
            what = "cluster sizes" if name == "natural" else "the importance-sampling weights"
            raise ValueError(f"mixer {name!r} needs init= {what} (shape ({n},))")
        if np.shape(init) != (n,):
            raise ValueError(f"mixer {name!r}: init has shape {np.shape(init)}, expected ({n},)")
        return Static(init, name)
    config = config or DGAConfig()
    config = replace(config, ema_beta=mixer_ema_beta(name, config.ema_beta))
    if name in ("dga", "dga-noema"):
        return DGA(n, config, init, name=name)
    return DoGE(n, config, init, name="doge")

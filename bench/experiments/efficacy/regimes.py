"""What the experiment measures: the regimes, their mixers, the ablations, and the names of the
workspace's inputs they train on."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "bench" / "experiments" / "results"
MINIPILE = ROOT.parent / "shared" / "data" / "minipile"

CLUSTERS = "k64-64"
REGIMES = {  # basis: what DGA reweights (None = the k domains; "group" = one basis per target group)
    "a": {"level": 1, "target": "mmlu", "basis": None, "tpd": None, "mixers": ("uniform", "is", "dga")},
    "b": {"level": 1, "target": "mmlu", "basis": None, "tpd": "auto", "mixers": ("uniform", "is", "dga", "dga-noema")},
    "c": {"level": 2, "target": "mmlu", "basis": "group", "tpd": None, "mixers": ("uniform", "is", "dga")},
    "c-few": {"level": 2, "target": "mmlu64", "basis": "group", "tpd": None, "mixers": ("uniform", "is", "dga")},
    "c-budget": {"level": 2, "target": "mmlu", "basis": "group", "tpd": "auto", "mixers": ("uniform", "is", "dga")},
    "c-temper": {"level": 2, "target": "mmlu", "basis": "single", "temper": "0,1,2", "tpd": None,
                 "mixers": ("uniform", "is", "is-t1", "is-t2", "dga")},
}
# A mixer "is-tG" is importance sampling from the target's histogram tempered by gamma = G (`--temper G`):
# `dgamix train --mixer is` on that basis. It is the static control for DGA over tempered bases.
STATIC_TEMPERED = "is-t"
COLOURS = {"uniform": "tab:gray", "is": "tab:blue", "dga": "tab:red", "dga-noema": "tab:orange",
           "static": "tab:green", "dga-shrink": "tab:brown",
           "is-t1": "tab:cyan", "is-t2": "tab:purple"}
TARGETS = {"mmlu64": "mmlu"}  # target name -> file in --targets (default: the same name)
# Regime b: the budget T is set from IS's histogram alpha so that total * sum(alpha^2) / T = MIN_IS_EPOCHS
# passes; measured, IS then re-reads its documents ~0.7x that often (draw-weighted mean), so 14 gives >= 10.
MIN_IS_EPOCHS = 14
# Ablations (regime a unless noted), one seed each: (label, regime, overrides of the DGA options).
ABLATIONS = [
    ("default", "a", {}),
    ("standardise eta 1", "a", {"eta": 1.0}), ("standardise eta 3", "a", {"eta": 3.0}),
    ("raw dot, eta 0.3", "a", {"normalise": "none"}),
    ("cosine, eta 4", "a", {"normalise": "cosine", "eta": 4.0}),
    ("mean_norm, eta 4", "a", {"normalise": "mean_norm", "eta": 4.0}),
    ("beta 0", "a", {"ema_beta": 0.0}), ("beta 0.5", "a", {"ema_beta": 0.5}), ("beta 0.9", "a", {"ema_beta": 0.9}),
    ("T_r 50", "a", {"reweight_every": 50}),
    ("clip 1", "a", {"clip": 1.0}),
    ("default", "b", {}), ("beta 0", "b", {"ema_beta": 0.0}),
    ("budget x0.25", "b", {"tpd_factor": 0.25}), ("budget x4", "b", {"tpd_factor": 4.0}),
    ("default", "c", {}), ("basis kmeans:8", "c", {"basis_by": "kmeans:8"}),
    ("basis group, no generic", "c", {"generic": "none"}),
    ("default", "c-temper", {}), ("eta 0 (frozen start)", "c-temper", {"eta": 0.0}),
    ("eta 0.1", "c-temper", {"eta": 0.1}), ("eta 1", "c-temper", {"eta": 1.0}),
    ("beta 0.5", "c-temper", {"ema_beta": 0.5}), ("beta 0.9", "c-temper", {"ema_beta": 0.9}),
]


def basis_name(regime: dict, by: str, generic: str, temper: str = "0") -> str:
    return f"{regime['target']}-l{regime['level']}-{by.replace(':', '')}-{generic}" + \
        ("" if temper == "0" else "-t" + temper.replace(",", "_"))


def regime_of(args, name: str) -> dict:
    """REGIMES[name] with --target, if given, in place of its own target."""
    return dict(REGIMES[name], target=args.target or REGIMES[name]["target"])


def train_mixer(mixer: str) -> str:
    """The `dgamix train --mixer` of a bench mixer label ("is-t1" is `--mixer is` on a tempered basis)."""
    return "is" if mixer.startswith(STATIC_TEMPERED) else mixer

"""`dgamix train`'s options as this experiment sets them. Their defaults are read from TrainConfig and
DGAConfig, the one home of the trainer's and DGA's defaults (cli/train.py reads them the same way);
BENCH holds only the settings this experiment chooses differently. The same TrainConfig trains a
run (config_of) and is printed as the equivalent `dgamix train` command (cli_line)."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import get_args, get_type_hints

from dgamix.mixing.dga import DEFAULT_EMA_BETA, NORMALISE_MODES, DGAConfig
from dgamix.mixing.testbed.config import TrainConfig

from .regimes import CLUSTERS, train_mixer

# The options this experiment exposes, by TrainConfig / DGAConfig field name, in the order of --help.
TRAIN_OPTIONS = ("steps", "batch_size", "context", "vocab_size", "lr", "warmup")
DGA_OPTIONS = ("reweight_every", "reweight_start", "eta", "ema_beta", "normalise", "clip", "init", "align_params")
PROBE_EVAL_OPTIONS = ("align_batch_size", "target_batch_size", "eval_every", "eval_batches", "threads")

# Where this experiment's runs differ from `dgamix train`'s defaults: the settings its results
# (bench/experiments/results/, the README's tables) were measured with.
BENCH = {
    "align_batch_size": 8,  # windows per basis / domain probe: a reweighting over regime c's 58 bases reads 58 x 8
    "eval_every": 50,
    "eval_batches": 4,  # x 32 windows per evaluation split
    "threads": 1,  # one torch thread per run: --jobs runs share the cores
    "checkpoint_every": 0,  # runs are trained whole, never resumed: no intermediate checkpoints
    "ema_beta": DEFAULT_EMA_BETA,  # dga's own EMA weight (DGAConfig's None), as a number the command shows
}
_TYPES = {"clip": float, "align_params": str}  # the options whose dataclass default is None
_CHOICES = {"normalise": NORMALISE_MODES, "init": get_args(get_type_hints(DGAConfig)["init"])}
_HELP = {"align_params": "align on the parameters matching this regex only",
         "eval_batches": "x 32 windows per evaluation split",
         "threads": "torch threads per run (1 is fastest on 2 busy cores)"}


def default(name: str):
    """This experiment's default for the TrainConfig / DGAConfig field ``name``."""
    if name in BENCH:
        return BENCH[name]
    return getattr(DGAConfig(), name) if name in DGA_OPTIONS else getattr(TrainConfig(), name)


def add_options(ap: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """One --option per field name, with this experiment's default."""
    for name in names:
        d = default(name)
        kw = {"default": d, "type": _TYPES.get(name, type(d))}
        if name in _CHOICES:
            kw["choices"] = _CHOICES[name]
        if name in _HELP:
            kw["help"] = _HELP[name]
        ap.add_argument("--" + name.replace("_", "-"), **kw)


def dga_options(args, over: dict) -> dict:
    """DGA's settings of a run: the command line's, with an ablation's overrides."""
    o = {k: getattr(args, k) for k in DGA_OPTIONS}
    o.update({k: v for k, v in over.items() if k in o})
    return o


def config_of(args, seed: int, mixer: str, tpd: int | None, over: dict) -> TrainConfig:
    """The TrainConfig of one run."""
    # the static mixers ignore DGA's settings: they record the defaults, so --reuse finds them across DGA settings
    o = dga_options(args, over) if mixer.startswith("dga") else asdict(DGAConfig())
    dga = DGAConfig(**{**{k: o[k] for k in DGA_OPTIONS}, "ema_beta": o["ema_beta"] if mixer == "dga" else None})
    return TrainConfig(**{k: getattr(args, k) for k in TRAIN_OPTIONS + PROBE_EVAL_OPTIONS}, dga=dga,
                       checkpoint_every=BENCH["checkpoint_every"], tokens_per_domain=tpd, seed=seed)


def _flag(name: str, value) -> str:
    return f"--{name.replace('_', '-')} {value}"


def cli_line(args, job: dict) -> str:
    """The `dgamix train` command that trains ``job`` as run_one does (recorded with each result)."""
    r, mixer = job["regime"], job["mixer"]
    cfg = config_of(args, job["seed"], mixer, job["tpd"], job["over"])
    parts = [f"dgamix train --workspace {args.workspace} --clusters {CLUSTERS} --level {r['level']}",
             f"--target {r['target']} --mixer {train_mixer(mixer)}" + (f" --basis {job['basis']}" if job["basis"] else "")]
    parts += [_flag(k, getattr(cfg, k)) for k in ("steps", "batch_size", "lr", "warmup", "context", "vocab_size")]
    if cfg.tokens_per_domain:
        parts.append(_flag("tokens_per_domain", cfg.tokens_per_domain))
    parts += [_flag(k, getattr(cfg, k)) for k in ("eval_every", "eval_batches", "checkpoint_every")]
    if mixer.startswith("dga"):  # the other mixers take no DGA option
        d = cfg.dga
        parts += [_flag(k, getattr(d, k)) for k in ("reweight_every", "reweight_start", "eta")]
        if d.ema_beta is not None:
            parts.append(_flag("ema_beta", d.ema_beta))
        parts.append(_flag("normalise", d.normalise))
        if d.clip:
            parts.append(_flag("clip", d.clip))
        if d.init != DGAConfig().init:
            parts.append(_flag("init", d.init))
        if d.align_params:
            parts.append(f"--align-params '{d.align_params}'")
        parts += [_flag(k, getattr(cfg, k)) for k in ("align_batch_size", "target_batch_size")]
    parts.append(f"--seed {cfg.seed} --threads {cfg.threads} --overwrite --quiet --name {job['name']}")
    return " ".join(parts)

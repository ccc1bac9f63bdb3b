"""The runs: one job per (regime, mixer, seed, setting), trained in this process or in a pool of
processes, or, with --reuse, read from a finished run of the workspace trained with the same settings."""
from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from .params import cli_line, config_of, default
from .regimes import CLUSTERS, STATIC_TEMPERED, basis_name, regime_of, train_mixer
from .stats import movement
from .workspace import ensure_basis, is_budget


def make_jobs(args, regime_name: str, mixers: list[str], seeds: list[int], log: list[str], label: str = "",
              over: dict | None = None) -> list[dict]:
    """The jobs of one regime (building the bases they need); ``over``: an ablation's overrides."""
    over = over or {}
    regime = regime_of(args, regime_name)
    is_basis = basis_name(regime, "single", "none")
    ensure_basis(args, regime, is_basis, "single", "none", log)
    basis = None
    if regime["basis"]:
        by, generic = over.get("basis_by", args.basis_by or regime["basis"]), over.get("generic", "natural")
        temper = over.get("temper", args.temper or regime.get("temper", "0"))
        basis = basis_name(regime, by, generic, temper)
        ensure_basis(args, regime, basis, by, generic, log, temper)
    static = {}  # is-tG -> its tempered histogram
    for m in mixers:
        if m.startswith(STATIC_TEMPERED):
            gamma = m[len(STATIC_TEMPERED):]
            static[m] = basis_name(regime, "single", "none", gamma)
            ensure_basis(args, regime, static[m], "single", "none", log, gamma)
    tpd = max(1, int(is_budget(args, regime) * over.get("tpd_factor", 1.0))) if regime["tpd"] == "auto" else None
    if args.tokens_per_domain:
        tpd = args.tokens_per_domain
    probes = (default("align_batch_size"), default("target_batch_size"))
    jobs = []
    for s in seeds:
        for m in mixers:
            name = f"{args.tag}-{regime_name}" + (f"-{args.target}" if args.target else "") + f"-{m}-s{s}" \
                + (f"-{label.replace(' ', '').replace(',', '').replace(':', '')}" if label else "")
            if m.startswith("dga") and args.init != "uniform":  # keep runs of both starts side by side
                name += f"-init{args.init}"
            if m.startswith("dga") and args.align_params:  # and runs aligning on a parameter subset
                name += "-subset"
            if m.startswith("dga") and args.basis_by:  # and other basis builders (they overwrote the default's)
                name += "-" + args.basis_by.replace(":", "")
            if m.startswith("dga") and args.temper and regime["basis"]:
                name += "-t" + args.temper.replace(",", "_")
            if m.startswith("dga") and (args.align_batch_size, args.target_batch_size) != probes:
                name += f"-ab{args.align_batch_size}-tb{args.target_batch_size}"
            jobs.append({"args": args, "regime": regime, "regime_name": regime_name, "mixer": m, "seed": s,
                         "basis": is_basis if m == "is" else static.get(m, basis if m.startswith("dga") else None),
                         "tpd": tpd, "over": over, "label": label or m, "name": name[:100]})
    return jobs


def run_jobs(args, jobs: list[dict]) -> list[dict]:
    if args.jobs > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            return list(pool.map(run_one, jobs))
    return [run_one(j) for j in jobs]


def strip(r: dict) -> dict:
    """A run's result without its args (the JSON records them once)."""
    return {k: v for k, v in r.items() if k != "args"}


def resolve_ema_beta(mixer_name: str, config):
    """``config`` (a TrainConfig) with the EMA weight the mixer really uses (``inputs.resolve_config``),
    as `dgamix train` records it."""
    from dgamix.mixing.inputs import resolve_config

    return replace(config, dga=resolve_config(mixer_name, config.dga))


def expected_params(args, job: dict) -> dict:
    """The parameters a finished run of ``job`` records in its manifests (run.py: recorded_params)."""
    from dgamix.mixing.testbed.train import recorded_params

    r = job["regime"]
    cfg = resolve_ema_beta(job["mixer"], config_of(args, job["seed"], job["mixer"], job["tpd"], job["over"]))
    return {"clusters": CLUSTERS, "level": r["level"], "target": r["target"], "mixer": train_mixer(job["mixer"]),
            "basis": job["basis"], **recorded_params(cfg)}


def finished_run(args, job: dict) -> Path | None:
    """A run of the workspace that already trained exactly ``job`` (same settings, seed, inputs'
    names), so --reuse can read it instead of training again; None if there is none."""
    from dgamix.pipeline.core import manifest

    want = expected_params(args, job)
    runs = args.workspace / "runs"
    for run in sorted(runs.iterdir()) if runs.is_dir() else []:
        files = [run / f for f in ("metrics.parquet", "weights.parquet", "repetitions.parquet")]
        if not all(f.exists() for f in files):
            continue
        try:
            got = manifest.read_meta(files[0], "run-metrics")["params"]
        except Exception:  # noqa: BLE001 - unreadable: not reusable
            continue
        # a static mixer's manifests record its own name as "init" (run.py: write_outputs)
        if all(got.get(k) == v for k, v in want.items() if not (k == "init" and not job["mixer"].startswith("dga"))):
            return run
    return None


def run_one(job: dict) -> dict:
    """Train one (regime, mixer, seed, setting) in this process (or, with --reuse, read a finished run
    with the same settings); returns curves, final losses, movement."""
    args = job["args"]
    import polars as pl

    from dgamix.mixing.testbed.train import train_run

    r, mixer, name = job["regime"], job["mixer"], job["name"]
    t0 = time.perf_counter()
    run = finished_run(args, job) if args.reuse else None
    if run is None:
        summary = train_run(args.workspace, CLUSTERS, r["level"], r["target"], train_mixer(mixer), job["basis"],
                            config_of(args, job["seed"], mixer, job["tpd"], job["over"]), name, overwrite=True,
                            quiet=True)
        run = args.workspace / "runs" / name
        seconds = time.perf_counter() - t0
    else:
        name = run.name
        summary = {"seconds_per_step": None, "seconds_per_reweighting": None}
        seconds = float("nan")
        print(f"  (reusing {run.name}: same settings)", flush=True)
    m = pl.read_parquet(run / "metrics.parquet")
    curves = {split: m.filter(pl.col("split") == split).sort("step").select("step", "loss").to_dict(as_series=False)
              for split in ("target", "general", "train")}
    reps = pl.read_parquet(run / "repetitions.parquet")
    draws, n_docs, epochs = reps["draws"].to_numpy(), reps["n_docs"].to_numpy(), reps["epochs"].to_numpy()
    repeated = np.maximum(draws - n_docs, 0).sum() / max(1, draws.sum())   # share of draws that re-read a doc
    mean_epochs = float((draws / np.maximum(n_docs, 1) * draws).sum() / max(1, draws.sum()))  # per drawn doc
    w = pl.read_parquet(run / "weights.parquet")
    traj = None
    if mixer.startswith("dga"):
        steps = sorted(set(w["step"].to_list()))
        entry = pl.coalesce("basis", "domain")  # what the weights are over: bases, or domains
        W = [w.filter(pl.col("step") == s).sort(entry)["weight"].to_list() for s in steps]
        names = w.filter(pl.col("step") == steps[0]).sort(entry)["name"].to_list()
        traj = {"steps": steps, "names": names, "weights": W, **movement(W)}
    tgt = curves["target"]["loss"]
    out = {"label": job["label"], "regime": job["regime_name"], "mixer": mixer, "seed": job["seed"], "run": name,
           "command": cli_line(args, job), "tokens_per_domain": job["tpd"],
           "final_target": tgt[-1], "final_general": curves["general"]["loss"][-1],
           "best_target": float(min(tgt)), "max_epochs": int(epochs.max()), "mean_epochs": mean_epochs,
           "repeated_draw_share": float(repeated), "domains_drawn": int((draws > 0).sum()), "seconds": seconds,
           "seconds_per_step": summary["seconds_per_step"], "seconds_per_reweighting": summary["seconds_per_reweighting"],
           "curves": curves, "weights": traj}
    mv = f"  TV {traj['tv_total']:.3f} (max step {traj['tv_max_step']:.3f})" if traj else ""
    print(f"  {name:<34} target {out['final_target']:.4f}  general {out['final_general']:.4f}  "
          f"epochs max {out['max_epochs']:>3} mean {mean_epochs:5.1f}{mv}  {seconds:5.0f} s", flush=True)
    return out

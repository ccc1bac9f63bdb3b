"""Efficacy of DGA on the mini-Pile, in the paper's three regimes, and its ablations (not a test).

The mini-Pile (../shared/data/minipile: 72,584 real documents from 25 sources in 14 domains; see
its README) is embedded and clustered into 64 domains (level 1) and 64 x 64 = 4,096 domains
(level 2). The target is MMLU: 20% of every subject's questions are in the pool, so the target
is present but rare (1.9% of the words). The reference LM (mixing/testbed/model.py) trains on packed
windows (mixing/testbed/tokens.py), from the same seeds for every mixer:

    regime a   unlimited data, domain reweighting over the k = 64 domains:
               uniform | is (the target's histogram) | dga (DGA over the 64 domains)
    regime b   the same with --tokens-per-domain (IS must repeat its domains >= 10 times):
               uniform | is | dga | dga-noema
    regime c   fine-grained: 4,096 domains, distribution reweighting with one basis per MMLU
               subject + one generic basis (natural cluster sizes), N = 58:
               uniform | is (histogram over the 4,096 domains) | dga (over the 58 bases)
    regime c-few  as c with only 64 target examples to reweight with (IS sees <= 64 domains)
    regime c-budget  as c with --tokens-per-domain set as in b (aimed at IS re-reading its domains
               >= 10 times): the paper's fine-grained experiment under a limited token budget
    regime c-temper  fine-grained, 4,096 domains, with bases of graded sharpness: the target's
               histogram tempered by its density ratio to the corpus at gamma = 0, 1, 2 (`dgamix
               basis --by single --temper 0,1,2`) + one generic basis, N = 4:
               uniform | is | is-t1, is-t2 (static: each tempered histogram alone) | dga

Each regime prints final target loss (MMLU holdout) and general loss (held-out pool documents),
mean +- std over seeds, the paired difference to IS, to uniform and to each static is-tG per
seed, IS's repetitions,
and DGA's weight movement: total variation of the trajectory (sum over updates of
0.5 |w_t - w_t-1|_1), its largest single update, and 0.5 |w_end - w_0|_1. JSON and a plot go to
bench/results/efficacy-<regime>.json / .png.

    python bench/efficacy.py --regime a --jobs 2           # 3 seeds (the headline rows)
    python bench/efficacy.py --regime c --seeds 0 --steps 100   # a quick look
    python bench/efficacy.py --ablate --jobs 2             # Pareto plot: one point per DGA setting
    python bench/efficacy.py --regime a --mixers dga --normalise cosine --eta 2 --tag try   # one setting
    python bench/efficacy.py --persistence 'eff-c-dga-s[0-9]'   # how stable the alignments are

Workspace: ``--workspace`` (default ws/minipile, git-ignored), built on first use with the CLI:
embed (int8, 128 word pieces), cluster --levels 64,64, the targets (mmlu with its subjects as
groups; mmlu64: the same file with 64 reweight examples), the bases. Runs go to
WS/runs/<tag>-<regime>-<mixer>-s<seed>. Without ../shared (a user's clone) the script says so
and exits 0; pass --pool / --targets to use another copy.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MINIPILE = ROOT.parent / "shared" / "data" / "minipile"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the dgamix command sets it: idle FAISS threads sleep
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CLUSTERS = "k64-64"
FEW = 64  # target examples of the few-example variant
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


# --------------------------------------------------------------------------- workspace

def dgamix(*args: str, log: list[str]) -> str:
    """Run one `dgamix` command (python -m dgamix.cli.main); returns stdout; exits on failure."""
    cmd = [sys.executable, "-m", "dgamix.cli.main", *args]
    shown = "dgamix " + " ".join(args)
    print(f"$ {shown}", flush=True)
    log.append(shown)
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {shown}\n{p.stdout}\n{p.stderr}")
    return p.stdout


def exists(path: Path, kind: str) -> bool:
    from dgamix.pipeline.core import manifest

    try:
        meta = manifest.read_meta(path, kind)
        return meta.get("state", "complete") == "complete"
    except Exception:  # noqa: BLE001 - missing or unreadable: the command rebuilds it
        return False


def basis_name(regime: dict, by: str, generic: str, temper: str = "0") -> str:
    return f"{regime['target']}-l{regime['level']}-{by.replace(':', '')}-{generic}" + \
        ("" if temper == "0" else "-t" + temper.replace(",", "_"))


def regime_of(args, name: str) -> dict:
    """REGIMES[name] with --target, if given, in place of its own target."""
    return dict(REGIMES[name], target=args.target or REGIMES[name]["target"])


def train_mixer(mixer: str) -> str:
    """The `dgamix train --mixer` of a bench mixer label ("is-t1" is `--mixer is` on a tempered basis)."""
    return "is" if mixer.startswith(STATIC_TEMPERED) else mixer


def prepare(args, log: list[str]) -> dict:
    """Build (or reuse) the workspace; returns what the runs need (names, budgets)."""
    ws = args.workspace
    t0 = time.perf_counter()
    if not (ws / "embeddings.parquet").exists():
        dgamix("embed", str(args.pool), "--workspace", str(ws), "--keep-columns", "src,domain,label",
               "--max-seq-length", "128", "--precision", "int8", "--quiet", log=log)
    if not exists(ws / "clusters" / CLUSTERS / "tree.parquet", "tree"):
        dgamix("cluster", "--workspace", str(ws), "--levels", "64,64", "--name", CLUSTERS, "--quiet", log=log)
    for name in args.target_names:
        holdout = "0.99426" if name == "mmlu64" else "0.2"  # 11,151 x (1 - 0.99426) = 64 reweight examples
        if not exists(ws / "targets" / name / "examples.parquet", "target"):
            dgamix("target", str(args.targets / f"{TARGETS.get(name, name)}.parquet"), "--workspace", str(ws),
                   "--name", name, "--group-column", "group", "--holdout", holdout, log=log)
    return {"seconds": time.perf_counter() - t0}


def ensure_basis(args, regime: dict, name: str, by: str, generic: str, log: list[str], temper: str = "0") -> None:
    if not (args.workspace / "bases" / f"{name}.parquet").exists():
        dgamix("basis", "--workspace", str(args.workspace), "--clusters", CLUSTERS, "--level", str(regime["level"]),
               "--target", regime["target"], "--by", by, "--generic", generic, "--name", name,
               *(("--temper", temper) if temper != "0" else ()), log=log)


def is_budget(args, regime: dict) -> int:
    """Tokens per domain such that IS, drawing steps x batch x (context + 1) pieces, re-reads the
    domains it samples MIN_IS_EPOCHS times on average: E_alpha[epochs] = total * sum(alpha^2) / T."""
    import polars as pl

    b = pl.read_parquet(args.workspace / "bases" / f"{basis_name(regime, 'single', 'none')}.parquet")
    alpha = b.filter(pl.col("basis") == 0)["weight"].to_numpy()
    total = args.steps * args.batch_size * (args.context + 1)
    return max(1, int(total * float((alpha ** 2).sum()) / MIN_IS_EPOCHS))


# --------------------------------------------------------------------------- runs

def dga_options(args, over: dict) -> dict:
    o = {k: getattr(args, k) for k in ("eta", "ema_beta", "reweight_every", "reweight_start", "normalise", "clip",
                                       "init", "align_params")}
    o.update({k: v for k, v in over.items() if k in o})
    return o


def config_of(args, seed: int, mixer: str, tpd: int | None, over: dict):
    from dgamix.mixing.dga import DGAConfig
    from dgamix.mixing.testbed.trainer import TrainConfig

    # the static mixers ignore DGA's settings: they record the defaults, so --reuse finds them across DGA settings
    o = dga_options(args, over) if mixer.startswith("dga") else asdict(DGAConfig())
    dga = DGAConfig(eta=o["eta"], ema_beta=o["ema_beta"] if mixer == "dga" else None,
                    reweight_every=o["reweight_every"], reweight_start=o["reweight_start"],
                    normalise=o["normalise"], clip=o["clip"], init=o["init"], align_params=o["align_params"])
    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, dga=dga,
                       align_batch_size=args.align_batch_size, target_batch_size=args.target_batch_size,
                       eval_every=args.eval_every, eval_batches=args.eval_batches, checkpoint_every=0,
                       tokens_per_domain=tpd, seed=seed, threads=args.threads, context=args.context,
                       vocab_size=args.vocab_size)


def cli_line(args, job: dict) -> str:
    r, mixer, o = job["regime"], job["mixer"], dga_options(args, job["over"])
    parts = [f"dgamix train --workspace {args.workspace} --clusters {CLUSTERS} --level {r['level']}",
             f"--target {r['target']} --mixer {train_mixer(mixer)}" + (f" --basis {job['basis']}" if job["basis"] else ""),
             f"--steps {args.steps} --batch-size {args.batch_size} --lr {args.lr} --warmup {args.warmup}",
             f"--context {args.context} --vocab-size {args.vocab_size}",
             f"--tokens-per-domain {job['tpd']}" if job["tpd"] else "",
             f"--eval-every {args.eval_every} --eval-batches {args.eval_batches} --checkpoint-every 0"]
    if mixer.startswith("dga"):
        parts.append(f"--reweight-every {o['reweight_every']} --reweight-start {o['reweight_start']} --eta {o['eta']}"
                     + (f" --ema-beta {o['ema_beta']}" if mixer == "dga" and o["ema_beta"] is not None else "")
                     + f" --normalise {o['normalise']}" + (f" --clip {o['clip']}" if o["clip"] else "")
                     + (f" --init {o['init']}" if o["init"] != "uniform" else "")
                     + (f" --align-params '{o['align_params']}'" if o["align_params"] else "")
                     + f" --align-batch-size {args.align_batch_size} --target-batch-size {args.target_batch_size}")
    parts.append(f"--seed {job['seed']} --threads {args.threads} --overwrite --quiet --name {job['name']}")
    return " ".join(p for p in parts if p)


def movement(weights: list[list[float]]) -> dict:
    """Total variation of a weight trajectory (rows = logged steps): sum and max of the
    step-to-step 0.5 |w_t - w_t-1|_1, and 0.5 |w_end - w_0|_1."""
    W = np.asarray(weights, dtype=np.float64)
    steps = 0.5 * np.abs(np.diff(W, axis=0)).sum(axis=1) if len(W) > 1 else np.zeros(1)
    return {"tv_total": float(steps.sum()), "tv_max_step": float(steps.max()),
            "tv_mean_step": float(steps.mean()), "start_to_end": float(0.5 * np.abs(W[-1] - W[0]).sum())}


def expected_params(args, job: dict) -> dict:
    """The parameters a finished run of ``job`` records in its manifests (run.py: recorded_params)."""
    from dgamix.mixing.testbed.run import recorded_params, resolve_ema_beta

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

    from dgamix.mixing.testbed.run import train_run

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


# --------------------------------------------------------------------------- report

def stats(v) -> dict:
    v = [float(x) for x in v]
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "values": v}


def ms(s: dict, sign: bool = False) -> str:
    return f"{s['mean']:+.4f} ± {s['std']:.4f}" if sign else f"{s['mean']:.4f} ± {s['std']:.4f}"


def aggregate(runs: list[dict], mixers: list[str]) -> dict:
    agg = {}
    by = {m: sorted((r for r in runs if r["mixer"] == m), key=lambda r: r["seed"]) for m in mixers}
    statics = tuple(m for m in mixers if m.startswith(STATIC_TEMPERED))
    refs = {ref: {r["seed"]: r for r in by.get(ref, [])} for ref in ("is", "uniform", *statics)}
    for m, rs in by.items():
        if not rs:
            continue
        row = {k: stats([r[k] for r in rs]) for k in ("final_target", "final_general", "best_target", "max_epochs",
                                                       "mean_epochs", "repeated_draw_share", "seconds")}
        for ref, by_seed in refs.items():
            pairs = [(r, by_seed[r["seed"]]) for r in rs if r["seed"] in by_seed and m != ref]
            if pairs:
                row[f"target_minus_{ref}"] = stats([a["final_target"] - b["final_target"] for a, b in pairs])
                row[f"general_minus_{ref}"] = stats([a["final_general"] - b["final_general"] for a, b in pairs])
        if rs[0]["weights"] is not None:
            for k in ("tv_total", "tv_max_step", "tv_mean_step", "start_to_end"):
                row[k] = stats([r["weights"][k] for r in rs])
            row["final_weights"] = dict(zip(rs[0]["weights"]["names"],
                                            np.mean([r["weights"]["weights"][-1] for r in rs], axis=0).tolist()))
        agg[m] = row
    return agg


def table(agg: dict) -> str:
    statics = [m for m in agg if m.startswith(STATIC_TEMPERED)]
    head = ["mixer", "target loss", "general loss", "target − IS", "target − uniform",
            *(f"target − {m}" for m in statics), "epochs (mean / max)", "weight TV (total / max step)"]
    rows = []
    for m, a in agg.items():
        diffs = [a.get(f"target_minus_{ref}") for ref in ("is", "uniform", *statics)]
        rows.append([m, ms(a["final_target"]), ms(a["final_general"]), *("-" if d is None else ms(d, True) for d in diffs),
                     f"{a['mean_epochs']['mean']:.1f} / {a['max_epochs']['mean']:.0f}",
                     f"{a['tv_total']['mean']:.3f} / {a['tv_max_step']['mean']:.3f}" if "tv_total" in a else "-"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plot(runs: list[dict], mixers: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dga_runs = [r for r in runs if r["mixer"] == "dga" and r["weights"]]
    fig, axes = plt.subplots(1, 3 if dga_runs else 2, figsize=(15 if dga_runs else 10, 4.2))
    for ax, split, label in ((axes[0], "target", "target loss (target holdout examples)"),
                             (axes[1], "general", "general loss (held-out pool documents)")):
        for m in mixers:
            rs = [r for r in runs if r["mixer"] == m]
            if not rs:
                continue
            steps = np.asarray(rs[0]["curves"][split]["step"])
            ys = np.asarray([r["curves"][split]["loss"] for r in rs])
            mean, std = ys.mean(0), ys.std(0)
            line, = ax.plot(steps, mean, label=f"{m} (n={len(rs)})", color=COLOURS.get(m), lw=1.8)
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
        late = [v for r in runs for s, v in zip(r["curves"][split]["step"], r["curves"][split]["loss"])
                if s >= r["curves"][split]["step"][-1] // 3]
        if late:
            ax.set_ylim(min(late) - 0.05, max(late) + 0.1)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats / word piece)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if dga_runs:
        ax = axes[2]
        steps = dga_runs[0]["weights"]["steps"]
        W = np.mean([r["weights"]["weights"] for r in dga_runs], axis=0)   # (steps, N)
        top = np.argsort(-W.max(axis=0))[:8]
        names = dga_runs[0]["weights"]["names"]
        for j in top:
            ax.step(steps, W[:, j], where="post", label=str(names[j])[:24], lw=1.5)
        if W.shape[1] > 8:
            ax.step(steps, W[:, [j for j in range(W.shape[1]) if j not in set(top)]].sum(axis=1), where="post",
                    color="k", ls=":", label="all others")
        ax.set_xlabel("step")
        ax.set_ylabel("weight")
        ax.set_title(f"dga weights, {'top 8 of ' if W.shape[1] > 8 else 'all '}{W.shape[1]} (mean over seeds)",
                     fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def pareto(runs: list[dict], refs: dict, path: Path, title: str) -> None:
    """Target loss vs general loss, one point per setting; the static mixers of the same regime as references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(refs), figsize=(6.5 * len(refs), 5), squeeze=False)
    for ax, (regime, ref_runs) in zip(axes[0], refs.items()):
        for r in ref_runs:
            ax.scatter(r["final_general"], r["final_target"], marker="s", s=60, zorder=3,
                       color="k" if r["mixer"] == "uniform" else COLOURS.get(r["mixer"], "tab:blue"))
            ax.annotate(r["mixer"], (r["final_general"], r["final_target"]), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
        for r in (r for r in runs if r["regime"] == regime):
            ax.scatter(r["final_general"], r["final_target"], color="tab:red", s=30, zorder=2)
            ax.annotate(r["label"], (r["final_general"], r["final_target"]), fontsize=7, xytext=(3, -8),
                        textcoords="offset points")
        ax.set_xlabel("general loss (held-out pool documents)")
        ax.set_ylabel("target loss (target holdout examples)")
        ax.set_title(f"regime {regime}: lower-left is better", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------- main

def make_jobs(args, regime_name: str, mixers: list[str], seeds: list[int], log: list[str], label: str = "",
              over: dict | None = None) -> list[dict]:
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
            if m.startswith("dga") and (args.align_batch_size, args.target_batch_size) != (8, 16):
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
    return {k: v for k, v in r.items() if k != "args"}


def alignment_persistence(run: Path) -> list[float]:
    """Spearman rank correlation between the alignments of each DGA update and the next one's
    (weights.parquet): near 1, every update sees the same ranking of bases/domains; near 0, the
    alignments are mostly noise of the probe batches and the mirror step takes a random walk."""
    import polars as pl
    from scipy.stats import spearmanr

    w = pl.read_parquet(run / "weights.parquet").filter(pl.col("alignment").is_not_null())
    entry = pl.coalesce("basis", "domain")
    a = [w.filter(pl.col("step") == s).sort(entry)["alignment"].to_numpy() for s in sorted(w["step"].unique())]
    return [float(spearmanr(x, y)[0]) for x, y in zip(a, a[1:])]


def persistence_report(workspace: Path, patterns: list[str]) -> dict:
    """Print and return alignment_persistence of the runs matching each glob pattern in WS/runs/."""
    out = {}
    for pat in patterns:
        runs = sorted(p for p in (workspace / "runs").glob(pat) if (p / "weights.parquet").exists())
        per = {r.name: alignment_persistence(r) for r in runs}
        pairs = [x for v in per.values() for x in v]
        out[pat] = {"runs": {k: round(float(np.mean(v)), 3) if v else None for k, v in per.items()},
                    "pairs": len(pairs), "mean": round(float(np.mean(pairs)), 3) if pairs else None}
        print(f"{pat}: {out[pat]['mean']} over {len(pairs)} pairs of consecutive updates ({len(runs)} runs: "
              + ", ".join(f"{k} {v}" for k, v in out[pat]["runs"].items()) + ")")
    return out


def source_share(workspace: Path, basis: str, src: str) -> dict:
    """Per basis row: the share of the documents it draws (domain c ~ row, then a document uniform in c)
    whose pool ``src`` column is ``src``, e.g. the pool's own MMLU questions. A diagnosis with the
    pool's labels, which no mixer sees; approximate, as it counts the documents the trainer holds
    out for the general loss too."""
    import polars as pl

    from dgamix.pipeline.core import manifest

    path = workspace / "bases" / f"{basis}.parquet"
    if not path.exists():
        sys.exit(f"no basis {path}")
    docs = pl.read_parquet(workspace / "docs.parquet", columns=["doc_id", "src", "dup_of"]).filter(
        pl.col("dup_of").is_null())
    b = pl.read_parquet(path)
    params = manifest.read_meta(path, "basis")["params"]
    lv = params["level"]
    a = pl.read_parquet(workspace / "clusters" / params["clusters"] / "assignments" / "*.parquet",
                        columns=["doc_id", f"level_{lv}"])
    per = a.join(docs, on="doc_id").group_by(f"level_{lv}").agg(n=pl.len(), hit=(pl.col("src") == src).sum())
    share = (b.join(per.rename({f"level_{lv}": "domain"}), on="domain", how="left").fill_null(0)
             .group_by("basis", "name", maintain_order=True)
             .agg((pl.col("weight") * pl.col("hit") / pl.col("n").clip(1)).sum().alias("share")))
    out = dict(zip(share["name"].to_list(), share["share"].to_list()))
    for name, v in out.items():
        print(f"{basis}: {name}: {v:.1%} of the drawn documents have src = {src}")
    return out


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regime", choices=sorted(REGIMES), default="a")
    ap.add_argument("--quick", action="store_true", help="regime a, seed 0, 60 steps, into efficacy-quick.json")
    ap.add_argument("--ablate", action="store_true", help="run the ABLATIONS list (1 seed) and draw the Pareto plot")
    ap.add_argument("--only", default="", help="with --ablate: comma-separated labels to run")
    ap.add_argument("--workspace", type=Path, default=ROOT / "ws" / "minipile")
    ap.add_argument("--pool", type=Path, default=MINIPILE / "pool.parquet")
    ap.add_argument("--targets", type=Path, default=MINIPILE / "targets")
    ap.add_argument("--mixers", default="", help="default: the regime's mixers")
    ap.add_argument("--basis-by", default="", help="regimes c / c-few: another basis builder for DGA (e.g. kmeans:8)")
    ap.add_argument("--temper", default="", help="regimes c*: DGA's bases tempered by these exponents (`dgamix basis "
                                                 "--temper`, e.g. 0,1,2; default: the regime's)")
    ap.add_argument("--target", default="", help="another target of --targets (default: the regime's, mmlu)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--tokens-per-domain", type=int, default=0, help="override the regime's budget (0 = regime's)")
    from dgamix.mixing.dga import DEFAULT_EMA_BETA, NORMALISE_MODES, DGAConfig

    d = DGAConfig()
    ap.add_argument("--reweight-every", type=int, default=d.reweight_every)
    ap.add_argument("--reweight-start", type=int, default=d.reweight_start)
    ap.add_argument("--eta", type=float, default=d.eta)
    ap.add_argument("--ema-beta", type=float, default=DEFAULT_EMA_BETA)
    ap.add_argument("--normalise", default=d.normalise, choices=NORMALISE_MODES)
    ap.add_argument("--clip", type=float, default=None)
    ap.add_argument("--init", default=d.init, choices=("uniform", "target"))
    ap.add_argument("--align-params", default=None, help="align on the parameters matching this regex only")
    ap.add_argument("--align-batch-size", type=int, default=8)
    ap.add_argument("--target-batch-size", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-batches", type=int, default=4, help="x 32 windows per evaluation split")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1 is fastest on 2 busy cores)")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    ap.add_argument("--tag", default="eff", help="run-name prefix in WS/runs/")
    ap.add_argument("--reuse", action="store_true", help="read a finished run of WS/runs/ trained with the same "
                                                         "settings instead of training it again")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/efficacy-<regime>.json)")
    ap.add_argument("--persistence", nargs="+", default=None, metavar="GLOB",
                    help="only report alignment_persistence of the finished runs WS/runs/GLOB (no training)")
    ap.add_argument("--source-share", default=None, metavar="BASIS",
                    help="only report, per row of WS/bases/BASIS, the share of drawn documents whose pool src is "
                         "--source (no training)")
    ap.add_argument("--source", default="mmlu", help="with --source-share: the pool src value to count")
    args = ap.parse_args(argv)
    if args.source_share:
        return source_share(args.workspace.resolve(), args.source_share, args.source)
    if args.persistence:
        return persistence_report(args.workspace.resolve(), args.persistence)
    if args.quick:
        args.regime, args.seeds, args.steps, args.eval_every = "a", "0", 60, 20
        args.tag = "quick" if args.tag == "eff" else args.tag  # not over the 300-step runs of the same names
        args.out = args.out or ROOT / "bench" / "results" / "efficacy-quick.json"
    if not args.pool.exists() and not (args.workspace / "embeddings.parquet").exists():
        print(f"skipped: the mini-Pile is not here ({args.pool}); it lives in ../shared/data/minipile, which a "
              f"user's clone has no copy of. Pass --pool and --targets to use another copy.")
        return None
    args.workspace = args.workspace.resolve()
    args.target_names = [args.target] if args.target else sorted({r["target"] for r in REGIMES.values()})
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    t0 = time.perf_counter()
    log: list[str] = []
    prep = prepare(args, log)
    stem = "efficacy-ablations" if args.ablate else f"efficacy-{args.regime}" + (f"-{args.target}" if args.target else "")
    out = args.out or ROOT / "bench" / "results" / f"{stem}.json"
    png = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    res = {"command": "python bench/efficacy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "loadavg": [round(x, 2) for x in os.getloadavg()]},
           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "workspace": prep}
    if args.ablate:
        only = {s.strip() for s in args.only.split(",") if s.strip()}
        chosen = [a for a in ABLATIONS if not only or a[0] in only]
        jobs = [j for label, regime, over in chosen
                for j in make_jobs(args, regime, ["dga"], seeds[:1], log, label, over)]
        regimes = sorted({j["regime_name"] for j in jobs})
        ref_jobs = [j for rg in regimes for j in make_jobs(args, rg, [m for m in REGIMES[rg]["mixers"]
                                                                      if not m.startswith("dga")], seeds[:1], log)]
        runs = run_jobs(args, ref_jobs + jobs)
        refs = {rg: [r for r in runs[:len(ref_jobs)] if r["regime"] == rg] for rg in regimes}
        runs = runs[len(ref_jobs):]
        pareto(runs, refs, png, f"DGA ablations, seed {seeds[0]}, {args.steps} steps x {args.batch_size} windows "
                                f"of {args.context + 1}; one point per setting (defaults: eta {args.eta}, "
                                f"beta {args.ema_beta}, T_r {args.reweight_every}, normalise {args.normalise})")
        print("\n| setting | regime | target loss | general loss | weight TV (total / max step) |\n|---|---|---|---|---|")
        for rg, rs in refs.items():
            for r in rs:
                print(f"| {r['mixer']} (reference) | {rg} | {r['final_target']:.4f} | {r['final_general']:.4f} | - |")
        for r in runs:
            w = r["weights"]
            print(f"| {r['label']} | {r['regime']} | {r['final_target']:.4f} | {r['final_general']:.4f} | "
                  f"{w['tv_total']:.3f} / {w['tv_max_step']:.3f} |")
        res.update(runs=[strip(r) for r in runs], references={k: [strip(r) for r in v] for k, v in refs.items()})
    else:
        regime = regime_of(args, args.regime)
        mixers = [m.strip() for m in args.mixers.split(",") if m.strip()] or list(regime["mixers"])
        jobs = make_jobs(args, args.regime, mixers, seeds, log)
        print(f"\nregime {args.regime}: {len(jobs)} runs ({', '.join(mixers)} x seeds {seeds}); {args.steps} steps x "
              f"{args.batch_size} windows of {args.context + 1}; tokens per domain {jobs[0]['tpd'] or 'all'}; "
              f"{CLUSTERS} level {regime['level']}; target {regime['target']}", flush=True)
        runs = run_jobs(args, jobs)
        agg = aggregate(runs, mixers)
        print()
        print(table(agg))
        plot(runs, mixers, png, f"regime {args.regime}: target {regime['target']}, {CLUSTERS} level {regime['level']}, "
                                f"{jobs[0]['tpd'] or 'all'} tokens/domain, {args.steps} steps, seeds {seeds}; dga: "
                                f"eta {args.eta}, beta {args.ema_beta}, T_r {args.reweight_every}, {args.normalise}")
        res.update(aggregate=agg, table=table(agg), runs=[strip(r) for r in runs])
    res.update(stage_commands=log, seconds=time.perf_counter() - t0,
               plot=str(png.relative_to(ROOT)) if png.is_relative_to(ROOT) else str(png))
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {out} and {png} in {res['seconds']:.0f} s")
    return res


if __name__ == "__main__":
    main()

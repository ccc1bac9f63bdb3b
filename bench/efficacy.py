"""Efficacy of DGA in the limited-data regime (not a test).

The paper's limited-data experiment (Fan, Grangier & Ablin 2024, Sec. 5) at CPU scale on the
default data: the generic corpus (data/wiki_vital_en.parquet) is clustered into k domains, and
every domain is capped to ``--tokens-per-domain`` tokens, so that importance sampling, which
puts all its mass on the few domains where the target lands, must repeat them for many epochs.
Four mixers train the reference LM (mixing/model.py, 1.3M parameters) from the same seeds:

    uniform     uniform over the populated domains
    is          static importance sampling: the target's histogram over the domains (CRISP)
    dga         distribution reweighting over N bases (default: kmeans:8 groups of the target
                + the generic natural distribution, N = 9), EMA beta = --ema-beta
    dga-noema   the same with beta = 0

and the script prints the final specialised loss (target holdout) and general loss (held-out
corpus documents), mean +- std over seeds, with the best target loss seen during training,
the paired difference to IS per seed, and the repetitions; JSON in
bench/results/efficacy.json, the loss curves (mean over seeds per mixer) and the mean DGA
weight trajectory in bench/results/efficacy.png.

    python bench/efficacy.py                  # default: 4 mixers x 3 seeds (~15 min on 2 busy cores)
    python bench/efficacy.py --quick          # 1 seed, 60 steps (< 2 min once the workspace exists)
    python bench/efficacy.py --mixers dga --eta 1 --normalise cosine --out /tmp/x.json   # ablations

Workspace. ``--workspace`` (default ws/efficacy, git-ignored) is built on first use with the
CLI, each stage skipped when its output exists: embed (int8, max 128 word pieces: ~2.5 min
for the 10k documents on an idle core, ~10 min at fp32), cluster --levels 16,16, target,
basis. Runs are written to WS/runs/<tag>-<mixer>-s<seed> (replaced on every invocation).

Findings (2 busy CPU cores, target gsm8k, k16-16 level 2 = 256 domains, 300 steps x 16
sequences, tokens-per-domain 1,000 ~ 10 documents a domain): see FINDINGS below, which the
script also stores in the JSON; the numbers are in bench/results/efficacy.json.
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the dgamix command sets it: idle FAISS threads sleep
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TARGET_FILES = {"gsm8k": "gsm8k.parquet", "recipes": "wikibooks_recipes.parquet",
                "python_docs": "python_docs.parquet", "bigbench": "bigbench_mix.parquet"}
MIXERS = ("uniform", "is", "dga", "dga-noema")
FINDINGS = """\
Measured 2026-11-23 on 2 shared CPU cores (python bench/efficacy.py --jobs 2; 3 seeds, 300 steps x 16,
gsm8k on k16-16 level 2, 1,000 tokens per domain; bench/results/efficacy.json):
- Under the cap, uniform is best on the target (5.534 +- 0.029) and on general text; IS repeats its
  domains ~64 epochs and ends at 5.556 +- 0.035; DGA with the paper's defaults (raw dots, eta 0.3)
  is worst (5.626 +- 0.032, paired vs IS +0.070 +- 0.065), DGA without EMA likewise (5.648).
- Why: the first reweighting (step 25, just after warm-up) sees gradients ~10x larger than later
  (probe gradient norm ~7 vs ~0.7), raw alignments of 30-47 against 0.1-0.5 afterwards, so
  eta * a moves the weights by e^4 in one update and every later update (eta * a ~ 0.05) barely
  moves them back: the mixture is decided by the one update that measures the warm-up.
- Ablations, seed 0 (dga target loss): default 5.656; --reweight-start 50: 5.558;
  --normalise cosine --eta 3: 5.597; --normalise mean_norm --eta 1: 5.548 (IS 5.536, uniform 5.501).
  mean_norm over 3 seeds: bench/results/efficacy-mean_norm.json (about IS's level, still not uniform's).
- At this scale (1.3M parameters, 300 steps) GSM8K's nearest Wikipedia clusters help less than
  diversity does; repeated documents start to hurt the target loss of IS and DGA after ~200 steps.
"""


# --------------------------------------------------------------------------- workspace

def dgamix(*args: str, log: list[str]) -> str:
    """Run one `dgamix` command (python -m dgamix.cli.main, from the repository root); returns stdout."""
    cmd = [sys.executable, "-m", "dgamix.cli.main", *args]
    shown = "dgamix " + " ".join(args)
    print(f"$ {shown}", flush=True)
    log.append(shown)
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {shown}\n{p.stdout}\n{p.stderr}")
    return p.stdout


def complete_tree(ws: Path, name: str) -> bool:
    from dgamix.pipeline.core import manifest

    path = ws / "clusters" / name / "tree.parquet"
    if not path.exists():
        return False
    try:
        return manifest.read_meta(path, "tree").get("state") == "complete"
    except Exception:  # noqa: BLE001 - an unreadable tree is rebuilt by the command
        return False


def prepare(args, log: list[str]) -> dict:
    """Build (or reuse) the workspace; returns names of the clustering and bases."""
    ws = args.workspace
    t0 = time.perf_counter()
    if not (ws / "embeddings.parquet").exists():
        dgamix("embed", str(args.corpus), "--workspace", str(ws), "--keep-columns", "topic",
               "--max-seq-length", str(args.max_seq_length), "--precision", args.precision, "--quiet", log=log)
    clusters = "k" + args.levels.replace(",", "-")
    if not complete_tree(ws, clusters):
        dgamix("cluster", "--workspace", str(ws), "--levels", args.levels, "--name", clusters, "--quiet", log=log)
    target_file = args.target_file or ROOT / "data" / "targets" / TARGET_FILES.get(args.target, f"{args.target}.parquet")
    if not (ws / "targets" / args.target / "examples.parquet").exists():
        dgamix("target", str(target_file), "--workspace", str(ws), "--name", args.target, log=log)
    common = ["--workspace", str(ws), "--clusters", clusters, "--level", str(args.level), "--target", args.target]
    is_basis = f"eff-{args.target}-{clusters}-l{args.level}-is"
    dgamix("basis", *common, "--by", "single", "--name", is_basis, "--overwrite", log=log)
    dga_basis = f"eff-{args.target}-{clusters}-l{args.level}-{args.basis_by.replace(':', '')}-{args.generic}"
    dgamix("basis", *common, "--by", args.basis_by, "--generic", args.generic, "--name", dga_basis,
           "--overwrite", log=log)
    from dgamix.pipeline.core import manifest

    emb = manifest.read_meta(ws / "embeddings.parquet", "embeddings")["params"]
    return {"clusters": clusters, "is_basis": is_basis, "dga_basis": dga_basis, "seconds": time.perf_counter() - t0,
            "embeddings": {k: emb.get(k) for k in ("model", "max_seq_length", "precision", "dtype")}}


# --------------------------------------------------------------------------- runs

def config_of(args, seed: int, mixer: str):
    from dgamix.mixing.dga import DGAConfig
    from dgamix.mixing.trainer import TrainConfig

    dga = DGAConfig(eta=args.eta, ema_beta=args.ema_beta if mixer == "dga" else None,
                    reweight_every=args.reweight_every, reweight_start=args.reweight_start, normalise=args.normalise)
    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, dga=dga,
                       align_batch_size=args.align_batch_size,
                       target_batch_size=args.target_batch_size, eval_every=args.eval_every,
                       eval_batches=args.eval_batches, checkpoint_every=0,
                       tokens_per_domain=args.tokens_per_domain or None, seed=seed, threads=args.threads)


def cli_line(args, prep: dict, mixer: str, seed: int, name: str) -> str:
    basis = {"is": prep["is_basis"], "dga": prep["dga_basis"], "dga-noema": prep["dga_basis"]}.get(mixer)
    parts = [f"dgamix train --workspace {args.workspace} --clusters {prep['clusters']} --level {args.level}",
             f"--target {args.target} --mixer {mixer}" + (f" --basis {basis}" if basis else ""),
             f"--steps {args.steps} --batch-size {args.batch_size} --lr {args.lr} --warmup {args.warmup}",
             f"--tokens-per-domain {args.tokens_per_domain}" if args.tokens_per_domain else "",
             f"--eval-every {args.eval_every} --eval-batches {args.eval_batches} --checkpoint-every 0"]
    if mixer.startswith("dga"):
        parts.append(f"--reweight-every {args.reweight_every} --reweight-start {args.reweight_start} "
                     f"--eta {args.eta}{f' --ema-beta {args.ema_beta}' if mixer == 'dga' else ''} --normalise {args.normalise} "
                     f"--align-batch-size {args.align_batch_size} --target-batch-size {args.target_batch_size}")
    parts.append(f"--seed {seed} --threads {args.threads} --overwrite --quiet --name {name}")
    return " ".join(p for p in parts if p)


def run_one(job: tuple) -> dict:
    """Train one (mixer, seed) in this process; returns its curves, final losses and repetitions."""
    args, prep, mixer, seed = job
    import polars as pl

    from dgamix.mixing.run import train_run

    name = f"{args.tag}-{mixer}-s{seed}"
    basis = {"is": prep["is_basis"], "dga": prep["dga_basis"], "dga-noema": prep["dga_basis"]}.get(mixer)
    t0 = time.perf_counter()
    summary = train_run(args.workspace, prep["clusters"], args.level, args.target, mixer, basis,
                        config_of(args, seed, mixer), name, overwrite=True, quiet=True)
    seconds = time.perf_counter() - t0
    run = args.workspace / "runs" / name
    m = pl.read_parquet(run / "metrics.parquet")
    curves = {split: m.filter(pl.col("split") == split).sort("step").select("step", "loss").to_dict(as_series=False)
              for split in ("target", "general", "train")}
    reps = pl.read_parquet(run / "repetitions.parquet")
    draws, n_docs = reps["draws"].to_numpy(), reps["n_docs"].to_numpy()
    repeated = np.maximum(draws - n_docs, 0).sum() / max(1, draws.sum())   # share of draws that re-read a doc
    w = pl.read_parquet(run / "weights.parquet")
    traj = None
    if mixer.startswith("dga"):
        steps = sorted(set(w["step"].to_list()))
        traj = {"steps": steps, "names": w.filter(pl.col("step") == steps[0])["name"].to_list(),
                "weights": [w.filter(pl.col("step") == s)["weight"].to_list() for s in steps],
                "alignments": [w.filter(pl.col("step") == s)["alignment"].to_list() for s in steps]}
    tgt = curves["target"]["loss"]
    out = {"mixer": mixer, "seed": seed, "run": name, "command": cli_line(args, prep, mixer, seed, name),
           "final_target": tgt[-1], "final_general": curves["general"]["loss"][-1],
           "best_target": float(min(tgt)), "best_target_step": curves["target"]["step"][int(np.argmin(tgt))],
           "max_epochs": int(reps["epochs"].max()), "repeated_draw_share": float(repeated),
           "domains_drawn": int((draws > 0).sum()), "seconds": seconds,
           "seconds_per_step": summary["seconds_per_step"], "seconds_per_reweighting": summary["seconds_per_reweighting"],
           "curves": curves, "weights": traj}
    print(f"  {name:<28} target {out['final_target']:.4f} (best {out['best_target']:.4f} @ {out['best_target_step']})"
          f"  general {out['final_general']:.4f}  max epochs {out['max_epochs']:>3}  "
          f"repeats {100 * repeated:4.1f}%  {seconds:5.1f} s", flush=True)
    return out


# --------------------------------------------------------------------------- report

def ms(x) -> str:
    x = np.asarray(x, dtype=np.float64)
    return f"{x.mean():.4f} ± {x.std(ddof=1) if x.size > 1 else 0.0:.4f}"


def aggregate(runs: list[dict], mixers: list[str]) -> dict:
    agg = {}
    by = {m: sorted((r for r in runs if r["mixer"] == m), key=lambda r: r["seed"]) for m in mixers}
    ref = {r["seed"]: r for r in by.get("is", [])}
    for m, rs in by.items():
        if not rs:
            continue
        a = {k: [r[k] for r in rs] for k in ("final_target", "final_general", "best_target", "max_epochs",
                                             "repeated_draw_share", "seconds")}
        row = {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "values": v}
               for k, v in a.items()}
        paired = [r["final_target"] - ref[r["seed"]]["final_target"] for r in rs if r["seed"] in ref]
        paired_g = [r["final_general"] - ref[r["seed"]]["final_general"] for r in rs if r["seed"] in ref]
        if paired and m != "is":
            row["target_minus_is"] = {"mean": float(np.mean(paired)),
                                      "std": float(np.std(paired, ddof=1)) if len(paired) > 1 else 0.0,
                                      "values": paired}
            row["general_minus_is"] = {"mean": float(np.mean(paired_g)),
                                       "std": float(np.std(paired_g, ddof=1)) if len(paired_g) > 1 else 0.0,
                                       "values": paired_g}
        if rs[0]["weights"] is not None:
            row["final_weights"] = dict(zip(rs[0]["weights"]["names"],
                                            np.mean([r["weights"]["weights"][-1] for r in rs], axis=0).tolist()))
        agg[m] = row
    return agg


def print_table(agg: dict) -> None:
    head = ["mixer", "target loss (final)", "general loss (final)", "target best", "target - IS (paired)",
            "max epochs", "repeated draws", "s / run"]
    rows = []
    for m, a in agg.items():
        d = a.get("target_minus_is")
        rows.append([m, ms(a["final_target"]["values"]), ms(a["final_general"]["values"]),
                     ms(a["best_target"]["values"]),
                     "-" if d is None else f"{d['mean']:+.4f} ± {d['std']:.4f}",
                     f"{a['max_epochs']['mean']:.0f}", f"{100 * a['repeated_draw_share']['mean']:.1f}%",
                     f"{a['seconds']['mean']:.0f}"])
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(x) for h, x in zip(head, w)))
    for r in rows:
        print("  ".join(c.ljust(x) for c, x in zip(r, w)))
    for m, a in agg.items():
        if "final_weights" in a:
            top = sorted(a["final_weights"].items(), key=lambda kv: -kv[1])
            print(f"{m} final basis weights (mean over seeds): " + ", ".join(f"{k}={v:.3f}" for k, v in top))


def plot(runs: list[dict], mixers: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"uniform": "tab:gray", "is": "tab:blue", "dga": "tab:red", "dga-noema": "tab:orange"}
    dga_runs = [r for r in runs if r["mixer"] == "dga" and r["weights"]]
    fig, axes = plt.subplots(1, 3 if dga_runs else 2, figsize=(15 if dga_runs else 10, 4.2))
    for ax, split, label in ((axes[0], "target", "specialised loss (target holdout)"),
                             (axes[1], "general", "general loss (held-out corpus)")):
        for m in mixers:
            rs = [r for r in runs if r["mixer"] == m]
            if not rs:
                continue
            steps = np.asarray(rs[0]["curves"][split]["step"])
            ys = np.asarray([r["curves"][split]["loss"] for r in rs])
            mean, std = ys.mean(0), ys.std(0)
            ax.plot(steps, mean, label=f"{m} (n={len(rs)})", color=colours.get(m), lw=1.8)
            ax.fill_between(steps, mean - std, mean + std, color=colours.get(m), alpha=0.15, lw=0)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats / token)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        lo = min(min(r["curves"][split]["loss"]) for r in runs)
        late = [v for r in runs for s, v in zip(r["curves"][split]["step"], r["curves"][split]["loss"])
                if s >= r["curves"][split]["step"][-1] // 3]
        ax.set_ylim(lo - 0.05, max(late) + 0.1)
        ax.legend(fontsize=8)
    if dga_runs:
        ax = axes[2]
        steps = dga_runs[0]["weights"]["steps"]
        W = np.mean([r["weights"]["weights"] for r in dga_runs], axis=0)   # (steps, N)
        ax.stackplot(steps, W.T, labels=dga_runs[0]["weights"]["names"], step="post", alpha=0.85)
        ax.set_xlim(steps[0], steps[-1])
        ax.set_ylim(0, 1)
        ax.set_xlabel("step")
        ax.set_title("dga basis weights (mean over seeds)", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, 60 steps (< 2 min with a built workspace)")
    ap.add_argument("--workspace", type=Path, default=ROOT / "ws" / "efficacy")
    ap.add_argument("--corpus", type=Path, default=ROOT / "data" / "wiki_vital_en.parquet")
    ap.add_argument("--max-seq-length", type=int, default=128, help="encoder word pieces (embed stage)")
    ap.add_argument("--precision", default="int8", help="embed precision when the workspace is built")
    ap.add_argument("--target", default="gsm8k", help=f"target name; data/targets file for {sorted(TARGET_FILES)}")
    ap.add_argument("--target-file", type=Path, default=None, help="another target file")
    ap.add_argument("--levels", default="16,16")
    ap.add_argument("--level", type=int, default=2)
    ap.add_argument("--basis-by", default="kmeans:8", help="DGA basis: kmeans:N | group | levels | single")
    ap.add_argument("--generic", default="natural", help="generic basis added to the DGA basis")
    ap.add_argument("--mixers", default=",".join(MIXERS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--tokens-per-domain", type=int, default=1000, help="0 = no cap")
    ap.add_argument("--reweight-every", type=int, default=25)
    ap.add_argument("--reweight-start", type=int, default=20)
    ap.add_argument("--eta", type=float, default=0.3)
    ap.add_argument("--ema-beta", type=float, default=0.1)
    ap.add_argument("--normalise", default="none", choices=["none", "cosine", "mean_norm"])
    ap.add_argument("--align-batch-size", type=int, default=16)
    ap.add_argument("--target-batch-size", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-batches", type=int, default=4, help="x 32 sequences per evaluation split")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1 is fastest on 2 busy cores)")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    ap.add_argument("--tag", default="eff", help="run-name prefix in WS/runs/")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/efficacy[-quick].json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.eval_every = "0", 60, 20
    stem = "efficacy-quick" if args.quick else "efficacy"
    out = args.out or ROOT / "bench" / "results" / f"{stem}.json"
    png = out.with_suffix(".png")
    args.workspace = args.workspace.resolve()
    mixers = [m.strip() for m in args.mixers.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    t0 = time.perf_counter()
    log: list[str] = []
    prep = prepare(args, log)
    jobs = [(args, prep, m, s) for s in seeds for m in mixers]
    print(f"\n{len(jobs)} runs: {', '.join(mixers)} x seeds {seeds}; {args.steps} steps x {args.batch_size}; "
          f"tokens per domain {args.tokens_per_domain or 'all'}; {prep['clusters']} level {args.level}; "
          f"target {args.target}", flush=True)
    if args.jobs > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            runs = list(pool.map(run_one, jobs))
    else:
        runs = [run_one(j) for j in jobs]
    agg = aggregate(runs, mixers)
    print()
    print_table(agg)
    title = (f"{args.target} on wiki_vital_en, {prep['clusters']} level {args.level}, "
             f"{args.tokens_per_domain or 'all'} tokens/domain, {args.steps} steps x {args.batch_size}, "
             f"seeds {seeds}; dga: eta {args.eta}, T_r {args.reweight_every}, beta {args.ema_beta}, "
             f"normalise {args.normalise}")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(runs, mixers, png, title)
    res = {"mode": "quick" if args.quick else "full",
           "command": "python bench/efficacy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "loadavg": [round(x, 2) for x in os.getloadavg()]},
           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "workspace": prep, "stage_commands": log, "aggregate": agg, "runs": runs,
           "findings": FINDINGS, "seconds": time.perf_counter() - t0, "plot": str(png.relative_to(ROOT))
           if png.is_relative_to(ROOT) else str(png)}
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {out} and {png} ({png.stat().st_size / 1024:.0f} KB) in {res['seconds']:.0f} s")
    return res


if __name__ == "__main__":
    main()

"""Distribution reweighting at fine granularity (not a test).

DGA over >= 4,096 domains with N <= 16 bases: WordNet glosses (../shared/data, 117,659 real
definitions; by default a seeded 40,000-row sample so that embedding fits in minutes on two
cores) clustered with ``--levels 64,64`` (4,096 leaves), a target assigned with the same tree,
and a basis of ``kmeans:15`` target groups + the generic natural distribution (N = 16).

What it measures, in one process:
  * backward passes: torch.autograd.grad (the alignment probes) and Tensor.backward (the
    training steps) are wrapped with counters, so the cost per reweighting is *counted*, not
    assumed: it must be N + 1 (one per basis + one for the target), not k + 1 = 4,097;
  * overhead: a plain uniform run and the DGA run, same seed and steps, back to back. The
    measured overhead (alignment seconds / training-step seconds) is compared with docs/method.md's
    formula (N * B_dom + B_spe) / (T_r * B), with T_r taken as steps / reweightings actually done.

    python -m bench.experiments.fine_grained            # ~10 min to build the workspace once, then ~3 min
    python -m bench.experiments.fine_grained --quick    # 8,000 glosses, 60 steps (make bench)
    python -m bench.experiments.fine_grained --docs 0   # all 117,659 glosses (embedding ~25 min on 2 cores)

Without ../shared/data (a user's clone) it says so and exits 0; pass --corpus to use another
corpus. Results: bench/experiments/results/fine_grained.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the dgamix command sets it: idle FAISS threads sleep
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SHARED = ROOT.parent / "shared" / "data" / "wordnet_glosses.parquet"


def dgamix(*args: str) -> None:
    """One `dgamix` command as a user would type it (python -m dgamix.cli.main from the repo root)."""
    print("$ dgamix " + " ".join(args), flush=True)
    p = subprocess.run([sys.executable, "-m", "dgamix.cli.main", *args], cwd=ROOT)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): dgamix {' '.join(args)}")


def prepare(args) -> tuple[str, str]:
    """Builds (or reuses) the workspace: sample, embed, cluster, target, basis. Returns (clusters, basis)."""
    import polars as pl

    from dgamix.pipeline.core import manifest

    ws = args.workspace
    inp = ws / "input" / f"{args.corpus.stem}-{args.docs or 'all'}-seed{args.seed}.parquet"
    if not inp.exists():
        df = pl.read_parquet(args.corpus)
        if args.docs and args.docs < df.height:
            df = df.sample(args.docs, seed=args.seed, shuffle=False)
        inp.parent.mkdir(parents=True, exist_ok=True)
        df.write_parquet(inp)
    if not (ws / "embeddings.parquet").exists():
        dgamix("embed", str(inp), "--workspace", str(ws), "--max-seq-length", str(args.max_seq_length),
               "--precision", args.precision, "--quiet")
    clusters = "k" + args.levels.replace(",", "-")
    try:
        manifest.read_meta(ws / "clusters" / clusters / "tree.parquet")
    except Exception:
        dgamix("cluster", "--workspace", str(ws), "--levels", args.levels, "--name", clusters, "--overwrite",
               "--quiet")
    if not (ws / "targets" / args.target / "examples.parquet").exists():
        dgamix("target", str(args.target_file), "--workspace", str(ws), "--name", args.target)
    basis = f"fg-{args.by.replace(':', '')}-{args.generic}"
    dgamix("basis", "--workspace", str(ws), "--clusters", clusters, "--level", "2", "--target", args.target,
           "--by", args.by, "--generic", args.generic, "--name", basis, "--overwrite")
    return clusters, basis


class Counter:
    """Counts calls of torch.autograd.grad and torch.Tensor.backward while installed."""

    def __init__(self):
        import torch

        self.torch, self.grad, self.backward = torch, 0, 0
        self._grad, self._backward = torch.autograd.grad, torch.Tensor.backward

    def __enter__(self):
        def grad(*a, **k):
            self.grad += 1
            return self._grad(*a, **k)

        def backward(t, *a, **k):
            self.backward += 1
            return self._backward(t, *a, **k)

        self.torch.autograd.grad, self.torch.Tensor.backward = grad, backward
        return self

    def __exit__(self, *exc):
        self.torch.autograd.grad, self.torch.Tensor.backward = self._grad, self._backward


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=SHARED, help="generic corpus (default: WordNet glosses)")
    ap.add_argument("--docs", type=int, default=40000, help="seeded sample size; 0 = all documents")
    ap.add_argument("--workspace", type=Path, default=None, help="default: ws/fine-grained-<docs>")
    ap.add_argument("--max-seq-length", type=int, default=32, help="word pieces; glosses are ~15 words")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--levels", default="64,64")
    ap.add_argument("--target", default="recipes")
    ap.add_argument("--target-file", type=Path, default=ROOT / "data" / "targets" / "wikibooks_recipes.parquet")
    ap.add_argument("--by", default="kmeans:15", help="target part of the basis")
    ap.add_argument("--generic", default="natural", help="generic basis added (N = groups + 1)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reweight-every", type=int, default=10)
    ap.add_argument("--reweight-start", type=int, default=20)
    ap.add_argument("--align-batch-size", type=int, default=16)
    ap.add_argument("--target-batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on 2 shared cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="8,000 documents, 60 steps (for make bench)")
    ap.add_argument("--out", type=Path, default=None, help="default: bench/experiments/results/fine_grained[-quick].json")
    args = ap.parse_args(argv)
    if args.quick:
        args.docs, args.steps = 8000, 60
    args.workspace = args.workspace or ROOT / "ws" / f"fine-grained-{args.docs or 'all'}"
    args.out = args.out or RESULTS / f"fine_grained{'-quick' if args.quick else ''}.json"
    if not args.corpus.exists():
        print(f"skipped: {args.corpus} is not here (../shared/data is only in the development checkout); "
              f"pass --corpus PATH to use another corpus.")
        return None
    args.workspace = args.workspace.resolve()
    t0 = time.perf_counter()
    clusters, basis = prepare(args)

    import polars as pl

    from dgamix.mixing.dga import DGAConfig
    from dgamix.mixing.testbed.train import train_run
    from dgamix.mixing.testbed.trainer import TrainConfig

    levels = [int(x) for x in args.levels.split(",")]
    leaves = pl.read_parquet(args.workspace / "clusters" / clusters / "domains.parquet").filter(
        pl.col("level") == len(levels)).height
    n_bases = pl.read_parquet(args.workspace / "bases" / f"{basis}.parquet")["basis"].n_unique()
    cfg = dict(steps=args.steps, batch_size=args.batch_size,
               dga=DGAConfig(reweight_every=args.reweight_every, reweight_start=args.reweight_start),
               align_batch_size=args.align_batch_size,
               target_batch_size=args.target_batch_size, eval_every=args.steps, checkpoint_every=0,
               seed=args.seed, threads=args.threads)
    out = {}
    for mixer, b in (("uniform", None), ("dga", basis)):
        with Counter() as c:
            s = train_run(args.workspace, clusters, len(levels), args.target, mixer, b, TrainConfig(**cfg),
                          f"fg-{mixer}", overwrite=True, quiet=True)
        out[mixer] = {"summary": s, "autograd_grad_calls": c.grad, "backward_calls": c.backward}
        print(f"{mixer:8s} {s['seconds']:7.1f} s  {s['seconds_per_step']:.4f} s/step  "
              f"reweightings {s['reweightings']}  autograd.grad {c.grad}  backward {c.backward}", flush=True)

    d = out["dga"]
    r = d["summary"]["reweightings"]
    per = d["autograd_grad_calls"] / r if r else float("nan")
    step_s = d["summary"]["seconds_per_step"] * args.steps
    align_s = d["summary"]["seconds_per_reweighting"] * r
    measured = align_s / step_s
    t_r_eff = args.steps / r
    formula = (n_bases * args.align_batch_size + args.target_batch_size) / (t_r_eff * args.batch_size)
    wall = (d["summary"]["seconds"] - out["uniform"]["summary"]["seconds"]) / out["uniform"]["summary"]["seconds"]
    res = {"command": "python -m bench.experiments.fine_grained " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "loadavg": [round(x, 2) for x in os.getloadavg()]},
           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "domains": leaves, "bases": n_bases, "reweightings": r,
           "backward_per_reweighting": per, "expected_n_plus_1": n_bases + 1, "domain_reweighting_would_need": leaves + 1,
           "train_backward_calls": d["backward_calls"], "overhead_measured": measured, "overhead_formula": formula,
           "overhead_wall_vs_uniform": wall, "runs": out, "seconds": time.perf_counter() - t0}
    print(f"\n{leaves:,} domains (level {len(levels)} of {clusters}), N = {n_bases} bases, {r} reweightings "
          f"in {args.steps} steps")
    print(f"backward passes per reweighting: {per:.2f} counted (N + 1 = {n_bases + 1}; per-domain "
          f"reweighting would need k + 1 = {leaves + 1:,}); training steps: {d['backward_calls']} backward")
    print(f"overhead: measured {100 * measured:.1f}% (alignment {align_s:.1f} s / steps {step_s:.1f} s), "
          f"formula (N*B_dom + B_spe)/(T_r*B) = ({n_bases}*{args.align_batch_size} + {args.target_batch_size})"
          f"/({t_r_eff:.1f}*{args.batch_size}) = {100 * formula:.1f}%, ratio {measured / formula:.2f}; "
          f"wall time vs the uniform run {100 * wall:+.1f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()

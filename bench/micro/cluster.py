"""Benchmark of the k-means tree (not a test): fit time, assignment throughput vs flat search, memory.

Data: a synthetic Gaussian mixture on the unit sphere (``--dim`` 384 like MiniLM), generated
in chunks from a seed. Measured in one run, on this machine:

- fit time of the tree (``--levels``, default 64,64,64) on ``--n`` vectors (default 1,000,000),
  held in memory as shards (the fit streams over them like over embedding parts, no disk IO);
- assignment throughput of the tree descent (docs/s) vs exact flat search over all leaves
  (``faiss.IndexFlatIP``) on the same vectors; flat search is timed on ``--flat-queries``
  vectors and the ratio tree/flat is printed;
- how often the tree's leaf is the flat-nearest leaf (information: the tree is greedy);
- with ``--stream N``: peak RSS of a fresh process that loads the tree and assigns N vectors
  generated on the fly (default 10,000,000), against the same process's RSS before streaming.

``--quick`` runs a small configuration in well under a minute. Results: bench/micro/results/cluster.json.

    python -m bench.micro.cluster [--quick] [--n 1000000] [--levels 64,64,64]   # from the repository root
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the dgamix command sets it: idle FAISS threads sleep

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

from dgamix.pipeline.core.runtime import numpy_blas_single_thread  # noqa: E402
from dgamix.pipeline.kmeans import ArraySource, FitConfig, Tree, fit_tree  # noqa: E402


class Mixture:
    """A Gaussian mixture on the sphere: ``components`` centres, per-component spread; chunk i is a
    pure function of (seed, i), so any chunk can be regenerated without the others."""

    def __init__(self, dim: int, components: int, seed: int, spread: tuple[float, float] = (0.6, 1.6)):
        rng = np.random.default_rng([seed, 0])
        self.dim, self.seed = dim, seed
        self.centres = rng.normal(size=(components, dim)).astype(np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        self.weights = rng.dirichlet(np.full(components, 2.0))
        # noise norm ~ spread, so a point's cosine to its centre is ~1/sqrt(1+spread^2)
        self.spread = rng.uniform(*spread, components).astype(np.float32) / np.sqrt(dim)

    def chunk(self, i: int, rows: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, i])
        comp = rng.choice(len(self.centres), rows, p=self.weights)
        x = rng.standard_normal((rows, self.dim), dtype=np.float32)
        x *= self.spread[comp, None]
        x += self.centres[comp]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def rss_mib() -> float:
    """Peak resident set size of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def hwm_mib() -> float:
    """Peak RSS of this process image (VmHWM; unlike ru_maxrss it does not inherit the parent's
    peak through fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return rss_mib()


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _stream_worker(tree_path: str, levels: tuple[int, ...], dim: int, components: int, seed: int, n: int,
                   chunk: int, out) -> None:
    tree = Tree.read(tree_path, levels)
    mix = Mixture(dim, components, seed + 7)
    before, peak_load = current_rss_mib(), hwm_mib()
    counts = np.zeros(len(tree.domain[-1]), np.int64)
    t_assign = 0.0
    t0 = time.perf_counter()
    for i in range(math.ceil(n / chunk)):
        x = mix.chunk(i, min(chunk, n - i * chunk))
        t = time.perf_counter()
        with numpy_blas_single_thread():  # as the assignment stage runs it
            leaf = tree.descend(x)[0][:, -1]
        t_assign += time.perf_counter() - t
        counts += np.bincount(tree.index_of(len(levels), leaf), minlength=len(counts))
    out.put({"vectors": n, "chunk": chunk, "rss_after_tree_load_mib": round(before, 1),
             "peak_rss_mib_tree_load": round(peak_load, 1), "peak_rss_mib": round(hwm_mib(), 1),
             "rss_at_end_mib": round(current_rss_mib(), 1), "wall_seconds": round(time.perf_counter() - t0, 1),
             "assign_seconds": round(t_assign, 1), "assign_docs_per_s": round(n / t_assign),
             "leaves_hit": int((counts > 0).sum())})


def torch_descent(tree, q: np.ndarray, labels: np.ndarray, device: str) -> dict:
    """Throughput of the torch descent on ``device`` (after one warm-up call) and its agreement with numpy's."""
    import torch

    from dgamix.pipeline.assign_torch import TorchTree

    tt = TorchTree(tree, device)
    tt.descend(q[:1000])  # warm-up: kernels, the device copy of the tree
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    sync()
    t = time.perf_counter()
    got, _ = tt.descend(q)
    sync()
    dt = time.perf_counter() - t
    rate = len(q) / dt
    return {"device": str(device), "docs": len(q), "seconds": round(dt, 3), "docs_per_s": round(rate),
            "x_numpy": None, "same_leaf_as_numpy": round(float((got[:, -1] == labels[:, -1]).mean()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (< 1 min): 100k vectors, levels 32,32,16")
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors to fit on")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--levels", default="64,64,64")
    ap.add_argument("--components", type=int, default=2000, help="Gaussian components of the synthetic mixture")
    ap.add_argument("--shard-size", type=int, default=50_000, help="rows per shard")
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--flat-queries", type=int, default=2000, help="vectors timed with exact flat search")
    ap.add_argument("--assign-n", type=int, default=200_000, help="vectors timed with the tree descent")
    ap.add_argument("--stream", type=int, default=0, metavar="N",
                    help="also measure peak RSS while assigning N streamed vectors (e.g. 10000000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, metavar="DEV",
                    help="also time the torch tree descent (`dgamix cluster --device`) on DEV, e.g. cuda")
    ap.add_argument("--out", default=str(RESULTS / "cluster.json"))
    args = ap.parse_args()
    if args.quick:
        args.n, args.levels, args.flat_queries, args.assign_n = 100_000, "32,32,16", 1000, 50_000
        args.components, args.shard_size = 500, 20_000
        args.stream = min(args.stream, 1_000_000)
    levels = tuple(int(b) for b in args.levels.split(","))
    import faiss

    res: dict = {"mode": "quick" if args.quick else "full", "n": args.n, "dim": args.dim, "levels": list(levels),
                 "leaves_requested": math.prod(levels), "components": args.components, "niter": args.niter,
                 "machine": {"cpus": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
                             "load_avg_at_start": os.getloadavg()[0], "python": platform.python_version(),
                             "faiss": faiss.__version__, "numpy": np.__version__}}

    mix = Mixture(args.dim, args.components, args.seed)
    t = time.perf_counter()
    x = np.empty((args.n, args.dim), np.float32)
    for i, a in enumerate(range(0, args.n, args.shard_size)):
        x[a:a + args.shard_size] = mix.chunk(i, min(args.shard_size, args.n - a))
    res["generate_seconds"] = round(time.perf_counter() - t, 1)
    source = ArraySource(x, args.shard_size)

    t = time.perf_counter()
    tree, stats = fit_tree(source, FitConfig(levels, seed=args.seed, niter=args.niter), quiet=False)
    res["fit_seconds"] = round(time.perf_counter() - t, 1)
    res["fit_levels"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()} for s in stats]
    leaves = tree.centroids[-1]
    res["leaves"] = int(len(leaves))
    print(f"fit {levels} on {args.n:,} x {args.dim}: {res['fit_seconds']} s, {len(leaves):,} leaves", flush=True)

    # assignment: tree descent vs exact flat search over all leaves, on the same vectors
    q = x[:args.assign_n]
    t = time.perf_counter()
    with numpy_blas_single_thread():  # as the assignment stage runs it
        labels, sims = tree.descend(q)
    tree_s = time.perf_counter() - t
    index = faiss.IndexFlatIP(args.dim)
    index.add(leaves)
    fq = q[:args.flat_queries]
    t = time.perf_counter()
    flat_sim, flat_idx = index.search(fq, 1)
    flat_s = time.perf_counter() - t
    tree_rate, flat_rate = len(q) / tree_s, len(fq) / flat_s
    tree_leaf = labels[:len(fq), -1]
    flat_leaf = tree.domain[-1][flat_idx[:, 0]]
    res["assign"] = {"tree_docs": len(q), "tree_seconds": round(tree_s, 2), "tree_docs_per_s": round(tree_rate),
                     "flat_docs": len(fq), "flat_seconds": round(flat_s, 2), "flat_docs_per_s": round(flat_rate, 1),
                     "speedup_tree_over_flat": round(tree_rate / flat_rate, 1),
                     "same_leaf_as_flat": round(float((tree_leaf == flat_leaf).mean()), 4),
                     "mean_sim_tree_leaf": round(float(sims[:len(fq), -1].mean()), 4),
                     "mean_sim_flat_leaf": round(float(flat_sim[:, 0].mean()), 4),
                     "same_level1_as_flat_leaf_ancestor": round(float(
                         (labels[:len(fq), 0] == flat_leaf // math.prod(levels[1:])).mean()), 4)}
    print(f"assign: tree {tree_rate:,.0f} docs/s vs flat {flat_rate:,.1f} docs/s over {len(leaves):,} leaves "
          f"-> {tree_rate / flat_rate:,.1f}x; same leaf as flat {res['assign']['same_leaf_as_flat']:.1%}", flush=True)
    if args.device:
        res["assign"]["torch"] = torch_descent(tree, q, labels, args.device)
        res["assign"]["torch"]["x_numpy"] = round(res["assign"]["torch"]["docs_per_s"] / tree_rate, 2)
        d = res["assign"]["torch"]
        print(f"assign on {args.device}: {d['docs_per_s']:,} docs/s ({d['x_numpy']}x the numpy descent); "
              f"same leaf as numpy {d['same_leaf_as_numpy']:.2%}", flush=True)
    res["peak_rss_mib_main"] = round(rss_mib(), 1)
    del index, x, source

    if args.stream:
        import pyarrow.parquet as pq

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "tree.parquet")
            pq.write_table(tree.to_table(), path)
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            p = ctx.Process(target=_stream_worker, args=(path, levels, args.dim, args.components, args.seed,
                                                         args.stream, 50_000, queue))
            p.start()
            res["stream"] = queue.get()
            p.join()
        s = res["stream"]
        print(f"stream: {s['vectors']:,} vectors assigned at {s['assign_docs_per_s']:,} docs/s; peak RSS "
              f"{s['peak_rss_mib']:,} MiB (loading the tree peaked at {s['peak_rss_mib_tree_load']:,} MiB, "
              f"{s['rss_after_tree_load_mib']:,} MiB once loaded, {s['rss_at_end_mib']:,} MiB at the end)", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

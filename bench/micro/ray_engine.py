"""Benchmark of the engines: the same shard work on the local engine and on Ray (--engine ray).

In one process, on the same inputs:
  embed    the embed stage's shard work (dgamix.pipeline.embed.ShardEmbedder: embed a shard of texts
           with MiniLM fp32 and write its part) over --docs wiki summaries in shards of --shard-size;
           local = one in-process loop (torch on all cores), ray = an actor pool of --workers actors
           (1 CPU and 1 torch thread each, the model loaded once per actor);
  assign   the assignment pass's shard work (dgamix.pipeline.assign.ShardAssigner: read an embeddings
           part, descend the tree, write the assignments part) over --vectors synthetic 384-d
           vectors and a levels 32,32 tree; ray = actor pool, each actor reads tree.parquet once;
  fit      fit_tree of that tree: level 2's nodes in-process vs as Ray tasks.
The Ray instance is local (ray.init(num_cpus=--workers)); its start-up is reported apart. Ray
times include starting the actor pool (actors load the model / the tree); "steady" is the rate
between the first and the last shard to finish. Ratios are ray / local: > 1 means Ray is faster.

    python -m bench.micro.ray_engine [--quick]        # table on stdout, JSON in bench/micro/results/ray_engine.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before `import ray`: bind loopback only
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the dgamix command sets it: idle FAISS threads sleep
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402

from dgamix.pipeline.assign import ShardAssigner  # noqa: E402
from dgamix.pipeline.core import manifest  # noqa: E402
from dgamix.pipeline.core.manifest import embedding_array, embedding_matrix  # noqa: E402
from dgamix.pipeline.embed import ShardEmbedder  # noqa: E402
from dgamix.pipeline.encoder import EmbedConfig, load_encoder, model_fingerprint  # noqa: E402
from dgamix.pipeline.engine import EngineConfig, map_shards, session  # noqa: E402
from dgamix.pipeline.kmeans import ArraySource, FitConfig, fit_tree  # noqa: E402
from dgamix.pipeline.onnx_int8 import cores  # noqa: E402


class PartFiles:
    """Embeddings part files as the ``source`` of a ShardAssigner (``read(s)`` -> (doc_ids, vectors))."""

    def __init__(self, paths: list[str], dim: int):
        self.paths, self.dim = paths, dim

    def read(self, s: int):
        table, _ = manifest.read(self.paths[s], "embeddings-part")
        return table["doc_id"].to_numpy().astype(np.int64), embedding_matrix(table["embedding"], self.dim)


def timed_map(factory, jobs, engine, weight) -> dict:
    """Run map_shards; wall seconds, docs/s, and the steady rate between the first and last shard done."""
    stamps = []
    total = sum(weight(j) for j in jobs)
    t0 = time.perf_counter()

    def tick(n):
        stamps.append((time.perf_counter() - t0, n))

    for r in map_shards(factory, jobs, engine, tick if engine.is_ray else None, weight):
        if not engine.is_ray:
            stamps.append((time.perf_counter() - t0, r["rows"] if "rows" in r else len(r["doc_ids"])))
    wall = time.perf_counter() - t0
    steady = None
    if len(stamps) > 2:
        stamps.sort()
        steady = sum(n for _, n in stamps[1:]) / max(stamps[-1][0] - stamps[0][0], 1e-9)
    return {"seconds": round(wall, 2), "docs_per_s": round(total / wall, 1),
            "steady_docs_per_s": round(steady, 1) if steady else None, "first_shard_s": round(stamps[0][0], 2)}


def bench_embed(args, tmp: Path, ray_engine: EngineConfig) -> dict:
    texts = pl.read_parquet(ROOT / "data" / "wiki_vital_en.parquet")["text"].to_list()
    rng = np.random.default_rng(args.seed)
    texts = [texts[i] for i in rng.permutation(len(texts))[:args.docs]]
    cfg = EmbedConfig(max_seq_length=args.max_seq_length, shard_size=args.shard_size)
    params = {"model_fingerprint": model_fingerprint(cfg.model)}
    out = {}
    for name, engine in (("local", EngineConfig()), ("ray", ray_engine)):
        folder = tmp / f"embed-{name}"
        jobs = [{"part": str(folder / f"part-{i:05d}.parquet"), "texts": texts[a:a + args.shard_size],
                 "doc_ids": np.arange(a, min(a + args.shard_size, len(texts))), "params": {"shard": i}}
                for i, a in enumerate(range(0, len(texts), args.shard_size))]
        enc = None if engine.is_ray else load_encoder(cfg)
        work = ShardEmbedder(cfg, "bench", params, threads=1 if engine.is_ray else None, encoder=enc)
        out[name] = timed_map(work, jobs, engine, lambda j: len(j["doc_ids"]))
    a, b = (np.asarray(pl.read_parquet(tmp / f"embed-{n}" / "*.parquet").sort("doc_id")["embedding"].to_list())
            for n in ("local", "ray"))
    out["max_abs_diff"] = float(np.abs(a - b).max())
    return {"docs": len(texts), "shards": -(-len(texts) // args.shard_size), **out}


def bench_cluster(args, tmp: Path, ray_engine: EngineConfig) -> dict:
    rng = np.random.default_rng(args.seed)
    d = 384
    centers = rng.standard_normal((512, d))
    x = (centers[rng.integers(512, size=args.vectors)] + 0.7 * rng.standard_normal((args.vectors, d))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    levels = (32, 32)
    cfg = FitConfig(levels, seed=0, niter=10)
    fit = {}
    for name, engine in (("local", EngineConfig()), ("ray", ray_engine)):
        t = time.perf_counter()
        tree, _ = fit_tree(ArraySource(x, args.vector_shard), cfg, engine=engine)
        fit[name] = {"seconds": round(time.perf_counter() - t, 2), "checksum": tree.checksum()}
    fit["same_tree"] = fit["local"]["checksum"] == fit["ray"]["checksum"]
    paths = []
    for i, a in enumerate(range(0, len(x), args.vector_shard)):
        ids = np.arange(a, min(a + args.vector_shard, len(x)), dtype=np.int64)
        p = tmp / "emb" / f"part-{i:05d}.parquet"
        manifest.write(p, pa.table({"doc_id": ids, "embedding": embedding_array(x[ids], "float32")}), "embeddings-part")
        paths.append(str(p))
    tree_path = tmp / "tree.parquet"
    manifest.write(tree_path, tree.to_table(), "tree")
    out = {}
    for name, engine in (("local", EngineConfig()), ("ray", ray_engine)):
        jobs = [{"shard": s, "part": str(tmp / f"asg-{name}" / f"part-{s:05d}.parquet"), "params": {"shard": s}}
                for s in range(len(paths))]
        work = ShardAssigner(PartFiles(paths, d), "bench", str(tree_path), levels, tree.checksum(),
                             tree=None if engine.is_ray else tree)
        out[name] = timed_map(work, jobs, engine, lambda j: args.vector_shard)
    a, b = (pl.read_parquet(tmp / f"asg-{n}" / "*.parquet").sort("doc_id") for n in ("local", "ray"))
    out["same_assignments"] = a.equals(b)
    return {"vectors": len(x), "dim": d, "levels": list(levels), "leaves": int(len(tree.domain[-1])),
            "shards": len(paths), "fit": fit, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="240 documents and 100k vectors (a few minutes on 2 cores)")
    ap.add_argument("--docs", type=int, default=None, help="documents to embed (default 240 quick, 960 full)")
    ap.add_argument("--shard-size", type=int, default=20, help="documents per embed shard")
    ap.add_argument("--vectors", type=int, default=None, help="vectors to assign (default 100k quick, 400k full)")
    ap.add_argument("--vector-shard", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2, help="Ray actors (and the local instance's CPUs)")
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "ray_engine.json")
    args = ap.parse_args()
    args.docs = args.docs or (240 if args.quick else 960)
    args.vectors = args.vectors or (100_000 if args.quick else 400_000)

    import ray

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    ray_start = time.perf_counter() - t0
    engine = EngineConfig("ray", num_workers=args.workers)
    tmp = Path(tempfile.mkdtemp(prefix="dgamix-bench-ray-"))
    try:
        with session(engine):
            embed = bench_embed(args, tmp, engine)
            cluster = bench_cluster(args, tmp, engine)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    for r in (embed, cluster):
        r["ray_over_local"] = round(r["ray"]["docs_per_s"] / r["local"]["docs_per_s"], 3)
        if r["ray"]["steady_docs_per_s"] and r["local"]["steady_docs_per_s"]:
            r["ray_over_local_steady"] = round(r["ray"]["steady_docs_per_s"] / r["local"]["steady_docs_per_s"], 3)
        r["ray_docs_per_s_per_worker"] = round(r["ray"]["docs_per_s"] / args.workers, 1)
        if r["ray"]["steady_docs_per_s"]:
            r["ray_steady_docs_per_s_per_worker"] = round(r["ray"]["steady_docs_per_s"] / args.workers, 1)
    cluster["fit"]["ray_over_local"] = round(cluster["fit"]["local"]["seconds"] / cluster["fit"]["ray"]["seconds"], 3)
    out = {"machine": {"python": platform.python_version(), "cpu_cores": cores(), "ray": ray.__version__,
                       "loadavg_before": [round(v, 2) for v in load0],
                       "loadavg_after": [round(v, 2) for v in os.getloadavg()]},
           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "ray_init_seconds": round(ray_start, 2), "embed": embed, "cluster": cluster}

    print(f"ray bench  workers={args.workers} cores={cores()} ray {ray.__version__} ray.init {ray_start:.1f} s "
          f"load={load0[0]:.2f}->{os.getloadavg()[0]:.2f}")
    print(f"  {'stage':<8}{'engine':<7}{'docs':>8}{'seconds':>9}{'docs/s':>10}{'steady/s':>10}{'1st shard s':>12}")
    for stage, r, n in (("embed", embed, embed["docs"]), ("assign", cluster, cluster["vectors"])):
        for eng in ("local", "ray"):
            v = r[eng]
            print(f"  {stage:<8}{eng:<7}{n:>8}{v['seconds']:>9.2f}{v['docs_per_s']:>10.1f}"
                  f"{v['steady_docs_per_s'] or float('nan'):>10.1f}{v['first_shard_s']:>12.2f}")
        print(f"  {stage}: ray/local {r['ray_over_local']:.2f}x end to end"
              + (f", {r['ray_over_local_steady']:.2f}x steady" if "ray_over_local_steady" in r else "")
              + f"; per Ray worker {r['ray_docs_per_s_per_worker']:.1f} docs/s end to end, "
              f"{r.get('ray_steady_docs_per_s_per_worker', float('nan')):.1f} steady")
    f = cluster["fit"]
    print(f"  fit levels 32,32 on {cluster['vectors']:,} vectors: local {f['local']['seconds']:.1f} s, ray tasks "
          f"{f['ray']['seconds']:.1f} s ({f['ray_over_local']:.2f}x), same tree: {f['same_tree']}")
    print(f"  embeddings max |local - ray| = {embed['max_abs_diff']:.2e}; same assignments: {cluster['same_assignments']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Near-duplicate removal at scale: docs/s per core and peak memory, in-memory vs sharded.

  in-memory   pipeline.dedup.near_duplicates: every MinHash object and the LSH index in one process,
              one core: the baseline the sharded methods are measured against;
  sharded     near_duplicates_sharded: signatures per shard of --shard-size texts written as .npy,
              the LSH bands bucketed one at a time (the same answer, checked here), on the local
              engine (1 core) and on Ray with --workers workers (tasks of 1 CPU);
  sharded-files  as `dgamix embed` runs it: the corpus is a Parquet file (row groups of --shard-size),
              the process reads only (source, row) of each document (load_corpus without texts) and
              every signature task reads its shard's texts itself (TextRefs), local engine.

Each method runs in its own process on the same texts (the mini-Pile pool from ../shared when it
is there, else data/minipile/slice.parquet; perturbed copies, one word dropped, fill up to --docs,
so ~27% of them are planted near-duplicates at 100k), and peak RSS is that process's ru_maxrss
minus its RSS after loading the texts (what dedup itself adds). docs/s per core = docs/s / cores used.

Signatures alone, per document on one core, on the first --signature-docs of the same texts in
this process (best of --repeat runs each): the vectorised ``pipeline.dedup.signatures`` and the
per-shingle datasketch ``MinHash.bulk`` (SHA-1 of each shingle, Python shingle sets) it replaced.

    python -m bench.micro.dedup [--docs 100000] [--workers 2]      # JSON in bench/micro/results/dedup.json
    python -m bench.micro.dedup --docs 10000 --methods= --out bench/micro/results/dedup-signatures.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before `import ray`: bind loopback only
POOL = ROOT.parent / "shared" / "data" / "minipile" / "pool.parquet"


def corpus(n: int) -> list[str]:
    import polars as pl

    src = POOL if POOL.exists() else ROOT / "data" / "minipile" / "slice.parquet"
    texts = pl.read_parquet(src, columns=["text"])["text"].to_list()[:n]
    rng = np.random.default_rng(0)
    while len(texts) < n:  # near-duplicates: a copy with one word dropped
        w = texts[int(rng.integers(0, len(texts)))].split()
        k = int(rng.integers(0, max(1, len(w))))
        texts.append(" ".join(w[:k] + w[k + 1:]) if len(w) > 1 else " ".join(w))  # never blank: dgamix skips those
    return texts


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one(method: str, n: int, workers: int, shard: int, out: str, files: str) -> None:
    """Runs in its own process: one method on n docs; writes its figures (and dup_of) to ``out``."""
    from dgamix.pipeline.dedup import DedupConfig, near_duplicates, near_duplicates_sharded
    from dgamix.pipeline.engine import EngineConfig, session

    cfg = DedupConfig()
    if method == "sharded-files":  # texts never loaded here: only what load_corpus keeps per document
        from dgamix.pipeline.core.sources import DocTexts
        from dgamix.pipeline.corpus import CorpusSpec, load_corpus

        docs, _ = load_corpus([files], CorpusSpec(), keep_texts=False)
        refs = DocTexts.of_table(docs, "text")
        assert len(refs) == n, "the bench corpus has no blank texts (dgamix would skip them)"
        base, cores = rss_mib(), 1
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.perf_counter()
            dup = near_duplicates_sharded([refs.refs(np.arange(i, min(i + shard, n))) for i in range(0, n, shard)],
                                          cfg, folder, EngineConfig("local"))
    else:
        texts = corpus(n)
        base = rss_mib()
        t0 = time.perf_counter()
        if method == "in-memory":
            dup, cores = near_duplicates(texts, cfg), 1
        else:
            engine = EngineConfig("ray", num_workers=workers) if method == "sharded-ray" else EngineConfig("local")
            cores = 1
            with session(engine), tempfile.TemporaryDirectory() as folder:
                if engine.is_ray:  # the signature tasks take every CPU of the instance
                    import ray

                    cores = int(ray.cluster_resources().get("CPU", 1))
                t0 = time.perf_counter()  # Ray's start-up is not dedup's cost
                dup = near_duplicates_sharded([texts[i:i + shard] for i in range(0, n, shard)], cfg, folder, engine)
    sec = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    np.save(out + ".npy", dup)
    Path(out).write_text(json.dumps({"method": method, "docs": n, "seconds": sec, "docs_per_s": n / sec,
                                     "cores": cores, "docs_per_s_per_core": n / sec / cores,
                                     "peak_rss_mib": peak, "dedup_rss_mib": peak - base,
                                     "duplicates": int((dup >= 0).sum())}))


def datasketch_signatures(texts: list[str], cfg) -> np.ndarray:
    """The per-shingle signatures dedup computed before: datasketch MinHash.bulk over each text's
    shingle set (its default SHA-1 shingle hash), (n, num_perm)."""
    from datasketch import MinHash

    from dgamix.pipeline.dedup import shingles

    return np.stack([m.hashvalues for m in MinHash.bulk([list(shingles(t, cfg.shingle)) for t in texts],
                                                        num_perm=cfg.num_perm, seed=cfg.seed)])


def signature_throughput(texts: list[str], repeat: int) -> dict:
    """docs/s of the vectorised signatures and of datasketch's per-shingle MinHash on ``texts``
    (one core, this process, best of ``repeat`` alternating runs)."""
    from dgamix.pipeline.dedup import DedupConfig, signatures

    cfg = DedupConfig()
    signatures(texts[:10], cfg), datasketch_signatures(texts[:10], cfg)  # imports and one-off tables
    best = {"vectorised": float("inf"), "datasketch": float("inf")}
    for _ in range(repeat):
        for name, f in (("vectorised", signatures), ("datasketch", datasketch_signatures)):
            t0 = time.perf_counter()
            f(texts, cfg)
            best[name] = min(best[name], time.perf_counter() - t0)
    words = sum(len(t.split()) for t in texts) / max(1, len(texts))
    return {"docs": len(texts), "chars_per_doc": sum(map(len, texts)) / max(1, len(texts)), "words_per_doc": words,
            **{f"{k}_docs_per_s": len(texts) / v for k, v in best.items()},
            "speedup": best["datasketch"] / best["vectorised"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=5000)
    ap.add_argument("--quick", action="store_true", help="(make bench) the same 100k documents: the goal's size")
    ap.add_argument("--methods", default="in-memory,sharded-local,sharded-ray,sharded-files")
    ap.add_argument("--signature-docs", type=int, default=5000, help="texts for the signatures-only figures (0: none)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each signature function (the best counts)")
    ap.add_argument("--out", type=Path, default=RESULTS / "dedup.json")
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        one(args.one[0], args.docs, args.workers, args.shard_size, args.one[1], args.one[2])
        return {}
    methods = [m for m in args.methods.split(",") if m]
    sig = None
    if args.signature_docs:
        sig = signature_throughput(corpus(min(args.signature_docs, args.docs)), args.repeat)
    rows, dups = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        files = str(Path(tmp) / "corpus.parquet")
        if "sharded-files" in methods:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"text": corpus(args.docs)}), files, row_group_size=args.shard_size)
        for m in methods:
            f = str(Path(tmp) / m)
            subprocess.run([sys.executable, "-m", "bench.micro.dedup", "--one", m, f, files, "--docs", str(args.docs), "--workers",
                            str(args.workers), "--shard-size", str(args.shard_size)], check=True, cwd=ROOT)
            rows[m] = json.loads(Path(f).read_text())
            dups[m] = np.load(f + ".npy")
    same = all(np.array_equal(d, next(iter(dups.values()))) for d in dups.values())
    out = {"command": "python -m bench.micro.dedup " + " ".join(argv if argv is not None else sys.argv[1:]),
           "docs": args.docs, "shard_size": args.shard_size, "source": str(POOL if POOL.exists() else "slice"),
           "rows": rows, "identical_dup_of": same, "signatures": sig}
    if sig:
        print(f"signatures, one core, {sig['docs']:,} texts (~{sig['chars_per_doc']:.0f} characters, "
              f"~{sig['words_per_doc']:.0f} words each): vectorised {sig['vectorised_docs_per_s']:,.0f} docs/s, "
              f"datasketch per shingle {sig['datasketch_docs_per_s']:,.0f} docs/s ({sig['speedup']:.1f}x)")
    if rows:
        print(f"{'method':<15}{'docs/s':>9}{'per core':>10}{'peak RSS MiB':>14}{'dedup adds':>12}{'dups':>8}")
        for m, r in rows.items():
            print(f"{m:<15}{r['docs_per_s']:>9.0f}{r['docs_per_s_per_core']:>10.0f}{r['peak_rss_mib']:>14.0f}"
                  f"{r['dedup_rss_mib']:>12.0f}{r['duplicates']:>8}")
        print(f"{args.docs:,} documents; identical dup_of across methods: {same}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()

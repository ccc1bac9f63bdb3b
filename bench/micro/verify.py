"""What verify-on-read costs: reading a 100k-document workspace's manifests with and without the
checks dgamix makes (pipeline/core/manifest.py).

Builds, in a temporary folder, the manifests a 100,000-document workspace holds that are read
whole by later stages: the embedding parts (384-d float16 vectors in shards of 10,000, as
`dgamix embed` writes them), docs.parquet and the assignment parts of a 3-level clustering.
Each is written with page checksums (as dgamix writes every manifest), then read three ways,
interleaved and repeated: plain (pyarrow, no verification), with page-checksum verification
(what dgamix does), and plain + the sha256 of the whole file (the alternative). Reported: seconds
per full read of each kind and the ratios to the plain read of the same run.

    python -m bench.micro.verify [--docs 100000] [--repeats 5]     # JSON in bench/micro/results/verify.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.manifest import embedding_array

RESULTS = Path(__file__).resolve().parent / "results"


def build(folder: Path, n: int, shard: int = 10_000, dim: int = 384, seed: int = 0) -> dict[str, list[Path]]:
    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {"embeddings-part": [], "docs": [], "assignments-part": []}
    for s, i in enumerate(range(0, n, shard)):
        ids = np.arange(i, min(n, i + shard))
        x = rng.normal(size=(len(ids), dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        t = pa.table({"doc_id": pa.array(ids, pa.int64()), "embedding": embedding_array(x, "float16")})
        out["embeddings-part"].append(manifest.write(folder / f"emb-{s:05d}.parquet", t, "embeddings-part"))
        labels = rng.integers(0, 64, (len(ids), 3))
        a = pa.table({"doc_id": pa.array(ids, pa.int64()),
                      **{f"level_{j + 1}": pa.array(labels[:, j], pa.int64()) for j in range(3)}})
        out["assignments-part"].append(manifest.write(folder / f"asg-{s:05d}.parquet", a, "assignments-part"))
    docs = pa.table({"doc_id": pa.array(np.arange(n), pa.int64()), "id": [f"doc-{i}" for i in range(n)],
                     "source": ["corpus/part-0001.parquet"] * n, "row": pa.array(np.arange(n), pa.int64()),
                     "n_tokens": pa.array(rng.integers(10, 2000, n), pa.int64()),
                     "dup_of": pa.nulls(n, pa.int64())})
    out["docs"].append(manifest.write(folder / "docs.parquet", docs, "docs"))
    return out


def plain(paths):
    for p in paths:
        pq.read_table(p)


def verified(paths):
    for p in paths:
        pq.read_table(p, page_checksum_verification=True)


def sha256(paths):
    for p in paths:
        pq.read_table(p)
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000, help="documents in the workspace (default 100,000)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats per method (default 5)")
    ap.add_argument("--quick", action="store_true", help="(make bench) the same 100k documents, 3 repeats")
    ap.add_argument("--out", type=Path, default=RESULTS / "verify.json")
    args = ap.parse_args()
    repeats = 3 if args.quick else args.repeats
    methods = {"plain": plain, "page_checksums": verified, "plain+sha256": sha256}
    result: dict = {"docs": args.docs, "repeats": repeats, "kinds": {},
                    "command": f"python -m bench.micro.verify --docs {args.docs} --repeats {repeats}"}
    with tempfile.TemporaryDirectory() as tmp:
        kinds = build(Path(tmp), args.docs)
        for kind, paths in kinds.items():
            times = {m: [] for m in methods}
            for _ in range(repeats):
                for m, fn in methods.items():  # interleaved: drift in the machine's load hits all alike
                    t0 = time.perf_counter()
                    fn(paths)
                    times[m].append(time.perf_counter() - t0)
            med = {m: float(np.median(v)) for m, v in times.items()}
            size = sum(p.stat().st_size for p in paths)
            result["kinds"][kind] = {"files": len(paths), "bytes": size, "seconds": med,
                                     "ratio_to_plain": {m: med[m] / med["plain"] for m in methods}}
            print(f"{kind:17s} {len(paths):3d} files {size / 1e6:7.1f} MB   " + "   ".join(
                f"{m} {med[m] * 1e3:7.1f} ms ({med[m] / med['plain']:.2f}x)" for m in methods), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

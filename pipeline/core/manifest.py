"""Parquet manifests with key-value metadata, written atomically.

Every file dgamix writes carries, in the Parquet footer under the key ``dgamix``, a JSON
object: schema version, dgamix version, the manifest's kind, the parameters that made it and
the fingerprint of its inputs. ``write`` goes through a temporary name and a rename
(``files.atomic_file``), so a crash never leaves a half file that looks complete, and writes a
CRC32 per page. ``read`` checks kind, schema version and columns, verifies every page it reads
against its checksum, and turns every low-level failure into a :class:`DgamixError` that names
the file and the fix.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dgamix import __version__
from dgamix.pipeline.core import files
from dgamix.pipeline.core.errors import DgamixError, first_line

SCHEMA_VERSION = 1
META_KEY = b"dgamix"


def fingerprint(*parts: Any) -> str:
    """A short stable hash (16 hex chars) of JSON-serialisable parts (parameters, file stats...)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_checksum(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def embedding_array(emb: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """(n, d) array -> Arrow fixed_size_list<float32|float16>[d] column (how manifests store vectors)."""
    if dtype not in ("float32", "float16"):
        raise DgamixError(f"--dtype {dtype} is not supported; use float32 or float16.")
    flat = pa.array(emb.astype(dtype, copy=False).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])


def embedding_matrix(col: pa.ChunkedArray | pa.Array, dim: int | None = None) -> np.ndarray:
    """A fixed_size_list<float16|float32>[dim] column -> C-contiguous float32 (rows, dim); the one
    reader of vector columns (embeddings, target embeddings, centroids). ``dim``: the list size."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    dim = arr.type.list_size if dim is None else dim
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values.reshape(-1, dim), dtype=np.float32)


def _meta_bytes(kind: str, params: dict | None, inputs: str | None, extra: dict | None) -> bytes:
    meta = {"schema_version": SCHEMA_VERSION, "dgamix_version": __version__, "kind": kind,
            "params": params or {}, "inputs": inputs}
    meta.update(extra or {})
    return json.dumps(meta, default=str).encode()


def write(path: str | Path, table: pa.Table, kind: str, params: dict | None = None,
          inputs: str | None = None, extra: dict | None = None) -> Path:
    """Write ``table`` to ``path`` atomically, with dgamix metadata. Returns the path.

    kind: what the file is ("docs", "embeddings-part", "tree", ...), checked on read.
    params: the parameters that made it. inputs: fingerprint of its inputs.
    """
    with writer(path, table.schema, kind, params, inputs, extra) as w:
        w.write_table(table)
    return Path(path)


@contextlib.contextmanager
def writer(path: str | Path, schema: pa.Schema, kind: str, params: dict | None = None,
           inputs: str | None = None, extra: dict | None = None):
    """Stream record batches into ``path`` with bounded memory; atomic like :func:`write`.

    Yields a ``pyarrow.parquet.ParquetWriter``; the file appears under its name only when the
    block completes, so an interrupted stream leaves no file that looks complete.
    """
    schema = schema.with_metadata({**(schema.metadata or {}), META_KEY: _meta_bytes(kind, params, inputs, extra)})
    # a CRC32 per page: every read verifies it (read, kmeans.Tree.read), so a flipped byte is never used
    with files.atomic_file(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd", write_page_checksum=True) as w:
        yield w


def _meta_of(schema: pa.Schema, path: Path) -> dict:
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise DgamixError(f"{path} is a Parquet file but not a dgamix manifest (no dgamix metadata); "
                          f"rebuild it with the dgamix stage that writes it.")
    return json.loads(raw)


def _check(meta: dict, path: Path, kind: str | None) -> dict:
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DgamixError(f"{path} has manifest schema version {meta.get('schema_version')}, this dgamix "
                          f"({__version__}) reads version {SCHEMA_VERSION}; rebuild it with this version "
                          f"(rerun the stage with --overwrite).")
    if kind is not None and meta.get("kind") != kind:
        raise DgamixError(f"{path} is a '{meta.get('kind')}' manifest, expected '{kind}'.")
    return meta


_TYPES = {"int": (pa.types.is_integer, "integers"), "float": (pa.types.is_floating, "floats"),
          "str": (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "text"),
          "vector": (pa.types.is_fixed_size_list, "fixed-size float vectors")}

# The columns each kind of manifest must have, with their types. read_meta (so also read)
# checks them from the footer alone, before any stage starts work on a file.
COLUMNS: dict[str, dict[str, str]] = {
    "docs": {"doc_id": "int", "id": "str", "source": "str", "row": "int", "n_tokens": "int", "dup_of": "int"},
    "embeddings": {"shard": "int", "first_doc_id": "int", "last_doc_id": "int", "rows": "int", "path": "str"},
    "embeddings-part": {"doc_id": "int", "embedding": "vector"},
    "tree": {"level": "int", "domain": "int", "parent": "int", "size": "int", "centroid": "vector"},
    "assignments-part": {"doc_id": "int", "level_1": "int"},
    "domains": {"level": "int", "domain": "int", "n_docs": "int"},
    "target": {"example_id": "int", "split": "str", "text": "str", "embedding": "vector"},
    "target-assignments": {"example_id": "int", "split": "str", "level_1": "int"},
    "basis": {"basis": "int", "name": "str", "domain": "int", "weight": "float"},
    "run-metrics": {"step": "int", "split": "str", "loss": "float"},
    "run-weights": {"step": "int", "weight": "float"},
    "schedule": {"step": "int", "position": "int", "doc_id": "int", "domain": "int"},
}


def _check_columns(schema: pa.Schema, path: Path, kind: str) -> None:
    want = dict(COLUMNS.get(kind, {}))
    want.update({n: "int" for n in schema.names if n.startswith("level_") and kind in ("assignments-part",
                                                                                       "target-assignments")})
    for col, typ in want.items():
        if col not in schema.names:
            raise DgamixError(f"{path} lacks column '{col}' (has {schema.names}), so it is not a complete "
                              f"'{kind}' manifest; rebuild it with the dgamix stage that writes it (--overwrite).")
        ok, what = _TYPES[typ]
        if not ok(schema.field(col).type):
            raise DgamixError(f"{path}: column '{col}' is {schema.field(col).type}, expected {what}; the file was "
                              f"not written by this dgamix: rebuild it with the stage that writes it (--overwrite).")


def read_meta(path: str | Path, kind: str | None = None) -> dict:
    """The dgamix metadata of a manifest, reading only the footer.

    Checks, before any work is done on the file: that it is Parquet, carries dgamix metadata of
    this schema version and of ``kind``, and (for a known kind) has the columns and types
    :data:`COLUMNS` lists.
    """
    path = Path(path)
    if not path.exists():
        raise DgamixError(f"{path} does not exist; run the stage that writes it first.")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise DgamixError(f"{path} is corrupt or not Parquet ({e}); delete it and rerun the stage "
                          f"that writes it.") from e
    meta = _check(_meta_of(schema, path), path, kind)
    if kind is not None:
        _check_columns(schema, path, kind)
    return meta


def read(path: str | Path, kind: str | None = None, columns: list[str] | None = None,
         dictionary: list[str] | None = None) -> tuple[pa.Table, dict]:
    """Read a manifest; returns (table, metadata). Clear errors for missing/corrupt/old files.
    ``dictionary``: columns read dictionary-encoded (few distinct values over many rows, such as
    docs.parquet's source: one string per file instead of one per document)."""
    path = Path(path)
    meta = read_meta(path, kind)
    try:
        table = pq.read_table(path, columns=columns, read_dictionary=dictionary, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as e:
        raise corrupt(path, e) from None
    if columns:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise DgamixError(f"{path} lacks columns {missing}; rebuild it with this dgamix version.")
    return table, meta


def corrupt(path: str | Path, e: Exception) -> DgamixError:
    """The one line for a manifest whose bytes are damaged (a page checksum fails, a truncated file)."""
    why = "a page checksum failed: the file was modified or damaged on disk" if "CRC" in str(e) or "checksum" in str(
        e) else f"{first_line(e)}"
    return DgamixError(f"{path} is corrupt ({why}); nothing of it was used. Rerun the stage that writes it with "
                       f"--overwrite (or delete it and rerun).")


def read_parts(paths: list[Path], kind: str, columns: list[str] | None = None) -> pa.Table:
    """The parts of a sharded manifest (assignments, embeddings) read, verified and concatenated."""
    tables = [read(p, kind, columns)[0] for p in paths]
    return pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns or []})


def require_columns(names: list[str], required: list[str], where: str, fix: str) -> None:
    """Raise a DgamixError naming the missing columns of ``where``."""
    missing = [c for c in required if c not in names]
    if missing:
        raise DgamixError(f"{where} lacks column(s) {missing} (has {names}); {fix}")

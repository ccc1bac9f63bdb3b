"""Your own vectors: a Parquet file of (id, vector) read in place of encoding with MiniLM.

`dgamix embed CORPUS --vectors V.parquet` and `dgamix target FILE --vectors TV.parquet` take, per
document, the vector under the corpus's id (the ``--id-column`` name, matched as strings like the
ids in docs.parquet). Checked before any other work: every corpus id present exactly once (extra
ids, e.g. of rows skipped as empty, are ignored and counted), one dimension, no null vector,
finite values, no zero vector. dgamix L2-normalises every vector (the clustering compares
directions, as with MiniLM's normalised output) and reports how many were not of unit norm.

The workspace records the encoder identity (:func:`identity`): its name (``--vectors-encoder``,
default "user vectors") and dimension, or the MiniLM model and dimension; a target whose vectors
come from another encoder or dimension is refused.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dgamix.pipeline.core import files
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.manifest import file_checksum
from dgamix.pipeline.core.params import TargetConfig

VECTOR_COLUMN = "vector"
UNNAMED = TargetConfig.vectors_encoder  # "user vectors": the name of vectors whose model is not named
UNIT_TOLERANCE = 1e-3  # a norm within 1 +- this counts as already normalised (reported, not an error)
BATCH_ROWS = 65_536    # vectors read per batch
EXAMPLES = 3           # ids named in an error


@dataclass(frozen=True)
class UserVectors:
    """A vectors file and the name of the model that made its vectors (recorded; a target's must match)."""

    path: str
    encoder: str = UNNAMED


def identity(params: dict) -> dict:
    """The encoder identity of embeddings.parquet's (or a target's) params: {"encoder", "dim", "user"}."""
    v = params.get("vectors")
    if v:
        return {"encoder": v["encoder"], "dim": int(v["dim"]), "user": True}
    return {"encoder": str(params.get("model")), "dim": int(params.get("dim") or 0), "user": False}


def describe(ident: dict) -> str:
    """'your vectors "e5" (768-d)' / 'the model all-MiniLM-L6-v2 (384-d)'."""
    if ident["user"]:
        return f"your vectors {ident['encoder']!r} ({ident['dim']}-d)"
    return f"the model {ident['encoder']} ({ident['dim']}-d)"


def _examples(values) -> str:
    shown = [repr(v) for v in list(values)[:EXAMPLES]]
    return ", ".join(shown) + (", ..." if len(values) > EXAMPLES else "")


class VectorFile:
    """A --vectors Parquet file: its ``id_column`` (as strings) and its ``vector`` column, checked."""

    def __init__(self, path: str | Path, id_column: str, option: str = "--vectors") -> None:
        self.path, self.id_column, self.option = Path(path), id_column, option
        if not self.path.is_file():
            raise DgamixError(f"{option} {self.path} does not exist; give a Parquet file with columns "
                              f"{id_column!r} and {VECTOR_COLUMN!r}.")
        try:
            # pre_buffer off: streaming keeps one batch, not the cached bytes of every row group read
            self.file = pq.ParquetFile(self.path, pre_buffer=False)
            schema = self.file.schema_arrow
        except (pa.ArrowException, OSError, ValueError) as e:
            raise DgamixError(f"{option} {self.path}: cannot read as Parquet ({(str(e).splitlines() or [''])[0]}); "
                              f"give a Parquet file with columns {id_column!r} and {VECTOR_COLUMN!r}.") from None
        for col, what in ((id_column, "the documents' ids (the --id-column name)"), (VECTOR_COLUMN, "the vectors")):
            if col not in schema.names:
                raise DgamixError(f"{option} {self.path} has no column {col!r} for {what} (columns: {schema.names}).")
        t = schema.field(VECTOR_COLUMN).type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) or \
                not pa.types.is_floating(t.value_type):
            raise DgamixError(f"{option} {self.path}: column {VECTOR_COLUMN!r} is {t}, not a list of floats; store "
                              f"each vector as a list of float32 or float16.")
        self.dim = t.list_size if pa.types.is_fixed_size_list(t) else None  # else: from the first vector
        self.n = self.file.metadata.num_rows
        self._ids: pa.Array | None = None

    def dimension(self) -> int:
        """The vectors' dimension: the list size, or the length of the first vector of a variable-size list."""
        if self.dim is None:
            try:
                for batch in self.file.iter_batches(batch_size=1, columns=[VECTOR_COLUMN]):
                    first = batch.column(0)[0]
                    self.dim = len(first) if first.is_valid else 0
                    break
            except (pa.ArrowException, OSError) as e:
                raise DgamixError(f"{self.option} {self.path}: cannot read ({(str(e).splitlines() or [''])[0]}); "
                                  f"check the file is complete.") from None
        return int(self.dim or 0)

    def checksum(self) -> str:
        """sha256 of the file (recorded: a changed file makes the embeddings again)."""
        return file_checksum(self.path)

    def ids(self) -> pa.Array:
        """The file's ids as strings (as docs.parquet's: integers and the like converted)."""
        if self._ids is None:
            from dgamix.pipeline.corpus import label_column

            try:
                table = self.file.read(columns=[self.id_column])
            except (pa.ArrowException, OSError, ValueError) as e:
                raise DgamixError(f"{self.option} {self.path}: cannot read ({(str(e).splitlines() or [''])[0]}); "
                                  f"check the file is complete.") from None
            self._ids = label_column(table, self.id_column, self.path, "--id-column", "ids")
        return self._ids

    def match(self, corpus_ids: pa.Array) -> np.ndarray:
        """The row in this file of every corpus id (int64, in the corpus's order); one line for ids
        missing here or present more than once."""
        ids = self.ids()
        corpus_ids = corpus_ids.combine_chunks() if isinstance(corpus_ids, pa.ChunkedArray) else corpus_ids
        counts = pc.value_counts(ids)
        dup = counts.filter(pc.and_(pc.greater(counts.field("counts"), 1),
                                    pc.is_in(counts.field("values"), value_set=corpus_ids)))
        if len(dup):
            raise DgamixError(f"{self.option} {self.path}: {len(dup):,} ids have more than one vector (e.g. "
                              f"{_examples(dup.field('values').to_pylist())}); give each document one vector.")
        rows = pc.index_in(corpus_ids, value_set=ids)
        if rows.null_count:
            missing = corpus_ids.filter(pc.is_null(rows))
            raise DgamixError(f"{self.option} {self.path}: {len(missing):,} of the {len(corpus_ids):,} documents have "
                              f"no vector (ids {_examples(missing.to_pylist())} are not in its column "
                              f"{self.id_column!r}); give a vector for every document.")
        return np.asarray(rows.to_numpy(zero_copy_only=False), np.int64)

    def scatter(self, rows: np.ndarray, out: np.ndarray) -> int:
        """Write the vector of file row ``rows[i]`` into ``out[i]`` (float32 (n, dim): an array or a :class:`RowFile`),
        L2-normalised, reading the file once batch by batch. Returns how many vectors were not of unit
        norm before. One line for a vector of another dimension, a null vector, a value that is not
        finite or a zero vector (of the documents used)."""
        dest = np.full(self.n, -1, np.int64)
        dest[rows] = np.arange(rows.size)
        start, renormalised = 0, 0
        try:
            batches = self.file.iter_batches(batch_size=BATCH_ROWS, columns=[VECTOR_COLUMN])
            for batch in batches:
                col = batch.column(0)
                k = len(col)
                x = self._matrix(col, start)
                d = dest[start:start + k]
                used = d >= 0
                x = x[used]
                bad = ~np.isfinite(x).all(axis=1)
                if bad.any():
                    self._fail(start + np.flatnonzero(used)[bad], "values that are not finite (NaN or infinite)",
                               "replace them, or leave those documents out of the corpus")
                norm = np.linalg.norm(x.astype(np.float64), axis=1)
                if (norm == 0).any():
                    self._fail(start + np.flatnonzero(used)[norm == 0], "all-zero vectors (no direction)",
                               "give those documents a real vector, or leave them out of the corpus")
                renormalised += int((np.abs(norm - 1) > UNIT_TOLERANCE).sum())
                out[d[used]] = (x / norm[:, None]).astype(np.float32)
                start += k
        except (pa.ArrowException, OSError) as e:
            raise DgamixError(f"{self.option} {self.path}: cannot read ({(str(e).splitlines() or [''])[0]}); "
                              f"check the file is complete.") from None
        return renormalised

    def _matrix(self, col: pa.Array, start: int) -> np.ndarray:
        if col.null_count:
            self._fail(start + np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False)), "no vector (null)",
                       "give every row a vector")
        if pa.types.is_fixed_size_list(col.type):
            values, dim = col.flatten(), col.type.list_size
        else:
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            if self.dim is None and len(lengths):
                self.dim = int(lengths[0])
            other = np.flatnonzero(lengths != self.dim)
            if other.size:
                self._fail(start + other, f"{int(lengths[other[0]])} values where the first vector has "
                           f"{self.dim}", "give every vector one dimension")
            values, dim = col.flatten(), self.dim
        if dim == 0:
            raise DgamixError(f"{self.option} {self.path}: the vectors have no values; give vectors of dimension >= 1.")
        return values.to_numpy(zero_copy_only=False).reshape(-1, dim)

    def _fail(self, rows: np.ndarray, what: str, fix: str) -> None:
        ids = self.ids().take(pa.array(rows[:EXAMPLES], pa.int64())).to_pylist()
        raise DgamixError(f"{self.option} {self.path}: {rows.size:,} vectors have {what} (ids {_examples(ids)}); {fix}.")


class RowFile:
    """An (n, dim) float32 matrix in a file, written and read by row position (``os.pwrite`` /
    ``os.pread``): :meth:`VectorFile.scatter` writes into it and the embed stage reads it back shard
    by shard, so the process holds one batch of vectors, not the matrix (a memory map would keep
    every page it wrote resident until the kernel writes it back)."""

    def __init__(self, path: str | Path, n: int, dim: int) -> None:
        self.path, self.n, self.dim, self._row = Path(path), int(n), int(dim), 4 * int(dim)
        self._fd = None
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self._fd, self.n * self._row)

    def __setitem__(self, rows, x) -> None:
        rows = np.asarray(rows, np.int64).reshape(-1)
        x = np.asarray(x, np.float32).reshape(rows.size, self.dim)
        order = np.argsort(rows, kind="stable")
        rows, x = rows[order], x[order]
        cut = np.r_[0, np.flatnonzero(np.diff(rows) != 1) + 1, rows.size]  # runs of consecutive rows
        for a, b in zip(cut[:-1].tolist(), cut[1:].tolist()):
            data, at = memoryview(np.ascontiguousarray(x[a:b])).cast("B"), int(rows[a]) * self._row
            while data:
                done = os.pwrite(self._fd, data, at)
                data, at = data[done:], at + done

    def __getitem__(self, rows) -> np.ndarray:
        """The vectors at ``rows`` (one read of the span from the smallest to the largest row)."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if rows.size == 0:
            return np.zeros((0, self.dim), np.float32)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        buf = files.read_at(self._fd, (hi - lo) * self._row, lo * self._row)
        if buf is None:
            raise DgamixError(f"{self.path} is shorter than {self.n:,} vectors; rerun the stage.")
        return np.frombuffer(buf, np.float32).reshape(-1, self.dim)[rows - lo]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


def read_vectors(vectors: UserVectors, corpus_ids: pa.Array, id_column: str, option: str = "--vectors"
                 ) -> tuple[np.ndarray, dict]:
    """The normalised float32 (n, dim) vectors of ``corpus_ids`` (in memory: a target's few) and what
    the manifest records of them (:func:`record`)."""
    vf = VectorFile(vectors.path, id_column, option)
    rows = vf.match(corpus_ids)
    out = np.zeros((rows.size, vf.dimension()), np.float32)
    renormalised = vf.scatter(rows, out)
    return out, record(vf, vectors, renormalised, rows.size)


def record(vf: VectorFile, vectors: UserVectors, renormalised: int, used: int) -> dict:
    """What a manifest records of user vectors (their identity, file, checksum and normalisation)."""
    return {"encoder": vectors.encoder, "dim": int(vf.dim or 0), "file": str(vf.path.resolve()),
            "checksum": vf.checksum(), "rows": int(vf.n), "used": int(used), "renormalised": int(renormalised)}


def summary_line(rec: dict) -> str:
    """The printed summary of user vectors: what was used and how many dgamix normalised."""
    return (f"{rec['used']:,} of {rec['rows']:,} rows of {rec['file']} ({rec['encoder']}, {rec['dim']}-d); "
            f"{rec['renormalised']:,} were not of unit norm (+-{UNIT_TOLERANCE:g}); dgamix L2-normalises every vector")


def check_same_encoder(ws_params: dict, target: dict | None, where: str) -> None:
    """Refuse target vectors of another encoder than the workspace's: ``target`` is the target's
    user-vector record (None: the target is to be embedded with the workspace's model)."""
    have = identity(ws_params)
    if target is None:
        if have["user"]:
            raise DgamixError(f"{where} was embedded with {describe(have)}; embed the target with the same encoder "
                              f"and pass its vectors with --vectors TV.parquet (and --vectors-encoder "
                              f"{have['encoder']!r} if the corpus named it).")
        return
    want = {"encoder": target["encoder"], "dim": int(target["dim"]), "user": True}
    if not have["user"]:
        raise DgamixError(f"{where} was embedded with {describe(have)} by dgamix; a target's --vectors must come with "
                          f"a corpus embedded with --vectors: leave --vectors out (dgamix embeds the target with "
                          f"the same model), or embed the corpus with your vectors.")
    if want != have:
        raise DgamixError(f"the target's vectors are {describe(want)} but {where} was embedded with {describe(have)}; "
                          f"give target vectors of the same encoder (--vectors-encoder names it).")

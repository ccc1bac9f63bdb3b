"""Reading a corpus (Parquet, JSONL, or a folder of plain-text files) into the docs manifest.

Text is never copied into the workspace: docs.parquet records (source, row) and
:class:`TextReader` reads a document's text back from its source when a later stage needs it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import DgamixError
from pipeline.manifest import file_checksum

TABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt", ".md", ".text")


@dataclass(frozen=True)
class CorpusSpec:
    """Which columns of the input hold the text and the user's id, and what else to keep."""

    text_column: str = "text"
    id_column: str = "id"
    keep_columns: tuple[str, ...] = field(default_factory=tuple)


def expand_inputs(paths: list[str | Path]) -> list[Path]:
    """Input files in a stable order: files as given; folders expanded recursively (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TABLE_SUFFIXES + TEXT_SUFFIXES)
            if not found:
                raise DgamixError(f"{p} is a folder with no .parquet, .jsonl or .txt files; point dgamix at the corpus files.")
            out.extend(found)
        elif p.is_file():
            if p.suffix.lower() not in TABLE_SUFFIXES + TEXT_SUFFIXES:
                raise DgamixError(f"{p}: unsupported file type '{p.suffix}'; give .parquet, .jsonl or a folder of .txt files.")
            out.append(p)
        else:
            raise DgamixError(f"{p} does not exist; check the corpus path.")
    if not out:
        raise DgamixError("no corpus given; pass at least one .parquet, .jsonl or folder of .txt files.")
    return [p.resolve() for p in out]


def _read_text_file(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DgamixError(f"{path}: not valid UTF-8 (byte {e.start}); re-encode it as UTF-8 "
                          f"(e.g. `iconv -f latin1 -t utf-8`) and rerun.") from None
    except OSError as e:
        raise DgamixError(f"{path}: cannot read ({e.strerror}); check the path and its permissions.") from None


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One input file as an Arrow table (a .txt file is one row with column 'text')."""
    suffix = path.suffix.lower()
    try:
        if suffix in TEXT_SUFFIXES:
            return pa.table({"text": [_read_text_file(path)]})
        if suffix == ".parquet":
            return pq.read_table(path, columns=columns)
        return _read_jsonl(path)
    except DgamixError:
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DgamixError(f"{path}: cannot read as {suffix[1:]} ({str(e).splitlines()[0]}); check the file "
                          f"is complete and in that format.") from None


def _read_jsonl(path: Path) -> pa.Table:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DgamixError(f"{path}: not valid UTF-8 (byte {e.start}); re-encode it as UTF-8 and rerun.") from None
    rows = []
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DgamixError(f"{path}: line {i + 1} is not JSON ({e.msg}); fix or remove it.") from None
    if not rows:
        return pa.table({})
    return pa.Table.from_pylist(rows)


def _text_column(table: pa.Table, path: Path, spec: CorpusSpec) -> pa.Array:
    if path.suffix.lower() in TEXT_SUFFIXES:
        return table.column("text").combine_chunks().cast(pa.large_string())
    if spec.text_column not in table.column_names:
        raise DgamixError(f"{path} has no text column '{spec.text_column}' (columns: {table.column_names}); "
                          f"pass --text-column NAME.")
    col = table.column(spec.text_column).combine_chunks()
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        try:
            col = col.cast(pa.string())
        except pa.ArrowInvalid:
            raise DgamixError(f"{path}: column '{spec.text_column}' holds bytes that are not valid UTF-8; "
                              f"decode it to UTF-8 text before embedding.") from None
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type)):
        raise DgamixError(f"{path}: column '{spec.text_column}' is {col.type}, not text; pass the text "
                          f"column with --text-column.")
    return col.cast(pa.large_string())


def load_corpus(paths: list[str | Path], spec: CorpusSpec) -> tuple[pa.Table, dict]:
    """Read every input; returns (docs table without doc_id/n_tokens/dup_of, stats).

    Rows whose text is null, empty or whitespace are skipped and counted. User ids are the
    id column when present (cast to string), else "<file stem>:<row>". Duplicate ids and an
    empty corpus are errors.
    """
    files = expand_inputs(paths)
    parts, skipped, texts = [], 0, []
    for path in files:
        table = read_table(path)
        text = _text_column(table, path, spec)
        n = len(text)
        if spec.id_column in table.column_names:
            ids = table.column(spec.id_column).combine_chunks().cast(pa.string())
            if ids.null_count:
                raise DgamixError(f"{path}: column '{spec.id_column}' has {ids.null_count} empty ids; fill them "
                                  f"or pass --id-column of a complete column.")
        else:
            ids = pa.array([f"{path.stem}:{i}" for i in range(n)], pa.string())
        keep = pc.invert(pc.fill_null(pc.match_substring_regex(text, r"^\s*$"), True))
        skipped += n - pc.sum(keep).as_py() if n else 0
        cols = {"id": ids, "source": pa.array([str(path)] * n, pa.string()),
                "row": pa.array(range(n), pa.int64()),
                "n_chars": pc.fill_null(pc.utf8_length(text), 0).cast(pa.int64())}
        for c in spec.keep_columns:
            if c not in table.column_names:
                raise DgamixError(f"{path} has no column '{c}' for --keep-columns (columns: {table.column_names}).")
            cols[c] = table.column(c).combine_chunks()
        parts.append(pa.table(cols).filter(keep))
        texts.append(text.filter(keep))
    docs = pa.concat_tables(parts, promote_options="permissive")
    if docs.num_rows == 0:
        raise DgamixError(f"the corpus {', '.join(map(str, paths))} has no non-empty documents "
                          f"({skipped} empty rows skipped); check --text-column.")
    counts = pc.value_counts(docs.column("id"))
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dup):
        example = dup[0]["values"].as_py()
        raise DgamixError(f"duplicate ids in column '{spec.id_column}' ({len(dup)} ids repeat, e.g. {example!r}); "
                          f"make ids unique or pass --id-column of a unique column.")
    stats = {"files": [str(f) for f in files], "skipped_empty": int(skipped), "n_docs": docs.num_rows,
             "checksums": {str(f): file_checksum(f) for f in files}}
    return docs, {"texts": pa.chunked_array(texts).combine_chunks(), **stats}


class TextReader:
    """Reads documents' text back from their sources by (source, row).

    Keeps the last source's text column in memory, so reading shard after shard in input
    order reads each source file about once.
    """

    def __init__(self, text_column: str = "text"):
        self.text_column = text_column
        self._source: str | None = None
        self._col: pa.Array | None = None

    def _column(self, source: str) -> pa.Array:
        if source != self._source:
            path = Path(source)
            if not path.exists():
                raise DgamixError(f"corpus file {path} (recorded in docs.parquet) is gone; restore it or re-embed.")
            spec = CorpusSpec(text_column=self.text_column)
            cols = [self.text_column] if path.suffix.lower() == ".parquet" else None
            self._col = _text_column(read_table(path, cols), path, spec)
            self._source = source
        return self._col

    def read(self, sources: list[str], rows: list[int]) -> list[str]:
        """Texts of the documents at (sources[i], rows[i]), in that order."""
        out: list[str] = [""] * len(rows)
        i = 0
        while i < len(rows):  # runs of the same source: one take per run
            j = i
            while j < len(rows) and sources[j] == sources[i]:
                j += 1
            col = self._column(sources[i])
            out[i:j] = col.take(pa.array(rows[i:j], pa.int64())).to_pylist()
            i = j
        return out

"""Reading a corpus (Parquet, JSONL, or a folder of plain-text files) into the docs manifest.

Text is never copied into the workspace: docs.parquet records (source, row) and
:class:`TextReader` reads a document's text back from its source when a later stage needs it.
"""
from __future__ import annotations

import json
import os
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


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# docs.parquet's own columns: an input column of one of these names cannot be carried along
RESERVED_COLUMNS = ("doc_id", "id", "source", "row", "n_chars", "n_tokens", "dup_of")


def _decode(path: Path, raw: bytes, bom: bool = False) -> str:
    """``raw`` as UTF-8 text (``bom``: a leading UTF-8 byte-order mark is dropped); a one-line
    DgamixError naming the file otherwise (UTF-16 is recognised by its byte-order mark)."""
    if raw.startswith(UTF16_BOMS):
        raise DgamixError(f"{path}: is UTF-16 (it starts with a UTF-16 byte-order mark), not UTF-8; re-encode it "
                          f"as UTF-8 (e.g. `iconv -f utf-16 -t utf-8`) and rerun.")
    try:
        return raw.decode("utf-8-sig" if bom else "utf-8")
    except UnicodeDecodeError as e:
        raise DgamixError(f"{path}: not valid UTF-8 (byte {e.start}); re-encode it as UTF-8 "
                          f"(e.g. `iconv -f latin1 -t utf-8`) and rerun.") from None


def _read_text_file(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DgamixError(f"{path}: cannot read ({e.strerror}); check the path and its permissions.") from None
    return _decode(path, raw)


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
        if suffix == ".parquet":
            _check_unique_names(path)
        raise DgamixError(f"{path}: cannot read as {suffix[1:]} ({(str(e).splitlines() or [type(e).__name__])[0]}); "
                          f"check the file is complete and in that format.") from None


def _check_unique_names(path: Path) -> None:
    """A one-line error when the Parquet file ``path`` has several columns of one name (Arrow cannot read those)."""
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError, ValueError):
        return
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise DgamixError(f"{path} has several columns named {dup[0]!r}; give every column its own name "
                          f"(e.g. rewrite the file with renamed columns).")


_JSON_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


def _json_kind(value) -> str:
    """'a string', 'an object', 'null', ... (the JSON type of a parsed value, with its article)."""
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _jsonl_column(path: Path, key: str, values: list, lines: list[int]) -> pa.Array:
    """One JSON Lines field as an Arrow array; a one-line DgamixError naming the field and the
    line when its values do not make one column (mixed types, huge integers, lone surrogates)."""
    try:
        return pa.array(values)
    except (pa.ArrowException, OverflowError, ValueError, TypeError) as e:
        first: dict[str, int] = {}
        for v, line in zip(values, lines):
            if v is not None:
                first.setdefault(_json_kind(v), line)
        if len(first) > 1:
            (k1, l1), (k2, l2) = sorted(first.items(), key=lambda kv: kv[1])[:2]
            why = f"line {l1} has {k1}, line {l2} {k2}"
        elif isinstance(e, OverflowError):
            why = "an integer does not fit in 64 bits; write it as a string"
        elif isinstance(e, UnicodeError):
            why = "a string holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)"
        else:
            why = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise DgamixError(f"{path}: field {key!r} cannot be one column ({why}); give it the same JSON type on "
                          f"every line (e.g. all strings).") from None


def _read_jsonl(path: Path) -> pa.Table:
    """JSON Lines: one JSON object per line (lines end in \\n or \\r\\n; a UTF-8 byte-order mark is
    allowed). Characters such as U+2028 or \\x85 inside a line are part of it, not line breaks."""
    text = _decode(path, path.read_bytes(), bom=True)
    columns: dict[str, tuple[list, list[int]]] = {}
    n = 0
    for i, line in enumerate(text.split("\n")):
        if not line.strip(" \t\r"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DgamixError(f"{path}: line {i + 1} is not JSON ({e.msg}); fix or remove it.") from None
        except RecursionError:
            raise DgamixError(f"{path}: line {i + 1} is nested too deeply to read; flatten it or remove it.") from None
        if not isinstance(row, dict):
            raise DgamixError(f"{path}: line {i + 1} is {_json_kind(row)}, not a JSON object; JSON Lines input "
                              f"needs one object per line, e.g. {{\"id\": \"a1\", \"text\": \"...\"}}.")
        for key, value in row.items():
            vals, lines = columns.setdefault(key, ([None] * n, [0] * n))
            vals.append(value)
            lines.append(i + 1)
        n += 1
        for vals, lines in columns.values():  # fields this row lacks are null
            if len(vals) < n:
                vals.append(None)
                lines.append(i + 1)
    if not n:
        return pa.table({})
    return pa.table({key: _jsonl_column(path, key, vals, lines) for key, (vals, lines) in columns.items()})


def _column(table: pa.Table, name: str, path: Path, option: str) -> pa.Array:
    """Column ``name`` of ``table`` as one array; a one-line error when the file has several columns
    of that name (a Parquet file may)."""
    if table.column_names.count(name) > 1:
        raise DgamixError(f"{path} has {table.column_names.count(name)} columns named {name!r}; rename them so "
                          f"{option} names one.")
    return table.column(name).combine_chunks()


def _text_column(table: pa.Table, path: Path, spec: CorpusSpec) -> pa.Array:
    if path.suffix.lower() in TEXT_SUFFIXES:
        return table.column("text").combine_chunks().cast(pa.large_string())
    if spec.text_column not in table.column_names:
        if table.num_rows == 0 and not table.column_names:  # an empty JSON Lines file: no documents
            return pa.array([], pa.large_string())
        raise DgamixError(f"{path} has no text column {spec.text_column!r} (columns: {table.column_names}); "
                          f"pass --text-column NAME.")
    col = _column(table, spec.text_column, path, "--text-column")
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        try:
            col = col.cast(pa.string())
        except pa.ArrowInvalid:
            raise DgamixError(f"{path}: column {spec.text_column!r} holds bytes that are not valid UTF-8; "
                              f"decode it to UTF-8 text before embedding.") from None
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type)):
        raise DgamixError(f"{path}: column {spec.text_column!r} is {col.type}, not text; pass the text "
                          f"column with --text-column.")
    return col.cast(pa.large_string())


def _id_column(table: pa.Table, path: Path, spec: CorpusSpec) -> pa.Array:
    """The user's ids as strings; integers, floats, booleans, dates and UTF-8 bytes are converted,
    nested values (lists, structs) are an error."""
    col = _column(table, spec.id_column, path, "--id-column")
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    try:
        ids = col.cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        what = "holds bytes that are not valid UTF-8" if pa.types.is_binary(col.type) or \
            pa.types.is_large_binary(col.type) else f"is of type {col.type}"
        raise DgamixError(f"{path}: column {spec.id_column!r} {what}, not ids; pass --id-column of a column "
                          f"of strings or integers.") from None
    if ids.null_count:
        raise DgamixError(f"{path}: column {spec.id_column!r} has {ids.null_count} empty ids; fill them "
                          f"or pass --id-column of a complete column.")
    return ids


def _id_prefixes(files: list[Path]) -> list[str]:
    """The prefix of the generated ids ("<prefix>:<row>") of each file: its stem, or, for files whose
    stems clash (a/doc.txt and b/doc.txt), its path relative to the files' common folder."""
    stems = [f.stem for f in files]
    clash = {s for s in stems if stems.count(s) > 1}
    if not clash:
        return stems
    common = Path(os.path.commonpath([str(f.parent) for f in files]))
    return [f.relative_to(common).as_posix() if f.stem in clash else f.stem for f in files]


def _concat(parts: list[pa.Table], files: list[Path], spec: CorpusSpec, keep_option: str) -> pa.Table:
    try:
        return pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        for c in spec.keep_columns:
            types = [(f, t.schema.field(c).type) for f, t in zip(files, parts) if not pa.types.is_null(t.schema.field(c).type)]
            if len({str(t) for _, t in types}) > 1:
                (f1, t1), (f2, t2) = next(((a, b) for a, b in zip(types, types[1:]) if str(a[1]) != str(b[1])))
                raise DgamixError(f"{keep_option} {c!r} is {t1} in {f1} but {t2} in {f2}; give the column one type "
                                  f"in every file.") from None
        raise DgamixError(f"the columns of {keep_option} {', '.join(spec.keep_columns)} differ in type between the "
                          f"input files; give each column one type in every file.") from None


def load_corpus(paths: list[str | Path], spec: CorpusSpec, keep_option: str = "--keep-columns") -> tuple[pa.Table, dict]:
    """Read every input; returns (docs table without doc_id/n_tokens/dup_of, stats).

    Rows whose text is null, empty or whitespace are skipped and counted. User ids are the
    id column when present (cast to string), else "<file stem>:<row>" (the file's relative path
    instead of its stem when two inputs share a stem). Duplicate ids and an empty corpus are
    errors. ``keep_option`` is the option that named ``spec.keep_columns`` (for messages).
    """
    for c in spec.keep_columns:
        if c in RESERVED_COLUMNS:
            raise DgamixError(f"{keep_option} {c!r}: docs.parquet has its own column {c!r}; rename that column in "
                              f"the input, or leave it out of {keep_option}.")
    files = expand_inputs(paths)
    prefixes = _id_prefixes(files)
    parts, skipped, texts = [], 0, []
    for path, prefix in zip(files, prefixes):
        table = read_table(path)
        text = _text_column(table, path, spec)
        n = len(text)
        if n == 0 and not table.column_names:
            continue  # an empty JSON Lines file
        if spec.id_column in table.column_names:
            ids = _id_column(table, path, spec)
        else:
            ids = pa.array([f"{prefix}:{i}" for i in range(n)], pa.string())
        # blank = only Unicode whitespace (as str.isspace: also \xa0, \x85, \u2028, \x1c-\x1f)
        keep = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), False)
        skipped += n - pc.sum(keep).as_py() if n else 0
        cols = {"id": ids, "source": pa.array([str(path)] * n, pa.string()),
                "row": pa.array(range(n), pa.int64()),
                "n_chars": pc.fill_null(pc.utf8_length(text), 0).cast(pa.int64())}
        for c in spec.keep_columns:
            if c not in table.column_names:
                raise DgamixError(f"{path} has no column {c!r} for {keep_option} (columns: {table.column_names}).")
            cols[c] = _column(table, c, path, keep_option)
        parts.append(pa.table(cols).filter(keep))
        texts.append(text.filter(keep))
    docs = _concat(parts, files, spec, keep_option) if parts else None
    if docs is None or docs.num_rows == 0:
        raise DgamixError(f"the corpus {', '.join(map(str, paths))} has no non-empty documents "
                          f"({skipped} empty rows skipped); check --text-column.")
    counts = pc.value_counts(docs.column("id"))
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dup):
        example = dup[0]["values"].as_py()
        raise DgamixError(f"duplicate ids in column {spec.id_column!r} ({len(dup)} ids repeat, e.g. {example!r}); "
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

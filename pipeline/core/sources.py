"""Reading user text files: one input file (Parquet, JSON Lines or plain text) as an Arrow table,
its text column, and documents' texts back from their sources by (source, row).

Part of the kernel: stage 1 reads corpora and targets with it, and stage 3 reads training texts
back with :class:`TextReader` without depending on stage 1's code.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dgamix.pipeline.core.errors import DgamixError

TABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt", ".md", ".text")
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

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
    rows: list[dict] = []
    numbers: list[int] = []  # the file line of each row (blank lines are skipped)
    for i, line in enumerate(text.split("\n")):
        if not line.strip():
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
        rows.append(row)
        numbers.append(i + 1)
    if not rows:
        return pa.table({})
    keys = list(dict.fromkeys(k for row in rows for k in row))  # first-seen order; a missing field is null
    return pa.table({key: _jsonl_column(path, key, [row.get(key) for row in rows], numbers) for key in keys})


def column(table: pa.Table, name: str, path: Path, option: str) -> pa.Array:
    """Column ``name`` of ``table`` as one array; a one-line error when the file has several columns
    of that name (a Parquet file may)."""
    if table.column_names.count(name) > 1:
        raise DgamixError(f"{path} has {table.column_names.count(name)} columns named {name!r}; rename them so "
                          f"{option} names one.")
    return table.column(name).combine_chunks()


def label_column(table: pa.Table, name: str, path: Path, option: str, what: str, kind: str = "column") -> pa.Array:
    """Column ``name`` as strings, for ids and group labels: integers, floats, booleans, dates and
    UTF-8 bytes are converted; nested values (lists, structs) and non-UTF-8 bytes are a one-line
    error naming ``kind`` ("column", "group column"), ``what`` it should hold and ``option``."""
    col = column(table, name, path, option)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    try:
        return col.cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        bad = "holds bytes that are not valid UTF-8" if pa.types.is_binary(col.type) or \
            pa.types.is_large_binary(col.type) else f"is of type {col.type}"
        raise DgamixError(f"{path}: {kind} {name!r} {bad}, not {what}; pass {option} of a column of strings or "
                          f"integers.") from None


def text_column(table: pa.Table, path: Path, name: str = "text") -> pa.Array:
    """Column ``name`` of an input table as large_string text (a .txt file's one column is its text);
    one-line errors for a missing, duplicated, binary non-UTF-8 or non-text column."""
    if path.suffix.lower() in TEXT_SUFFIXES:
        return table.column("text").combine_chunks().cast(pa.large_string())
    if name not in table.column_names:
        if table.num_rows == 0 and not table.column_names:  # an empty JSON Lines file: no documents
            return pa.array([], pa.large_string())
        raise DgamixError(f"{path} has no text column {name!r} (columns: {table.column_names}); "
                          f"pass --text-column NAME.")
    col = column(table, name, path, "--text-column")
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        try:
            col = col.cast(pa.string())
        except pa.ArrowInvalid:
            raise DgamixError(f"{path}: column {name!r} holds bytes that are not valid UTF-8; "
                              f"decode it to UTF-8 text before embedding.") from None
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type)):
        raise DgamixError(f"{path}: column {name!r} is {col.type}, not text; pass the text "
                          f"column with --text-column.")
    return col.cast(pa.large_string())


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
            cols = [self.text_column] if path.suffix.lower() == ".parquet" else None
            self._col = text_column(read_table(path, cols), path, self.text_column)
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

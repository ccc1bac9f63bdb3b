"""Reading user text files: one input file (Parquet, JSON Lines, gzip/zstd-compressed JSON Lines,
Arrow IPC as `datasets.save_to_disk` writes it, or plain text) as an Arrow table, its text column,
and documents' texts back from their sources by (source, row).

Random access by row: Parquet reads the row groups that hold the rows, Arrow IPC files are
memory-mapped, plain JSON Lines and text files are read whole (a reader keeps them). For training,
which draws rows at random over the whole corpus, the embed stage writes a row-indexed copy of the
text column of Parquet and JSON Lines inputs (compressed ones always) into the workspace once
(``WS/texts/*.texts``, :mod:`dgamix.pipeline.core.textstore`; recorded in docs.parquet as
``text_copies``), and :class:`TextReader` reads that copy in the source's place: one disk read per
document, no text column held in memory.

Part of the kernel: stage 1 reads corpora and targets with it (each embed shard reads its own
texts through :class:`TextRefs`), and stage 3 reads training texts back with :class:`DocTexts` /
:class:`TextReader` without depending on stage 1's code.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.textstore import TextStore, is_store

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}  # of JSON Lines: a.jsonl.gz, a.jsonl.zst
COMPRESSED_SUFFIXES = tuple(j + c for j in JSONL_SUFFIXES for c in COMPRESSIONS)
TABLE_SUFFIXES = (".parquet", *JSONL_SUFFIXES, *COMPRESSED_SUFFIXES, ".arrow")
TEXT_SUFFIXES = (".txt", ".md", ".text")
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
READ_CHUNK = 1 << 20  # bytes read from a compressed file at a time


def file_type(path: str | Path) -> str:
    """The input suffix of ``path``, lower case, with its compression: '.parquet', '.jsonl.gz', '.txt' ...
    ('' when it is none of TABLE_SUFFIXES / TEXT_SUFFIXES)."""
    name = Path(path).name.lower()
    for suffix in sorted(TABLE_SUFFIXES + TEXT_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return ""


def is_compressed(path: str | Path) -> bool:
    """Whether ``path`` is compressed JSON Lines (no random access by row)."""
    return file_type(path) in COMPRESSED_SUFFIXES


def input_stem(path: str | Path) -> str:
    """The file name without its input suffix (a.jsonl.gz -> a)."""
    name, suffix = Path(path).name, file_type(path)
    return name[:-len(suffix)] if suffix else Path(path).stem

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


def unreadable(path: Path, e: Exception) -> DgamixError:
    """The one-line error for an input file its reader fails on (``e``: the library's exception)."""
    return DgamixError(f"{path}: cannot read as {file_type(path)[1:] or path.suffix.lower()[1:]} "
                       f"({(str(e).splitlines() or [type(e).__name__])[0]}); check the file is complete and in "
                       f"that format.")


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One input file as an Arrow table (a .txt file is one row with column 'text'; an .arrow file
    is memory-mapped, so its columns cost no memory until used)."""
    suffix = file_type(path)
    try:
        if suffix in TEXT_SUFFIXES:
            return pa.table({"text": [_read_text_file(path)]})
        if suffix == ".parquet":
            return pq.read_table(path, columns=columns)
        if suffix == ".arrow":
            return _read_arrow(path, columns)
        if suffix in COMPRESSED_SUFFIXES:
            parts = list(jsonl_tables(path))
            return pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})
        return _read_jsonl(path)
    except DgamixError:
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        if suffix == ".parquet":
            check_unique_names(path)
        raise unreadable(path, e) from None


def _read_arrow(path: Path, columns: list[str] | None = None) -> pa.Table:
    """An Arrow IPC file, memory-mapped: the stream format (what `datasets.save_to_disk` writes) or
    the file format. Record batches are read without copying, so a row is read by position."""
    source = pa.memory_map(str(path))
    try:
        table = pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source = pa.memory_map(str(path))
        table = pa.ipc.open_file(source).read_all()
    if columns:
        table = table.select([c for c in columns if c in table.column_names])
    return table


def check_unique_names(path: Path) -> None:
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
    return _jsonl_table(path, enumerate(text.split("\n"), 1))


def _jsonl_table(path: Path, lines) -> pa.Table:
    """The rows of ``lines`` ((file line number, line text) pairs; blank lines are skipped) as a table."""
    rows: list[dict] = []
    numbers: list[int] = []  # the file line of each row (blank lines are skipped)
    for number, line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DgamixError(f"{path}: line {number} is not JSON ({e.msg}); fix or remove it.") from None
        except RecursionError:
            raise DgamixError(f"{path}: line {number} is nested too deeply to read; flatten it or remove it.") from None
        if not isinstance(row, dict):
            raise DgamixError(f"{path}: line {number} is {_json_kind(row)}, not a JSON object; JSON Lines input "
                              f"needs one object per line, e.g. {{\"id\": \"a1\", \"text\": \"...\"}}.")
        rows.append(row)
        numbers.append(number)
    if not rows:
        return pa.table({})
    keys = list(dict.fromkeys(k for row in rows for k in row))  # first-seen order; a missing field is null
    return pa.table({key: _jsonl_column(path, key, [row.get(key) for row in rows], numbers) for key in keys})


def _truncated(path: Path, e: Exception | str) -> DgamixError:
    kind = COMPRESSIONS["." + file_type(path).rsplit(".", 1)[-1]]
    why = e if isinstance(e, str) else ((str(e).splitlines() or [type(e).__name__])[0])
    return DgamixError(f"{path}: cannot decompress ({kind}: {why}); the file is truncated or corrupt: copy or "
                       f"download it again.")


def _gzip_blocks(path: Path):
    import gzip
    import zlib

    try:
        with gzip.open(path, "rb") as f:
            while block := f.read(READ_CHUNK):
                yield block
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise _truncated(path, e) from None


def _zstd_blocks(path: Path):
    """The decompressed bytes of a zstd file (every frame); a file that ends inside a frame is an error
    (zstandard's stream reader would return the bytes so far without complaint)."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    obj, pending = dctx.decompressobj(), False
    try:
        with open(path, "rb") as f:
            while chunk := f.read(READ_CHUNK):
                while chunk:
                    out = obj.decompress(chunk)
                    pending = True
                    if out:
                        yield out
                    if obj.eof:  # a frame ended: the next one starts in what is left
                        chunk, obj, pending = obj.unused_data, dctx.decompressobj(), False
                    else:
                        chunk = b""
    except zstandard.ZstdError as e:
        raise _truncated(path, e) from None
    if pending:
        raise _truncated(path, "the file ends inside a frame")


def _compressed_lines(path: Path):
    """(line number, line) of a compressed JSON Lines file, decompressed as they are read (memory: one
    chunk and one line). UTF-8 (a leading byte-order mark is dropped); lines end in \\n or \\r\\n."""
    blocks = _gzip_blocks(path) if file_type(path).endswith(".gz") else _zstd_blocks(path)
    number, rest, first = 0, b"", True
    for block in blocks:
        if first:
            first = False
            if block.startswith(UTF16_BOMS):
                _decode(path, block)  # the UTF-16 message
            block = block.removeprefix(b"\xef\xbb\xbf")
        *lines, rest = (rest + block).split(b"\n")
        for raw in lines:
            number += 1
            yield number, _decode_line(path, raw, number)
    if rest:
        yield number + 1, _decode_line(path, rest, number + 1)


def _decode_line(path: Path, raw: bytes, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DgamixError(f"{path}: line {number} is not valid UTF-8 (byte {e.start} of the line); re-encode the "
                          f"file as UTF-8 and rerun.") from None


def jsonl_tables(path: Path, rows: int = 65_536):
    """A compressed JSON Lines file as tables of at most ``rows`` consecutive rows, streamed (memory:
    one table). A field missing from a whole table is absent from it; the caller fills in nulls."""
    batch: list[tuple[int, str]] = []
    for number, line in _compressed_lines(path):
        if line.strip():
            batch.append((number, line))
        if len(batch) >= rows:
            yield _jsonl_table(path, batch)
            batch = []
    if batch:
        yield _jsonl_table(path, batch)


def column(table: pa.Table, name: str, path: Path, option: str) -> pa.Array:
    """Column ``name`` of ``table`` as one array; a one-line error when the file has several columns
    of that name (a Parquet file may)."""
    if table.column_names.count(name) > 1:
        raise DgamixError(f"{path} has {table.column_names.count(name)} columns named {name!r}; rename them so "
                          f"{option} names one.")
    return table.column(name).combine_chunks()


def text_column(table: pa.Table, path: Path, name: str = "text") -> pa.Array:
    """Column ``name`` of an input table as large_string text (a .txt file's one column is its text);
    one-line errors for a missing, duplicated, binary non-UTF-8 or non-text column."""
    if file_type(path) in TEXT_SUFFIXES:
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


def portable_source(path: str | Path, root: str | Path) -> str:
    """How docs.parquet records an input file: relative to the workspace ``root`` (POSIX, may
    start with ../) when the two share a folder below /, so that a project moved as a whole
    (workspace and corpus together) still finds its texts; absolute otherwise."""
    path, root = Path(path).resolve(), Path(root).resolve()
    try:
        common = Path(os.path.commonpath([path, root]))
    except ValueError:  # no common path at all (different drives)
        return str(path)
    if common == Path(common.anchor):
        return str(path)
    return Path(os.path.relpath(path, root)).as_posix()


def recorded_files(source_names: list[str], files: list[str]) -> dict[str, str]:
    """Relative source -> the absolute input file it was at embed time (docs.parquet's params
    "corpus" list), matched by the path below the relative source's ../ steps; a source that
    matches more than one file gets no fallback (reading the wrong file silently is worse)."""
    out = {}
    for src in source_names:
        if Path(src).is_absolute():
            continue
        tail = "/" + "/".join(part for part in Path(src).parts if part not in ("..", "."))
        hits = [f for f in files if Path(f).as_posix().endswith(tail)]
        if len(hits) == 1:
            out[src] = hits[0]
    return out


def _row_bound(source: str, n: int, row: int) -> DgamixError:
    return DgamixError(f"corpus file {source} has {n:,} rows but dgamix recorded a document at row {row:,}: the "
                       f"file changed since dgamix read it; restore it, or embed the corpus again.")


def read_rows(path: Path, text_col: str, rows: np.ndarray) -> list[str]:
    """The texts at ``rows`` (int64, any order) of one input file. A Parquet file reads only the row
    groups that hold them, so a shard of a large file costs its own rows, not the whole file."""
    rows = np.asarray(rows, np.int64)
    if rows.size == 0:
        return []
    if is_store(path):
        store = TextStore(path)
        if rows.max() >= len(store):
            raise _row_bound(str(path), len(store), int(rows.max()))
        try:
            return store.read(rows)
        finally:
            store.close()
    if file_type(path) != ".parquet":
        col = text_column(read_table(path, None), path, text_col)
        if rows.max() >= len(col):
            raise _row_bound(str(path), len(col), int(rows.max()))
        return col.take(pa.array(rows)).to_pylist()
    try:
        pf = pq.ParquetFile(path)
        sizes = np.array([pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)], np.int64)
        starts = np.r_[0, np.cumsum(sizes)]
        if rows.max() >= starts[-1]:
            raise _row_bound(str(path), int(starts[-1]), int(rows.max()))
        group = np.searchsorted(starts, rows, side="right") - 1        # row group of each row
        groups = np.unique(group)
        table = pf.read_row_groups(groups.tolist(), columns=[text_col] if text_col in pf.schema_arrow.names else None)
    except DgamixError:
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        raise unreadable(path, e) from None
    first = np.r_[0, np.cumsum(sizes[groups])][:-1]                    # where each read group starts in ``table``
    local = rows - starts[group] + first[np.searchsorted(groups, group)]
    return text_column(table, path, text_col).take(pa.array(local)).to_pylist()


def file_stamp(path: str | Path) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of a file: what :class:`TextRefs` checks on reading."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class TextRefs:
    """Where some documents' texts are: the input file and row of each, in the documents' order.
    What a shard's job carries instead of its texts: whoever runs the shard (the driver, a Ray
    worker on another node reading shared storage) reads them, so the driver need not hold them."""

    text_column: str
    files: tuple[str, ...]               # absolute paths of the files used
    file: np.ndarray                     # (n,) int64: index into ``files`` of each document
    row: np.ndarray                      # (n,) int64: its row in that file
    stamps: tuple[tuple[int, int], ...]  # file_stamp of each file when the corpus was read
    indexed: tuple[bool, ...]            # whether a file's rows can be read alone (Parquet with small
                                         # row groups); others are read whole

    def __len__(self) -> int:
        return int(self.row.size)

    @property
    def cheap(self) -> bool:
        """Whether reading these texts costs about their own size (every file indexed)."""
        return all(self.indexed)

    def read(self, reader: TextReader | None = None) -> list[str]:
        """The texts, in order: one read per file, of only the row groups needed where the file is
        indexed. Other files are read whole; ``reader`` (a :class:`TextReader` the caller keeps
        across shards) then keeps them for the next shard of the same file. A file that changed
        since the corpus was read is a one-line error, not other texts."""
        out: list[str] = [""] * len(self)
        for f in np.unique(self.file).tolist():
            at = np.flatnonzero(self.file == f)
            path = Path(self.files[f])
            self._check(f)
            if reader is not None and not self.indexed[f]:
                got = reader.read([self.files[f]] * at.size, self.row[at].tolist())
            else:
                got = read_rows(path, self.text_column, self.row[at])
            if any(t is None or not t.strip() for t in got):  # a document read back blank: the file changed
                self._check(f, force=True)
            for i, t in zip(at.tolist(), got):
                out[i] = t
        return out

    def _check(self, f: int, force: bool = False) -> None:
        try:
            same = file_stamp(self.files[f]) == tuple(self.stamps[f])
        except OSError as e:
            raise DgamixError(f"corpus file {self.files[f]} cannot be read here ({e.strerror or e}); with --engine "
                              f"ray every node must see the corpus at the same path (shared storage).") from None
        if force or not same:
            raise DgamixError(f"corpus file {self.files[f]} differs from what dgamix read when the run started (its "
                              f"size, modification time or texts; changed since, or another copy on this node): "
                              f"leave the corpus as it is during a run, with one copy on shared storage, and rerun.")


OPEN_STORES = 64  # TextReader: text-store copies kept open at once (the least recently used closed first)


class TextReader:
    """Reads documents' text back from their sources by (source, row).

    Keeps the text columns of the most recently used sources in memory (least recently used
    dropped first once they hold more than ``cache_bytes``), so random access over a corpus of
    many files reads each file about once instead of once per batch. A relative source is
    relative to the workspace ``root``; when it is not there, ``fallback`` (relative source ->
    absolute file at embed time, ``recorded_files``) is tried, so a project moved whole and a
    workspace moved alone both find their corpus. ``copies`` (source -> its row-indexed copy,
    relative to ``root`` or absolute) are read in place of their sources: a ``.texts`` copy
    (:class:`~dgamix.pipeline.core.textstore.TextStore`) row by row from disk, outside the cache.
    """

    def __init__(self, text_column: str = "text", root: str | Path | None = None,
                 fallback: dict[str, str] | None = None, cache_bytes: int = 1 << 30,
                 copies: dict[str, str] | None = None):
        self.text_column, self.root, self.fallback = text_column, root, dict(fallback or {})
        self.copies = dict(copies or {})
        self.cache_bytes = int(cache_bytes)
        self._cols: OrderedDict[str, pa.Array] = OrderedDict()
        self._stores: OrderedDict[str, TextStore] = OrderedDict()  # least recently used first

    def path(self, source: str) -> Path:
        """The file of a recorded source (see the class docstring); a one-line error if it is missing."""
        if source in self.copies:
            copy = Path(self.copies[source])
            copy = copy if copy.is_absolute() or self.root is None else Path(self.root) / copy
            if not copy.exists():
                raise DgamixError(f"{copy}, the row-indexed copy of the corpus file {source}'s texts, is missing; "
                                  f"rerun `dgamix embed` on the same corpus and workspace to write it again.")
            return copy
        path = Path(source)
        if not path.is_absolute() and self.root is not None:
            path = Path(self.root) / path
            if not path.exists() and source in self.fallback:
                path = Path(self.fallback[source])
        if not path.exists():
            where = f" (recorded as {source!r}, relative to the workspace)" if path != Path(source) else ""
            raise DgamixError(f"corpus file {path}{where} is missing; move it back there (or move the workspace "
                              f"together with its corpus), or re-embed the corpus.")
        return path

    def _column(self, source: str) -> pa.Array | TextStore:
        if source in self._stores:
            self._stores.move_to_end(source)
            return self._bounded(source)
        col = self._cols.get(source)
        if col is not None:
            self._cols.move_to_end(source)
            return col
        path = self.path(source)
        if is_store(path):
            self._stores[source] = TextStore(path)
            return self._bounded(source)
        cols = [self.text_column] if file_type(path) in (".parquet", ".arrow") else None
        col = text_column(read_table(path, cols), path, self.text_column)
        self._cols[source] = col
        while len(self._cols) > 1 and sum(c.nbytes for c in self._cols.values()) > self.cache_bytes:
            self._cols.popitem(last=False)
        return col

    def _bounded(self, source: str) -> TextStore:
        """The text store of ``source`` (the most recently used), after closing the least recently used
        open ones beyond OPEN_STORES: a corpus of thousands of files keeps a bounded number of files
        open (a closed store opens again when read)."""
        others = [t for k, t in self._stores.items() if k != source and t.is_open]
        for store in others[:max(0, len(others) + 1 - OPEN_STORES)]:
            store.close()
        return self._stores[source]

    def read(self, sources: list[str], rows: list[int]) -> list[str]:
        """Texts of the documents at (sources[i], rows[i]), in that order."""
        out: list[str] = [""] * len(rows)
        i = 0
        while i < len(rows):  # runs of the same source: one take per run
            j = i
            while j < len(rows) and sources[j] == sources[i]:
                j += 1
            col = self._column(sources[i])
            if max(rows[i:j]) >= len(col):
                raise _row_bound(sources[i], len(col), max(rows[i:j]))
            if isinstance(col, TextStore):
                out[i:j] = col.read(rows[i:j])
            else:
                out[i:j] = col.take(pa.array(rows[i:j], pa.int64())).to_pylist()
            i = j
        return out


GROUP_ROWS = 20_000  # DocTexts.refs: a Parquet file whose row groups hold at most this many rows is indexed


class DocTexts:
    """The texts of a workspace's documents by doc id: ``DocTexts(ws)[doc_ids]`` -> list of str.

    Reads docs.parquet's (source, row) columns once; each lookup groups the ids by source file
    (one ``take`` per file) and returns the texts in the order asked. Sources recorded relative
    to the workspace are found wherever the workspace (with its corpus) now lies.
    """

    def __init__(self, ws, cache_bytes: int = 1 << 30) -> None:
        from dgamix.pipeline.core import manifest  # manifest reads sources' files: import here, not at the top

        docs, meta = manifest.read(ws.docs, "docs", columns=["doc_id", "source", "row"], dictionary=["source"])
        doc_id = np.asarray(docs["doc_id"], dtype=np.int64)
        if doc_id.size and not np.array_equal(doc_id, np.arange(doc_id.size)):
            order = np.argsort(doc_id)
            if not np.array_equal(doc_id[order], np.arange(doc_id.size)):
                raise DgamixError(f"{ws.docs}: doc_id is not 0..n-1; re-embed the corpus.")
            docs = docs.take(pa.array(order))
        text_col = meta.get("text_column") or (meta.get("params") or {}).get("text_column") or "text"
        files = (meta.get("params") or {}).get("corpus") or []
        self._index(docs, text_col, ws.root, files, cache_bytes, copies=meta.get("text_copies"))

    @classmethod
    def of_table(cls, docs: pa.Table, text_column: str, cache_bytes: int = 1 << 30,
                 group_rows: int = GROUP_ROWS, stamps: dict[str, tuple[int, int]] | None = None,
                 copies: dict[str, str] | None = None) -> DocTexts:
        """The texts of a table with (source, row) columns whose sources are absolute paths (the
        embed stage's corpus before docs.parquet exists); doc id i is the table's row i. A Parquet
        file whose row groups hold at most ``group_rows`` rows counts as indexed in :meth:`refs`.
        ``stamps``: each file's file_stamp from before it was first read (load_corpus's), which
        :class:`TextRefs` checks; files without one are stamped when first referred to. ``copies``:
        source -> its row-indexed copy (absolute paths), read in its place."""
        self = cls.__new__(cls)
        self._index(docs, text_column, None, [], cache_bytes, group_rows, stamps, copies)
        return self

    def _index(self, docs: pa.Table, text_col: str, root, files: list[str], cache_bytes: int,
               group_rows: int = GROUP_ROWS, stamps: dict[str, tuple[int, int]] | None = None,
               copies: dict[str, str] | None = None) -> None:
        # (read dictionary-encoded by DocTexts: combine_chunks unifies the row groups' dictionaries,
        # and dictionary_encode keeps an encoded column as it is)
        src = docs["source"].combine_chunks().dictionary_encode()
        self.source_names = src.dictionary.to_pylist()                       # (S,) recorded sources
        self.source = np.asarray(src.indices.to_numpy(zero_copy_only=False), np.int64)  # (n,)
        self.row = np.asarray(docs["row"], dtype=np.int64)                   # (n,)
        self.reader = TextReader(text_col, root, recorded_files(self.source_names, files), cache_bytes, copies)
        self.group_rows = group_rows                          # see of_table
        self._stamps = dict(stamps or {})                     # see of_table
        self._files: dict[int, tuple[str, tuple[int, int], bool]] = {}  # source -> (path, stamp, indexed)

    def _file(self, s: int) -> tuple[str, tuple[int, int], bool]:
        """(absolute path, file_stamp, indexed) of recorded source ``s``, looked up once."""
        if s not in self._files:
            path = self.reader.path(self.source_names[s]).absolute()
            indexed = is_store(path) or file_type(path) == ".arrow"  # any row is read alone
            if file_type(path) == ".parquet":
                try:
                    md = pq.ParquetFile(path).metadata
                    indexed = all(md.row_group(g).num_rows <= self.group_rows for g in range(md.num_row_groups))
                except (pa.ArrowException, OSError, ValueError):
                    indexed = False  # read whole; its reading reports what is wrong with it
            self._files[s] = (str(path), self._stamps.get(str(path)) or file_stamp(path), indexed)
        return self._files[s]

    def __len__(self) -> int:
        return self.row.size

    def _ids(self, doc_ids) -> np.ndarray:
        ids = np.asarray(doc_ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"doc id {int(ids.max() if ids.max() >= len(self) else ids.min())} is outside "
                             f"0..{len(self) - 1}")
        return ids

    def refs(self, doc_ids) -> TextRefs:
        """Where the texts of ``doc_ids`` are, for a shard's job (:class:`TextRefs`, absolute files)."""
        ids = self._ids(doc_ids)
        used, file = np.unique(self.source[ids], return_inverse=True)
        info = [self._file(u) for u in used.tolist()]
        return TextRefs(self.reader.text_column, tuple(i[0] for i in info), file.astype(np.int64).reshape(-1),
                        self.row[ids], tuple(i[1] for i in info), tuple(i[2] for i in info))

    def __getitem__(self, doc_ids) -> list[str]:
        ids = self._ids(doc_ids)
        order = np.argsort(self.source[ids], kind="stable")   # group by file, keep the asked order inside
        got = self.reader.read([self.source_names[s] for s in self.source[ids][order]], self.row[ids][order].tolist())
        out: list[str] = [""] * ids.size
        for i, t in zip(order.tolist(), got):
            out[i] = t
        return out

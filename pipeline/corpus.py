"""Reading a corpus (Parquet, JSON Lines, gzip/zstd-compressed JSON Lines, a Hugging Face dataset
saved with ``save_to_disk``, or a folder of plain-text files) into the docs manifest.

Training reads documents at random by (source, row), which Parquet and JSON Lines cannot serve
one row at a time: ``load_corpus(..., copies=FOLDER)`` writes, while it reads a file anyway, a
row-indexed copy of its text column there (:mod:`dgamix.pipeline.core.textstore`; the embed stage
puts these in ``WS/texts/`` and prints their size). Compressed JSON Lines is always copied (it has
no random access at all); Parquet and plain JSON Lines unless ``CorpusSpec.text_store`` is off;
Arrow files (memory-mapped) and plain-text files (one document each) never. docs.parquet records
(source, row) and :class:`dgamix.pipeline.core.sources.TextReader` reads a document's text back
from its copy, or its source, when a later stage needs it. Reading one input file is
``dgamix.pipeline.core.sources``' job.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.files import discard
from dgamix.pipeline.core.manifest import file_checksum
from dgamix.pipeline.core.sources import (
    JSONL_SUFFIXES,
    check_unique_names,
    column,
    file_stamp,
    file_type,
    input_stem,
    is_compressed,
    jsonl_tables,
    read_table,
    text_column,
    unreadable,
)
from dgamix.pipeline.core.textstore import SUFFIX, TextStoreWriter, read_header


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


@dataclass(frozen=True)
class CorpusSpec:
    """Which columns of the input hold the text and the user's id, and what else to keep."""

    text_column: str = "text"
    id_column: str = "id"
    keep_columns: tuple[str, ...] = field(default_factory=tuple)
    text_store: bool = True  # copy Parquet / JSON Lines texts into WS/texts/ for reading by row (compressed: always)


KINDS = ".parquet, .jsonl (also .jsonl.gz / .jsonl.zst), .arrow, a saved Hugging Face dataset or a folder of .txt files"


def _hf_dataset_files(folder: Path) -> list[Path] | None:
    """The Arrow files of a Hugging Face dataset saved with ``save_to_disk`` in ``folder``, in its
    order (state.json's ``_data_files``); None when ``folder`` is not one."""
    state = folder / "state.json"
    if not (state.is_file() and (folder / "dataset_info.json").is_file()):
        return None
    try:
        listed = [d["filename"] for d in json.loads(state.read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise DgamixError(f"{state} is not the state.json of a saved Hugging Face dataset (no _data_files list); "
                          f"save the dataset again with `save_to_disk`.") from None
    out = [folder / name for name in listed]
    missing = [f for f in out if not f.is_file()]
    if missing:
        raise DgamixError(f"{folder}: the saved Hugging Face dataset lacks {missing[0].name} (listed in state.json); "
                          f"copy the whole folder again.")
    return out


def _walk(folder: Path) -> list[Path]:
    """The input files under ``folder``, sorted by path; a saved Hugging Face dataset contributes its
    listed Arrow files in their order (its other files, e.g. cache-*.arrow, are not documents)."""
    hf = _hf_dataset_files(folder)
    if hf is not None:
        return hf
    out: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            out.extend(_walk(entry))
        elif entry.is_file() and file_type(entry):
            out.append(entry)
    return out


def expand_inputs(paths: list[str | Path]) -> list[Path]:
    """Input files in a stable order: files as given; folders expanded recursively (sorted by path,
    so a folder of shards is read in shard order, each shard a source file)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = _walk(p)
            if not found:
                raise DgamixError(f"{p} is a folder with no corpus files; give {KINDS}.")
            out.extend(found)
        elif p.is_file():
            if not file_type(p):
                raise DgamixError(f"{p}: unsupported file type '{p.suffix}'; give {KINDS}.")
            out.append(p)
        else:
            raise DgamixError(f"{p} does not exist; check the corpus path.")
    if not out:
        raise DgamixError(f"no corpus given; pass at least one {KINDS}.")
    return [p.resolve() for p in out]


@dataclass(frozen=True)
class InputFiles:
    """The corpus files of some inputs, each with its file_stamp taken before its checksum (a change
    from then on is seen when a shard reads the file again) and the sha256 of its bytes."""

    files: tuple[Path, ...]
    stamps: dict[str, tuple[int, int]]
    checksums: dict[str, str]


def scan_inputs(paths: list[str | Path]) -> InputFiles:
    """:func:`expand_inputs`, then each file's stamp and checksum (one read of every byte)."""
    files = expand_inputs(paths)
    stamps = {str(f): file_stamp(f) for f in files}
    return InputFiles(tuple(files), stamps, {str(f): file_checksum(f) for f in files})


# docs.parquet's own columns: an input column of one of these names cannot be carried along
RESERVED_COLUMNS = ("doc_id", "id", "source", "row", "n_chars", "n_tokens", "dup_of")


def _id_column(table: pa.Table, path: Path, spec: CorpusSpec) -> pa.Array:
    """The user's ids as strings; integers, floats, booleans, dates and UTF-8 bytes are converted,
    nested values (lists, structs) are an error (empty ids too: see ``_no_empty_ids``)."""
    return label_column(table, spec.id_column, path, "--id-column", "ids")


def _no_empty_ids(path: Path, spec: CorpusSpec, empty: int) -> None:
    if empty:
        raise DgamixError(f"{path}: column {spec.id_column!r} has {empty} empty ids; fill them "
                          f"or pass --id-column of a complete column.")


def _id_prefixes(files: list[Path]) -> list[str]:
    """The prefix of the generated ids ("<prefix>:<row>") of each file: its stem, or, for files whose
    stems clash (a/doc.txt and b/doc.txt), its path relative to the files' common folder."""
    stems = [input_stem(f) for f in files]
    clash = {s for s in stems if stems.count(s) > 1}
    if not clash:
        return stems
    common = Path(os.path.commonpath([str(f.parent) for f in files]))
    return [f.relative_to(common).as_posix() if input_stem(f) in clash else input_stem(f) for f in files]


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


PIECE_ROWS = 65_536  # rows per batch when a large Parquet file or a compressed file is read in pieces


def _pieces(path: Path, stream: bool):
    """One input file as tables of consecutive rows: with ``stream`` a Parquet file of more than
    PIECE_ROWS rows batch by batch (memory: one batch of its text), a compressed JSON Lines file
    always PIECE_ROWS rows at a time, else the whole file."""
    if is_compressed(path):
        yield from jsonl_tables(path, PIECE_ROWS)
        return
    if stream and file_type(path) == ".parquet":
        try:
            pf = pq.ParquetFile(path, pre_buffer=False)  # streamed: keep one batch, not every row group read
            big = pf.metadata.num_rows > PIECE_ROWS
        except (pa.ArrowException, OSError, ValueError):
            big = False  # read_table below says what is wrong, in one line
        if big:
            check_unique_names(path)  # as read_table would: a duplicated column name is an error
            try:
                for batch in pf.iter_batches(batch_size=PIECE_ROWS):
                    yield pa.Table.from_batches([batch])
            except (pa.ArrowException, OSError, ValueError) as e:
                raise unreadable(path, e) from None
            return
    yield read_table(path)


def copy_name(path: Path, checksum: str) -> str:
    """The file name of the row-indexed copy of input ``path``'s texts (of these bytes)."""
    return f"{input_stem(path)}.{checksum[:16]}{SUFFIX}"


def needs_copy(path: Path, spec: CorpusSpec) -> bool:
    """Whether the texts of input ``path`` are copied into the workspace (see the module docstring)."""
    return is_compressed(path) or (spec.text_store and file_type(path) in (".parquet", *JSONL_SUFFIXES))


class _Copy:
    """Writes the text column of an input, piece by piece, into its copy in ``folder`` (atomically:
    complete or absent). A whole copy made from the same bytes is kept as it is."""

    def __init__(self, folder: Path, path: Path, checksum: str, text_col: str) -> None:
        self.path = folder / copy_name(path, checksum)
        self.done = False
        if self.path.exists():
            try:
                head = read_header(self.path)
                self.done = head.get("inputs") == checksum and head.get("text_column") == text_col
            except DgamixError:
                self.done = False  # damaged: written again
        self._w = None if self.done else TextStoreWriter(
            self.path, {"source": str(path), "text_column": text_col, "inputs": checksum})

    def add(self, text: pa.Array) -> None:
        if self._w is not None:
            self._w.add(text)

    def close(self, error: BaseException | None = None) -> None:
        if self._w is not None:
            w, self._w = self._w, None
            w.close(error)


def load_corpus(paths: list[str | Path], spec: CorpusSpec, keep_option: str = "--keep-columns",
                keep_texts: bool = True, scanned: InputFiles | None = None,
                copies: Path | None = None) -> tuple[pa.Table, dict]:
    """Read every input; returns (docs table without doc_id/n_tokens/dup_of, stats). Its ``source``
    column is dictionary-encoded (each input's path once).

    ``stats["texts"]`` holds the kept documents' texts (large_string, in docs order) when
    ``keep_texts``; without it no texts are kept, and a large Parquet file is read PIECE_ROWS rows
    at a time (the embed stage reads texts back by (source, row) shard by shard,
    :class:`dgamix.pipeline.core.sources.TextRefs`). Compressed JSON Lines is always read in
    pieces; with ``copies`` (a folder) the text column of each file that :func:`needs_copy` is also
    written to a row-indexed copy there (:func:`copy_name`), listed in ``stats["copies"]`` (input ->
    copy) with their size in ``stats["copy_bytes"]``. ``scanned``: :func:`scan_inputs` of ``paths``
    when the caller has it already.

    Rows whose text is null, empty or whitespace are skipped and counted. User ids are the
    id column when present (cast to string), else "<file stem>:<row>" (the file's relative path
    instead of its stem when two such files share a stem). Duplicate ids and an empty corpus are
    errors. ``keep_option`` is the option that named ``spec.keep_columns`` (for messages).
    """
    written: list[Path] = []  # copies written by this call: removed again if it fails
    try:
        return _load_corpus(paths, spec, keep_option, keep_texts, scanned, copies, written)
    except BaseException:
        for p in written:
            discard(p)
        raise


def _load_corpus(paths, spec: CorpusSpec, keep_option: str, keep_texts: bool, scanned: InputFiles | None,
                 copies: Path | None, written: list[Path]) -> tuple[pa.Table, dict]:
    for c in spec.keep_columns:
        if c in RESERVED_COLUMNS:
            raise DgamixError(f"{keep_option} {c!r}: docs.parquet has its own column {c!r}; rename that column in "
                              f"the input, or leave it out of {keep_option}.")
    scanned = scanned if scanned is not None else scan_inputs(paths)
    files = list(scanned.files)
    parts, part_files, skipped, texts = [], [], 0, []
    generated = []  # (part index, file, rows, kept rows) of the files whose ids are made up
    made, copy_bytes = {}, 0  # input -> its copy
    for path in files:
        copy = None
        if copies is not None and needs_copy(path, spec):
            copy = _Copy(copies, path, scanned.checksums[str(path)], spec.text_column)
        try:
            got = _read_file(path, spec, keep_option, keep_texts, copy)
        except BaseException as e:
            if copy is not None:
                copy.close(e)
            raise
        if copy is not None:
            copy.close()
            made[str(path)] = str(copy.path)
            if not copy.done:
                written.append(copy.path)
            copy_bytes += copy.path.stat().st_size
        pieces, keeps, offset, has_ids, n_skipped, kept_texts = got
        skipped += n_skipped
        texts.extend(kept_texts)
        if not pieces:
            continue
        if not has_ids:
            generated.append((len(parts), path, offset, pa.chunked_array(keeps).combine_chunks()))
        parts.append(pieces[0] if len(pieces) == 1 else _concat_pieces(pieces, path, keep_option))
        part_files.append(path)
    # made-up ids "<prefix>:<row>": the file stem, or its relative path where stems clash among these files
    for (k, path, n, keep), prefix in zip(generated, _id_prefixes([g[1] for g in generated])):
        ids = pa.array([f"{prefix}:{i}" for i in range(n)], pa.string()).filter(keep)
        parts[k] = parts[k].set_column(parts[k].column_names.index("id"), "id", ids)
    docs = _concat(parts, part_files, spec, keep_option) if parts else None
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
             "stamps": dict(scanned.stamps), "checksums": dict(scanned.checksums), "copies": made,
             "copy_bytes": int(copy_bytes), "copies_written": list(written)}
    if keep_texts:
        stats["texts"] = pa.chunked_array(texts, pa.large_string()).combine_chunks()
    return docs, stats


def _read_file(path: Path, spec: CorpusSpec, keep_option: str, keep_texts: bool, copy: _Copy | None):
    """One input file's pieces: (docs pieces, keep masks, rows, has ids, rows skipped, kept texts).
    A compressed file is read in pieces whose fields may differ: a field missing from a piece is
    null there, and an error only when the whole file lacks it."""
    streamed = is_compressed(path)
    pieces, keeps, texts, offset, skipped = [], [], [], 0, 0
    seen: set[str] = set()      # fields of the pieces so far (streamed)
    empty_ids = without_ids = 0  # null ids; rows of pieces without the id field (streamed)
    for table in _pieces(path, stream=not keep_texts):
        seen.update(table.column_names)
        n = table.num_rows
        if streamed and spec.text_column not in table.column_names:
            text = pa.nulls(n, pa.large_string())
        else:
            text = text_column(table, path, spec.text_column)
            n = len(text)
        if copy is not None:
            copy.add(text)
        if n == 0 and not table.column_names:
            continue  # an empty JSON Lines file
        if spec.id_column in table.column_names:
            ids = _id_column(table, path, spec)
            empty_ids += ids.null_count
        else:
            ids = pa.nulls(n, pa.string())
            without_ids += n
        # blank = only Unicode whitespace (as str.isspace: also \xa0, \x85, \u2028, \x1c-\x1f)
        keep = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), False)
        skipped += n - pc.sum(keep).as_py() if n else 0
        # the file's path once, not on every row (4 bytes a document)
        source = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([str(path)], pa.string()))
        cols = {"id": ids, "source": source,
                "row": pa.array(range(offset, offset + n), pa.int64()),
                "n_chars": pc.fill_null(pc.utf8_length(text), 0).cast(pa.int64())}
        for c in spec.keep_columns:
            if c in table.column_names:
                cols[c] = column(table, c, path, keep_option)
            elif streamed:
                cols[c] = pa.nulls(n)
            else:
                raise DgamixError(f"{path} has no column {c!r} for {keep_option} (columns: {table.column_names}).")
        pieces.append(pa.table(cols).filter(keep))
        keeps.append(keep)
        if keep_texts:
            texts.append(text.filter(keep))
        offset += n
        del table, text
    has_ids = spec.id_column in seen
    if streamed and offset:
        if spec.text_column not in seen:
            raise DgamixError(f"{path} has no text column {spec.text_column!r} (fields: {sorted(seen)}); "
                              f"pass --text-column NAME.")
        for c in spec.keep_columns:
            if c not in seen:
                raise DgamixError(f"{path} has no column {c!r} for {keep_option} (fields: {sorted(seen)}).")
        empty_ids += without_ids if has_ids else 0
    _no_empty_ids(path, spec, empty_ids)
    return pieces, keeps, offset, has_ids, skipped, texts


def _concat_pieces(pieces: list[pa.Table], path: Path, keep_option: str) -> pa.Table:
    try:
        return pa.concat_tables(pieces, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        raise DgamixError(f"{path}: a field of {keep_option} has different JSON types in different parts of the file; "
                          f"give it the same type on every line.") from None

"""Reading a corpus (Parquet, JSONL, or a folder of plain-text files) into the docs manifest.

Text is never copied into the workspace: docs.parquet records (source, row) and
:class:`dgamix.pipeline.core.sources.TextReader` reads a document's text back from its source
when a later stage needs it. Reading one input file is ``dgamix.pipeline.core.sources``' job.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.manifest import file_checksum
from dgamix.pipeline.core.sources import (
    TABLE_SUFFIXES,
    TEXT_SUFFIXES,
    check_unique_names,
    column,
    file_stamp,
    read_table,
    text_column,
    unreadable,
)


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


PIECE_ROWS = 65_536  # rows per batch when a large Parquet file is read without keeping its texts


def _pieces(path: Path, stream: bool):
    """One input file as tables of consecutive rows: with ``stream`` a Parquet file of more than
    PIECE_ROWS rows batch by batch (memory: one batch of its text), else the whole file."""
    if stream and path.suffix.lower() == ".parquet":
        try:
            pf = pq.ParquetFile(path)
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


def load_corpus(paths: list[str | Path], spec: CorpusSpec, keep_option: str = "--keep-columns",
                keep_texts: bool = True) -> tuple[pa.Table, dict]:
    """Read every input; returns (docs table without doc_id/n_tokens/dup_of, stats).

    ``stats["texts"]`` holds the kept documents' texts (large_string, in docs order) when
    ``keep_texts``; without it no texts are kept, and a large Parquet file is read PIECE_ROWS rows
    at a time (the embed stage reads texts back by (source, row) shard by shard,
    :class:`dgamix.pipeline.core.sources.TextRefs`).

    Rows whose text is null, empty or whitespace are skipped and counted. User ids are the
    id column when present (cast to string), else "<file stem>:<row>" (the file's relative path
    instead of its stem when two such files share a stem). Duplicate ids and an empty corpus are
    errors. ``keep_option`` is the option that named ``spec.keep_columns`` (for messages).
    """
    for c in spec.keep_columns:
        if c in RESERVED_COLUMNS:
            raise DgamixError(f"{keep_option} {c!r}: docs.parquet has its own column {c!r}; rename that column in "
                              f"the input, or leave it out of {keep_option}.")
    files = expand_inputs(paths)
    parts, part_files, skipped, texts = [], [], 0, []
    generated = []  # (part index, file, rows, kept rows) of the files whose ids are made up
    stamps = {}  # before reading: a change from here on is seen when a shard reads the file again
    for path in files:
        stamps[str(path)] = file_stamp(path)
        pieces, keeps, offset, has_ids, empty_ids = [], [], 0, False, 0
        for table in _pieces(path, stream=not keep_texts):
            text = text_column(table, path, spec.text_column)
            n = len(text)
            if n == 0 and not table.column_names:
                continue  # an empty JSON Lines file
            has_ids = spec.id_column in table.column_names
            ids = _id_column(table, path, spec) if has_ids else pa.nulls(n, pa.string())
            empty_ids += ids.null_count if has_ids else 0
            # blank = only Unicode whitespace (as str.isspace: also \xa0, \x85, \u2028, \x1c-\x1f)
            keep = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), False)
            skipped += n - pc.sum(keep).as_py() if n else 0
            cols = {"id": ids, "source": pa.array([str(path)] * n, pa.string()),
                    "row": pa.array(range(offset, offset + n), pa.int64()),
                    "n_chars": pc.fill_null(pc.utf8_length(text), 0).cast(pa.int64())}
            for c in spec.keep_columns:
                if c not in table.column_names:
                    raise DgamixError(f"{path} has no column {c!r} for {keep_option} (columns: {table.column_names}).")
                cols[c] = column(table, c, path, keep_option)
            pieces.append(pa.table(cols).filter(keep))
            keeps.append(keep)
            if keep_texts:
                texts.append(text.filter(keep))
            offset += n
            del table, text
        _no_empty_ids(path, spec, empty_ids)
        if not pieces:
            continue
        if not has_ids:
            generated.append((len(parts), path, offset, pa.chunked_array(keeps).combine_chunks()))
        parts.append(pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces))
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
    stats = {"files": [str(f) for f in files], "skipped_empty": int(skipped), "n_docs": docs.num_rows, "stamps": stamps,
             "checksums": {str(f): file_checksum(f) for f in files}}
    if keep_texts:
        stats["texts"] = pa.chunked_array(texts, pa.large_string()).combine_chunks()
    return docs, stats

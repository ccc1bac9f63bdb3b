"""The workspace's copy of an input file's texts (``WS/texts/*.texts``): any document in one disk read.

Training draws documents at random across the whole corpus. Parquet and compressed JSON Lines
cannot give one row without decoding a block of thousands, so the embed stage copies each input's
text column here once, while it reads the corpus anyway; docs.parquet records the copy of every
source (``text_copies``) and stage 3 reads the copy in the source's place.

Layout of a ``.texts`` file (little-endian), written in one pass:

    the documents' UTF-8 bytes, one after another
    offsets   int64  (rows + 1)    where each document starts in the bytes above; the last is their length
    crc32     uint32 (rows)        of each document's row number and length (two int64), then its bytes
    header    JSON                 {"source", "text_column", "inputs" (checksum of the input's bytes), "rows", "bytes"}
    header length int64, MAGIC (8 bytes)

Reads are positioned reads (``os.pread``), not a memory map: a process's resident memory holds no
text it did not ask for (a memory map of a file in the page cache maps megabytes around every row
touched), and several training processes share the kernel's page cache. Every document read is
checked against its CRC32, so a damaged copy is one line, never other texts.

Disk: the uncompressed text plus 12 bytes per row. Memory to write: 12 bytes per row (the offsets
and checksums are kept until the end) plus one piece of text.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from dgamix.pipeline.core import files
from dgamix.pipeline.core.errors import DgamixError

MAGIC = b"DGMXTXT1"
SUFFIX = ".texts"
_TAIL = 16  # header length + MAGIC


def is_store(path: str | Path) -> bool:
    return Path(path).suffix == SUFFIX


def _crc(row: int, data) -> int:
    """A document's checksum: its row number and length first, so that a zeroed or shifted index
    (offsets and checksums of another row, or none) does not check out."""
    return zlib.crc32(data, zlib.crc32(struct.pack("<qq", row, len(data))))


def _unreadable(path: Path, e: OSError) -> DgamixError:
    return DgamixError(f"cannot read {path}, dgamix's copy of a corpus file's texts ({e.strerror or e}); check the "
                       f"file's permissions and the disk, or raise the limit of open files (ulimit -n).")


def _damaged(path: Path, what: str) -> DgamixError:
    return DgamixError(f"{path}, dgamix's copy of a corpus file's texts, is damaged ({what}); delete it and rerun "
                       f"`dgamix embed` with the same corpus and workspace to write it again.")


class TextStoreWriter:
    """Writes a ``.texts`` file piece by piece: ``add`` each piece of the text column in row order;
    the file appears complete under its name on ``close()``, or not at all (``close(error)``)."""

    def __init__(self, path: str | Path, header: dict) -> None:
        self.path, self.header = Path(path), dict(header)
        self._ctx = files.atomic_file(self.path)
        self._f = open(self._ctx.__enter__(), "wb")
        self._lengths: list[np.ndarray] = []
        self._crcs: list[np.ndarray] = []
        self._rows = 0

    def add(self, text: pa.Array) -> None:
        """The next rows' texts (string or large_string; a null is stored as an empty text)."""
        text = text.cast(pa.large_string()).fill_null("")
        if isinstance(text, pa.ChunkedArray):
            text = text.combine_chunks()
        n = len(text)
        if n == 0:
            return
        offsets = np.frombuffer(text.buffers()[1], np.int64)[text.offset:text.offset + n + 1]
        data = memoryview(text.buffers()[2])[int(offsets[0]):int(offsets[-1])]
        local = (offsets - offsets[0]).tolist()
        self._f.write(data)
        self._lengths.append(np.diff(offsets))
        first = self._rows
        self._crcs.append(np.fromiter((_crc(first + i, data[a:b]) for i, (a, b) in enumerate(zip(local, local[1:]))),
                                      np.uint32, n))
        self._rows += n

    def close(self, error: BaseException | None = None) -> None:
        if self._f is None:
            return
        f, ctx, self._f = self._f, self._ctx, None
        if error is not None:
            f.close()
            ctx.__exit__(type(error), error, error.__traceback__)
            return
        try:
            lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
            offsets = np.r_[0, np.cumsum(lengths)].astype("<i8")
            crcs = (np.concatenate(self._crcs) if self._crcs else np.zeros(0, np.uint32)).astype("<u4")
            head = json.dumps({**self.header, "rows": int(lengths.size), "bytes": int(offsets[-1])}).encode()
            f.write(offsets.tobytes())
            f.write(crcs.tobytes())
            f.write(head)
            f.write(np.int64(len(head)).astype("<i8").tobytes() + MAGIC)
            f.close()
        except BaseException as e:
            f.close()
            ctx.__exit__(type(e), e, e.__traceback__)
            raise
        ctx.__exit__(None, None, None)


def read_header(path: str | Path) -> dict:
    """The header of a ``.texts`` file, its size checked against it; a one-line error if it is not whole
    (or cannot be read at all)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _TAIL:
                raise _damaged(path, "shorter than its footer")
            f.seek(size - _TAIL)
            tail = f.read(_TAIL)
            if tail[8:] != MAGIC:
                raise _damaged(path, "no dgamix footer: not written to the end")
            hlen = int(np.frombuffer(tail[:8], "<i8")[0])
            if not 0 < hlen <= size - _TAIL:
                raise _damaged(path, "its footer is garbled")
            f.seek(size - _TAIL - hlen)
            raw = f.read(hlen)
    except OSError as e:
        raise _unreadable(path, e) from None
    try:
        head = json.loads(raw)
        rows, nbytes = int(head["rows"]), int(head["bytes"])
    except (ValueError, TypeError, KeyError) as e:
        raise _damaged(path, f"its header is garbled: {type(e).__name__}") from None
    if rows < 0 or nbytes < 0 or nbytes + 8 * (rows + 1) + 4 * rows + hlen + _TAIL != size:
        raise _damaged(path, "its size does not match its header")
    return head


class TextStore:
    """Reads documents of a ``.texts`` file by row (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path, self._fd = Path(path), None  # the descriptor is opened on the first read
        self.header = read_header(self.path)
        self.rows, self.nbytes = int(self.header["rows"]), int(self.header["bytes"])

    def __len__(self) -> int:
        return self.rows

    def _read(self, fd: int, n: int, at: int) -> bytearray:
        try:
            data = files.read_at(fd, n, at)
        except OSError as e:
            raise _unreadable(self.path, e) from None
        if data is None:
            raise _damaged(self.path, "shorter than its header says")
        return data

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def read(self, rows) -> list[str]:
        """The texts at ``rows`` (any order, repeats allowed). Rows must be < ``len(self)``."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as e:
                raise _unreadable(self.path, e) from None
        fd, out = self._fd, []
        crc_at = self.nbytes + 8 * (self.rows + 1)
        for r in rows.tolist():
            a, b = np.frombuffer(self._read(fd, 16, self.nbytes + 8 * r), "<i8").tolist()
            if not 0 <= a <= b <= self.nbytes:
                raise _damaged(self.path, f"offsets of row {r:,}")
            raw = self._read(fd, b - a, a)
            if _crc(r, raw) != int(np.frombuffer(self._read(fd, 4, crc_at + 4 * r), "<u4")[0]):
                raise _damaged(self.path, f"row {r:,} does not match its checksum")
            out.append(raw.decode("utf-8"))
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict:  # pickled to a worker process: it opens its own descriptor
        return {**self.__dict__, "_fd": None}

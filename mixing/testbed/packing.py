"""Documents packed into training windows, so that every piece of a drawn document is trained on
once: the reference trainer's batches (the tokens themselves: ``tokens``).

Special ids of the compact vocabulary: 0 = pad (``PAD``, ignored by the loss), 1 = unk, 2 = end of
document (``EOS``, appended to every document, so the model sees where one packed document stops).

Documents. ``DocTokens`` holds every document whole: ``flat`` (total,) int32 compact ids and
``offsets`` (n_docs + 1,) int64, document i = flat[offsets[i]:offsets[i + 1]] (duplicates are
empty). Its length is docs.parquet's ``n_tokens`` (untruncated pieces), so a budget in
``--tokens-per-domain`` counts exactly the pieces that training will see.

Packing. A batch is ``rows`` windows of context + 1 pieces cut from the stream
doc, EOS, doc, EOS, ... of the drawn documents: inputs window[:-1], targets window[1:]. The
training ``Packer`` carries the tail of its last document into the next batch, so every drawn
piece is trained on exactly once and no window is padded. Alignment probes are packed from
fresh documents (``probe_batch``); the target batches and the evaluation sets are packed once
(``pack_stream``; an evaluation set takes an equal share of windows from every document).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from dgamix.mixing.loss import PAD

UNK, EOS = 1, 2
N_SPECIAL = 3  # pad, unk, eos: compact id N_SPECIAL + r is the piece of frequency rank r


class DocTokens:
    """Every document's compact ids: doc i = ``flat[offsets[i]:offsets[i + 1]]``.

    flat (total,) int32; offsets (n_docs + 1,) int64, non-decreasing, offsets[0] = 0.
    """

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self.flat = np.asarray(flat, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        if self.offsets.ndim != 1 or self.offsets.size < 1 or self.offsets[0] != 0 \
                or self.offsets[-1] != self.flat.size or (np.diff(self.offsets) < 0).any():
            raise ValueError("offsets must start at 0, end at len(flat) and never decrease")

    def __len__(self) -> int:
        return self.offsets.size - 1

    def lengths(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Pieces of each document (without its EOS), int64."""
        n = np.diff(self.offsets)
        return n if ids is None else n[np.asarray(ids, dtype=np.int64)]

    def stream(self, ids: np.ndarray, limit: int | None = None) -> np.ndarray:
        """The documents ``ids`` in order, each followed by EOS: (sum(lengths) + len(ids),) int32.
        ``limit``: keep at most the first ``limit`` pieces of each document."""
        ids = np.asarray(ids, dtype=np.int64)
        lens = self.lengths(ids)
        if limit is not None:
            lens = np.minimum(lens, limit)
        out = np.full(int(lens.sum()) + ids.size, EOS, dtype=np.int32)
        starts = np.cumsum(lens + 1) - (lens + 1)              # where each document starts in ``out``
        seg = np.repeat(np.arange(ids.size), lens)             # document of each piece
        pos = np.arange(seg.size) - np.repeat(np.cumsum(lens) - lens, lens)  # position inside it
        out[starts[seg] + pos] = self.flat[self.offsets[ids][seg] + pos]
        return out


class Windows:
    """Fixed-length training sequences: ``tokens`` (n, context + 1) int32, right-padded with PAD."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = np.asarray(tokens, dtype=np.int32)
        if self.tokens.ndim != 2 or self.tokens.shape[1] < 2:
            raise ValueError(f"windows must be (n, context + 1 >= 2), got {self.tokens.shape}")

    @property
    def context(self) -> int:
        return self.tokens.shape[1] - 1

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def batch(self, rows: np.ndarray) -> torch.Tensor:
        """int64 tensor (len(rows), L) of the windows ``rows``, trimmed to the longest real length
        L <= context + 1 (trailing all-pad columns cost compute and do not change the loss)."""
        t = self.tokens[np.asarray(rows, dtype=np.int64)]
        real = (t != PAD).any(axis=0)
        width = max(2, int(np.flatnonzero(real)[-1]) + 1) if real.any() else 2
        return torch.from_numpy(t[:, :width].astype(np.int64))


def pack_stream(stream: np.ndarray, context: int, rows: int | None = None) -> Windows:
    """Cut a piece stream into consecutive windows of context + 1 pieces (the last one padded with
    PAD); at most ``rows`` windows (None = all of the stream)."""
    width = context + 1
    n = -(-stream.size // width)
    if rows is not None:
        n = min(n, rows)
    out = np.zeros(n * width, np.int32)
    take = min(stream.size, out.size)
    out[:take] = stream[:take]
    return Windows(out.reshape(n, width))


class Packer:
    """Training batches of ``rows`` x (context + 1) pieces from a stream of drawn documents.

    ``next(draw)`` fills a batch with the carried tail of the previous batch's last document,
    then whole documents in draw order (each followed by EOS) until the batch is full; the rest
    of the last document is carried into the next batch. So every drawn piece is trained on
    exactly once, in draw order, no window holds padding, and the carry is at most one
    document's tail. Documents are drawn ``m`` at a time (``draw(m)`` -> m doc ids), with m
    estimated from ``mean_len`` so that a batch rarely draws more than it uses; drawn documents
    not yet started wait in ``pending`` for the next batch. State: the carry and the pending ids.
    """

    def __init__(self, tokens: DocTokens, context: int, rows: int, mean_len: float) -> None:
        self.tokens, self.width, self.rows = tokens, context + 1, rows
        self.mean_len = max(1.0, float(mean_len))
        self.carry = np.zeros(0, np.int32)
        self.pending = np.zeros(0, np.int64)

    def next(self, draw) -> torch.Tensor:
        """(rows, context + 1) int64 tensor of the next training windows."""
        need = self.rows * self.width
        parts, have = [self.carry], self.carry.size
        while have < need:
            if not self.pending.size:
                self.pending = np.asarray(draw(max(1, math.ceil((need - have) / (self.mean_len + 1)))), np.int64)
            lens = self.tokens.lengths(self.pending) + 1
            # take documents up to and including the one that fills the batch
            take = int(np.searchsorted(np.cumsum(lens), need - have)) + 1
            piece = self.tokens.stream(self.pending[:take])
            self.pending = self.pending[take:]
            parts.append(piece)
            have += piece.size
        stream = np.concatenate(parts)
        self.carry = stream[need:].copy()
        return torch.from_numpy(stream[:need].reshape(self.rows, self.width).astype(np.int64))

    def state_dict(self) -> dict:
        return {"carry": torch.from_numpy(self.carry.copy()), "pending": torch.from_numpy(self.pending.copy())}

    def load_state_dict(self, state: dict) -> None:
        self.carry = np.asarray(state["carry"], dtype=np.int32).copy()
        self.pending = np.asarray(state["pending"], dtype=np.int64).copy()


def probe_batch(tokens: DocTokens, draw, rows: int, context: int, mean_len: float) -> torch.Tensor:
    """One alignment probe: ``rows`` packed windows of freshly drawn documents (no carry in, and
    the surplus of the draw dropped), (rows, context + 1) int64."""
    return Packer(tokens, context, rows, mean_len).next(draw)


class PackedBatches:
    """The reference trainer's batches for the alignments (``online.Batches``): a target batch is
    rows of the target's packed windows, a probe ``size`` packed windows of freshly drawn documents."""

    def __init__(self, tokens: DocTokens, target: Windows, context: int, mean_len: float) -> None:
        self.tokens, self.target_windows, self.context, self.mean_len = tokens, target, context, mean_len
        self.n_target = len(target)

    def target(self, rows: np.ndarray) -> torch.Tensor:
        return self.target_windows.batch(rows)

    def probe(self, draw, size: int) -> torch.Tensor:
        return probe_batch(self.tokens, draw, size, self.context, self.mean_len)

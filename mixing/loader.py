"""DataLoader workers for an ``OnlineMixture``: the mixture draws doc ids in the training process,
workers read and tokenise the texts.

    sampler = MixtureBatchSampler(mix, batch_size=16, delay=4)    # Sampler[list[int]]: doc ids
    data = DocDataset(mix.texts, encode)                           # doc id -> encode(text), in a worker
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=pad, num_workers=2, prefetch_factor=2)
    for step, batch in zip(range(start, steps), loader):           # (or torchdata's StatefulDataLoader)
        mix.maybe_reweight(step, model)
        ...
    ckpt = {..., "mix": mix.state_dict(), "loader": sampler.state_dict(consumed=steps_done)}

Design. The sampler lives in the training process, so a reweighting reaches the next draw without
restarting workers; ``DocDataset`` holds only the text reader and ``encode``, so a worker gets a
copy cheaply (pickled without the reader's cached columns under spawn / forkserver) and reads each
batch with one grouped lookup (``__getitems__``).

Delay. A loader draws batches ahead of the one it hands out (prefetch), and how far ahead depends
on the loader, not on the training. So that the documents trained on do not depend on it (the same
doc ids and weights with 0 or N workers, and an exact resume wherever the loader stood), draw k
uses the weights the mixture held after its reweighting of step ``k // accumulation - delay``
(read from ``mix.log``; before the first entry, the weights the sampler started with): a weight
update reaches training ``delay`` steps after it is made, whatever the prefetch. A draw that needs
a reweighting which has not happened yet (``mix.due`` says it will) is refused with a one-line
``DgamixError``: ``delay`` is then smaller than the loader's draw-ahead (``min_delay``).

Trainer / worker matrix (A = batches drawn beyond the one handed out, a = batches per optimiser
step; "min delay" is ``min_delay(A, a, fetch_first)``):

    route                                         A           min delay           resume state
    own loop, mix.next_batch (no DataLoader)      0           (weights live)      mix.state_dict()
    own loop, DataLoader(num_workers=0)           0           0                   sampler.state_dict(consumed=c)
    own loop, DataLoader(num_workers=N, P)        N * P       ceil(N * P / a)     sampler.state_dict(consumed=c)
    own loop, StatefulDataLoader(N, P)            N * P       ceil(N * P / a)     loader.state_dict()
    HF MixtureTrainer (dataloader_num_workers=N)  1 + N * P   1 + ceil(A / a)     checkpoint folder (automatic)

(P = prefetch_factor, default 2; the own-loop rows assume ``maybe_reweight(step)`` is called
before the step's batches are taken; the Trainer takes a step's batches before its callbacks'
``on_step_begin`` and accelerate's loader fetches one batch ahead, hence the 1 + in that row.)
DDP: every rank builds the same sampler; each draw is one global batch of world_size x n doc ids
of which the rank keeps its slice (``OnlineMixture.next_ids``), so ranks see disjoint documents
and their sampler states are equal.

Resume. ``state_dict()`` is the sampler's state after the batches drawn so far (what torchdata's
``StatefulDataLoader`` snapshots when it draws the batch it later hands out, so its
``loader.state_dict()`` is the state at the consumed position); with a plain ``DataLoader``, which
has drawn A batches more than the loop consumed, ``state_dict(consumed=c)`` gives the state after
the first c draws (the sampler keeps the bookkeeping of its last ``history`` draws to rewind). Load
the mixture's state first, then the sampler's (or the loader's), then start iterating: the next
batches equal the uninterrupted run's. Save torch's RNG too (``torch.get_rng_state()``) when the
model uses dropout.
"""
from __future__ import annotations

import collections
import copy
import math
from typing import Any, Callable, Iterator

import numpy as np
import torch

from dgamix.mixing.state import from_plain, to_plain
from dgamix.pipeline.core.errors import DgamixError

__all__ = ["MixtureBatchSampler", "DocDataset", "min_delay"]

LOADER_STATE_FORMAT = 1  # version of MixtureBatchSampler.state_dict's layout


def min_delay(lookahead: int, accumulation: int = 1, fetch_first: bool = False) -> int:
    """The smallest ``delay`` (steps) a loader that draws ``lookahead`` batches ahead allows, with
    ``accumulation`` batches per step; ``fetch_first``: the loop takes a step's batches before it
    calls ``maybe_reweight`` for that step (transformers.Trainer does)."""
    if lookahead < 0 or accumulation < 1:
        raise ValueError(f"lookahead must be >= 0 and accumulation >= 1, got {lookahead}, {accumulation}")
    return int(fetch_first) + math.ceil(lookahead / accumulation)


class MixtureBatchSampler(torch.utils.data.Sampler):
    """Endless batches of doc ids (lists of ``batch_size`` ints) drawn by ``mix`` in this process.

    delay: draw k uses the weights of step ``k // accumulation - delay`` (module doc); accumulation:
    batches per optimiser step; history: draws kept to rewind ``state_dict(consumed=...)``.
    ``drawn`` counts the draws made; ``weights_of(k)`` are the weights draw k uses, ``doc_ids(k)``
    its doc ids (recent draws).
    """

    def __init__(self, mix, batch_size: int, *, delay: int = 0, accumulation: int = 1,
                 history: int = 1024) -> None:
        if batch_size < 1 or delay < 0 or accumulation < 1 or history < 1:
            raise DgamixError(f"MixtureBatchSampler needs batch_size >= 1, delay >= 0, accumulation >= 1 and "
                              f"history >= 1; got batch_size={batch_size}, delay={delay}, "
                              f"accumulation={accumulation}, history={history}.")
        self.mix, self.batch_size = mix, int(batch_size)
        self.delay, self.accumulation = int(delay), int(accumulation)
        self.drawn = 0
        self.initial = np.array(mix.weights(), dtype=np.float64)  # weights before the first log entry
        self._hist: collections.deque = collections.deque(maxlen=int(history))  # (k, rng before, idx, counts, ids)
        self._verified = -1  # every step <= this is reweighted in mix.log or not due

    # ----- drawing
    def weights_of(self, k: int) -> np.ndarray:
        """The weights draw k uses: the mixture's after its reweighting of step k // accumulation - delay."""
        t = k // self.accumulation - self.delay
        if t < 0:
            return self.initial
        log = self.mix.log
        logged = {int(r["step"]) for r in log}
        for s in range(self._verified + 1, t + 1):
            if s not in logged and self.mix.due(s):
                raise DgamixError(f"batch {k} (step {k // self.accumulation}) uses the weights of step {t}, but "
                                  f"step {s}'s reweighting has not happened yet: the loader draws further ahead "
                                  f"than delay={self.delay} allows; pass a larger delay (min_delay).")
            self._verified = s
        w = self.initial
        for r in log:  # the log is in step order
            if int(r["step"]) > t:
                break
            w = r["weights"]
        return np.asarray(w, dtype=np.float64)

    def draw(self) -> np.ndarray:
        """The next batch's doc ids (batch_size,) int64 (this rank's slice)."""
        k = self.drawn
        w = self.weights_of(k)
        s = self.mix.sampler
        rng, before = copy.deepcopy(s.rng.bit_generator.state), s.draws.copy()
        ids, _ = self.mix.next_ids(self.batch_size, weights=w)
        changed = np.flatnonzero(s.draws != before)
        self._hist.append((k, rng, changed, s.draws[changed] - before[changed], ids))
        self.drawn = k + 1
        return ids

    def doc_ids(self, k: int) -> list[int]:
        """The doc ids of draw k, while it is among the last ``history`` draws."""
        for h in self._hist:
            if h[0] == k:
                return h[4].tolist()
        raise DgamixError(f"draw {k} is not among the sampler's last {self._hist.maxlen} draws (drawn: {self.drawn}).")

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.draw().tolist()

    # ----- state
    def state_dict(self, consumed: int | None = None) -> dict:
        """The state after ``consumed`` draws (default: all drawn so far), plain values."""
        state = self.mix.sampler.state_dict()
        k = self.drawn
        if consumed is not None and consumed != k:
            if not 0 <= consumed <= k:
                raise DgamixError(f"consumed={consumed} but the sampler has drawn {k} batches.")
            later = [h for h in self._hist if h[0] >= consumed]
            if len(later) != k - consumed:
                raise DgamixError(f"consumed={consumed} is more than history={self._hist.maxlen} draws behind the "
                                  f"sampler ({k} drawn): call state_dict sooner or raise history.")
            draws = np.array(state["draws"], dtype=np.int64)
            for _, _, idx, counts, _ in later:
                draws[idx] -= counts
            state = {**state, "draws": draws, "rng": later[0][1]}
            k = consumed
        return to_plain({"format": LOADER_STATE_FORMAT, "drawn": k, "batch_size": self.batch_size,
                         "delay": self.delay, "accumulation": self.accumulation,
                         "world_size": self.mix.world_size, "initial": self.initial, "sampler": state})

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict``: load the mixture's state first (its log decides the weights)."""
        state = from_plain(state)
        if state.get("format") != LOADER_STATE_FORMAT:
            raise DgamixError(f"loader state format {state.get('format')!r}; this dgamix reads {LOADER_STATE_FORMAT}.")
        mine = {"batch_size": self.batch_size, "delay": self.delay, "accumulation": self.accumulation,
                "world_size": self.mix.world_size}
        differ = [f"{key}={state[key]} (this sampler: {value})" for key, value in mine.items() if state[key] != value]
        if differ:
            raise DgamixError(f"the loader state was saved with {', '.join(differ)}: resume with the same settings.")
        try:
            self.mix.sampler.load_state_dict(state["sampler"])
        except ValueError as e:
            raise DgamixError(f"the loader state belongs to another mixture: {e}.") from None
        self.drawn = int(state["drawn"])
        self.initial = np.asarray(state["initial"], dtype=np.float64)
        self._hist.clear()
        self._verified = -1


class DocDataset(torch.utils.data.Dataset):
    """Map-style dataset of a mixture's documents: ``dataset[doc_id]`` -> ``encode(text)``.

    texts: doc id -> text reader (``DocTexts``, e.g. ``mix.texts``; anything whose ``[ids]`` gives a
    list of str); encode(text) -> one example (a tokenizer's output, or anything the collate takes);
    with_ids: items are ``(doc_id, example)`` pairs instead. A batch is read with one lookup
    (``__getitems__``). Pickled (spawn / forkserver workers) without the reader's cached columns.
    """

    def __init__(self, texts, encode: Callable[[str], Any], with_ids: bool = False) -> None:
        if texts is None:
            raise DgamixError("DocDataset needs a text reader: the mixture reads no texts (mix.texts is None).")
        self.texts, self.encode, self.with_ids = texts, encode, bool(with_ids)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitems__(self, doc_ids: list[int]) -> list:
        ids = [int(i) for i in doc_ids]
        got = self.texts[np.asarray(ids, dtype=np.int64)]
        examples = [self.encode(t) for t in got]
        return list(zip(ids, examples)) if self.with_ids else examples

    def __getitem__(self, doc_id: int):
        return self.__getitems__([doc_id])[0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "texts": _without_cache(self.texts)}


def _without_cache(texts):
    """A copy of a DocTexts whose text reader starts empty (same files and settings); other readers as they are."""
    from dgamix.pipeline.core.sources import TextReader

    reader = getattr(texts, "reader", None)
    if not isinstance(reader, TextReader):
        return texts
    out = copy.copy(texts)
    out.reader = TextReader(reader.text_column, reader.root, reader.fallback, reader.cache_bytes)
    return out

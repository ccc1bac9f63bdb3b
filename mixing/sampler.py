"""Turn weights into document ids: domain index and mixture sampler.

Sampling: domain c ~ alpha (alpha = w @ P with a basis matrix, else w itself), then a
document of c. In limited-data mode (default) a domain's documents are drawn without
replacement in a pseudo-random order; when they run out the domain starts a new epoch with a
fresh order, and the sampler counts draws and epochs (repetitions) per domain.

Determinism and state. The order of domain c in epoch e is a pure function of (seed, c, e):
documents sorted by a splitmix64 hash of (seed, c, e, position). The obvious alternative,
np.random.default_rng([seed, c, e]).permutation, which gives the same statelessness but costs
~50 us per domain per epoch (12 s for one pass over 262,144 domains); the hash builds the
orders of any set of domains in one vectorised sort. The state is therefore just the draw
count of every domain plus the state of the main generator (numpy PCG64, one double per draw;
two in unlimited mode). Draw i of a call is assigned the next unused position of its domain
in draw order, so the stream does not depend on how it is cut into calls:
sample(a + b) == sample(a) ++ sample(b), and a save / load anywhere continues it exactly.
"""
from __future__ import annotations

import numpy as np

from dgamix.mixing.dga import BasisMatrix

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_SALT_POOL = 1 << 63  # "epoch" naming the token-budget subset; no real epoch gets there


# --------------------------------------------------------------------------- numpy helpers

def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 arrays (wrapping arithmetic)."""
    x = np.asarray(x, dtype=_U64) + _GOLDEN
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _stable_argsort(x: np.ndarray) -> np.ndarray:
    """np.argsort(x, kind="stable") for non-negative ints, as LSD radix passes on 16-bit digits.

    numpy radix-sorts only 16-bit keys; two such passes beat its merge sort ~3x at 2M keys.
    """
    x = np.asarray(x, dtype=np.int64)
    hi = int(x.max()) if x.size else 0
    order = np.argsort((x & 0xFFFF).astype(np.uint16), kind="stable")
    shift = 16
    while hi >> shift:
        digit = ((x[order] >> shift) & 0xFFFF).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
        shift += 16
    return order


def _segments(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For consecutive segments of the given sizes: (starts (S,), segment of each item (M,),
    position of each item inside its segment (M,))."""
    sizes = np.asarray(sizes, dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    seg = np.repeat(np.arange(sizes.size), sizes)
    return starts, seg, np.arange(int(sizes.sum()), dtype=np.int64) - starts[seg]


def _shuffled_segments(seg: np.ndarray, pos: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Positions that shuffle each consecutive segment independently.

    seg, pos (M,): segment of each item and its position inside it (from ``_segments``);
    keys (S,) uint64 name each segment's order. Returns order (M,) such that values[order]
    lists every segment in its pseudo-random order (segments stay in place). Ties of the
    hash keep position order (stable sort), so an order never depends on its neighbours.
    """
    h = _mix64(keys[seg] ^ (pos.astype(_U64) * _GOLDEN))
    seg_bits = max(1, int(keys.size).bit_length())
    if seg_bits <= 24:
        return np.argsort((seg.astype(_U64) << _U64(64 - seg_bits)) | (h >> _U64(seg_bits)),
                          kind="stable")
    return np.lexsort((h, seg))


# --------------------------------------------------------------------------- index

class DomainIndex:
    """CSR map domain -> document ids; memory O(docs).

    domains (K,) sorted unique domain ids present; sizes (K,) documents per domain;
    offsets (K+1,) into docs (D,), the document ids grouped by domain; tokens (D,) optional
    token counts aligned with docs. Domain ids may be sparse (up to 262,143 at level 3):
    they map to dense positions 0..K-1 with ``positions``.
    """

    def __init__(self, domains: np.ndarray, offsets: np.ndarray, docs: np.ndarray,
                 tokens: np.ndarray | None = None, k: int | None = None) -> None:
        self.domains = np.asarray(domains, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.docs = np.asarray(docs, dtype=np.int64)
        self.sizes = np.diff(self.offsets)
        self.tokens = None if tokens is None else np.asarray(tokens, dtype=np.int64)
        if k is None:
            k = int(self.domains[-1]) + 1 if self.domains.size else 0
        self.k = int(k)

    @classmethod
    def from_arrays(cls, doc_ids: np.ndarray, domains: np.ndarray, k: int | None = None,
                    n_tokens: np.ndarray | None = None) -> "DomainIndex":
        """Build from aligned int arrays doc_ids (D,), domains (D,) and optional n_tokens (D,)."""
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        domains = np.asarray(domains, dtype=np.int64)
        if doc_ids.shape != domains.shape or doc_ids.ndim != 1:
            raise ValueError(f"doc_ids {doc_ids.shape} and domains {domains.shape} must be "
                             "1-d arrays of the same length")
        if n_tokens is not None and np.shape(n_tokens) != doc_ids.shape:
            raise ValueError(f"n_tokens has shape {np.shape(n_tokens)}, expected {doc_ids.shape}")
        if domains.size and domains.min() < 0:
            raise ValueError("domain ids must be >= 0")
        if k is not None and domains.size and domains.max() >= k:
            raise ValueError(f"domain id {int(domains.max())} >= k = {k}")
        order = _stable_argsort(domains)
        sorted_dom = domains[order]
        first = np.flatnonzero(np.r_[True, sorted_dom[1:] != sorted_dom[:-1]]) if sorted_dom.size \
            else np.zeros(0, dtype=np.int64)
        offsets = np.r_[first, sorted_dom.size].astype(np.int64)
        tokens = None if n_tokens is None else np.asarray(n_tokens, dtype=np.int64)[order]
        return cls(sorted_dom[first], offsets, doc_ids[order], tokens, k)

    def __len__(self) -> int:
        """K, the number of non-empty domains."""
        return self.domains.size

    def positions(self, domain_ids: np.ndarray) -> np.ndarray:
        """Dense positions (int64, same shape) of domain ids; -1 where a domain has no documents."""
        ids = np.asarray(domain_ids, dtype=np.int64)
        pos = np.searchsorted(self.domains, ids)
        pos = np.minimum(pos, max(self.domains.size - 1, 0))
        found = (self.domains[pos] == ids) if self.domains.size else np.zeros(ids.shape, bool)
        return np.where(found, pos, -1)


# --------------------------------------------------------------------------- sampler

class _InverseCdf:
    """Exact inverse-cdf sampler of a fixed distribution over support (S,) dense positions.

    ``draw(u)`` equals np.searchsorted(cdf, u, side="right") but starts each search from a
    guide table of m = 2^b buckets (m >= S), so most draws resolve in one or two probes
    instead of a cache-missing binary search; stragglers fall back to searchsorted.
    """

    def __init__(self, support: np.ndarray, p: np.ndarray) -> None:
        self.support = support
        cdf = np.cumsum(p)
        self.cdf = cdf / cdf[-1]  # last entry is exactly 1.0 (x / x), so u < 1 always lands
        self.m = 1 << max(1, int(support.size - 1).bit_length())
        # power-of-two m: u * m and j / m are exact, so bucket j really starts at or below u
        self.guide = np.searchsorted(self.cdf, np.arange(self.m) / self.m, side="right")

    def draw(self, u: np.ndarray) -> np.ndarray:
        c = self.guide[(u * self.m).astype(np.int64)]
        todo = np.flatnonzero(self.cdf[c] <= u)
        for _ in range(3):  # linear probes, as searchsorted would: never stops on an empty step
            if not todo.size:
                return c
            c[todo] += 1
            todo = todo[self.cdf[c[todo]] <= u[todo]]
        if todo.size:
            c[todo] = np.searchsorted(self.cdf, u[todo], side="right")
        return c


class MixtureSampler:
    """Draw (doc_ids, domain ids) for weights w: basis j ~ w, domain c ~ P_j, doc in c.

    index: the DomainIndex. basis: a BasisMatrix (w over N bases, columns = domain ids
    0..k-1) or None (w directly over ``domain_ids``, default ``index.domains``).
    limited: documents without replacement inside a domain, new epoch when exhausted;
    otherwise uniform with replacement. tokens_per_domain: restrict each domain to a seeded
    subset of its documents whose tokens sum to at most this budget (at least one document),
    chosen by ``pool_seed`` (default ``seed``): two samplers with one pool_seed and different
    seeds (training and alignment probes) draw the same documents in different orders.
    Exposed counters (per dense domain, aligned with index.domains): draws, epochs.
    """

    def __init__(self, index: DomainIndex, basis: BasisMatrix | None = None, *, seed: int = 0,
                 limited: bool = True, tokens_per_domain: int | None = None,
                 domain_ids: np.ndarray | None = None, pool_seed: int | None = None) -> None:
        if not len(index):
            raise ValueError("the domain index is empty: no documents to sample")
        if basis is not None and domain_ids is not None:
            raise ValueError("give either a basis (columns are domain ids 0..k-1) or domain_ids")
        self.index, self.basis, self.seed, self.limited = index, basis, int(seed), bool(limited)
        labels = (np.arange(basis.k) if basis is not None else
                  index.domains if domain_ids is None else np.asarray(domain_ids, dtype=np.int64))
        self.labels = labels                       # domain id of each entry of alpha
        self._label_pos = index.positions(labels)  # dense position of each, -1 if empty
        self._seed_key = _mix64(np.array([self.seed % 2 ** 64], dtype=_U64))[0]
        self.pool_seed = self.seed if pool_seed is None else int(pool_seed)
        self.tokens_per_domain = tokens_per_domain
        self.pool_offsets, self.pool = self._make_pool(tokens_per_domain)
        self.pool_sizes = np.diff(self.pool_offsets)
        self.rng = np.random.default_rng(self.seed)
        self.draws = np.zeros(len(index), dtype=np.int64)
        # Cache: the current-epoch order of each domain's pool (a pure function of the state).
        self._perm = self.pool.copy()
        self._perm_epoch = np.full(len(index), -1, dtype=np.int64)
        self._mixture: _InverseCdf | None = None
        self._mixture_key: bytes | None = None

    # ----- construction helpers
    def _keys(self, dense: np.ndarray, epoch: np.ndarray | int, seed: int | None = None) -> np.ndarray:
        """uint64 key naming the order of (domain, epoch): depends on seed (default the sampler's),
        domain id, epoch."""
        key = self._seed_key if seed is None else _mix64(np.array([seed % 2 ** 64], dtype=_U64))[0]
        dom = self.index.domains[dense].astype(_U64)
        ep = np.asarray(epoch).astype(_U64)
        return _mix64(_mix64(key ^ _mix64(dom)) ^ ep)

    def _make_pool(self, budget: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(offsets (K+1,), docs) of every domain's sampling pool: all docs, or a token budget."""
        idx = self.index
        if budget is None:
            return idx.offsets, idx.docs
        if idx.tokens is None:
            raise ValueError("tokens_per_domain needs token counts: build the index with n_tokens")
        if budget < 1:
            raise ValueError(f"tokens_per_domain must be >= 1, got {budget}")
        starts, seg, pos = _segments(idx.sizes)
        order = _shuffled_segments(seg, pos, self._keys(np.arange(len(idx)), _SALT_POOL, self.pool_seed))
        tok = idx.tokens[order]
        cum = np.cumsum(tok)
        within = cum - (cum[starts] - tok[starts])[seg]   # tokens so far inside the domain
        keep = (within <= budget) | (pos == 0)             # a prefix of the order, >= 1 doc
        sizes = np.bincount(seg[keep], minlength=len(idx))
        return np.r_[0, np.cumsum(sizes)].astype(np.int64), idx.docs[order][keep]

    def _orders(self, dense: np.ndarray, epochs: np.ndarray):
        """Documents of pools (dense[i], epochs[i]) in their epoch order, concatenated.

        Vectorised over any number of (domain, epoch) pairs. Returns (docs (M,), offsets
        (pairs+1,), slot (M,): where each item sits in the pool / cache layout, pair (M,)).
        """
        sizes = self.pool_sizes[dense]
        starts, pair, pos = _segments(sizes)
        order = _shuffled_segments(pair, pos, self._keys(dense, epochs))
        slot = self.pool_offsets[dense][pair] + pos
        return self.pool[slot[order]], np.r_[starts, sizes.sum()].astype(np.int64), slot, pair

    def _refresh_cache(self, dense: np.ndarray, epochs: np.ndarray) -> None:
        """Make the cached order of each dense[i] the one of epochs[i]."""
        stale = self._perm_epoch[dense] != epochs
        if not stale.any():
            return
        dense, epochs = dense[stale], epochs[stale]
        docs, _, slot, _ = self._orders(dense, epochs)
        self._perm[slot] = docs
        self._perm_epoch[dense] = epochs

    def _mixture_for(self, w: np.ndarray) -> _InverseCdf:
        """The sampling table for weights w (cached while w stays the same)."""
        w = np.asarray(w, dtype=np.float64)
        key = w.tobytes()
        if key == self._mixture_key:
            return self._mixture
        n = self.basis.n if self.basis is not None else self.labels.size
        if w.shape != (n,):
            raise ValueError(f"weights have shape {w.shape}, expected ({n},)")
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        alpha = self.basis.alpha(w) if self.basis is not None else w
        pos = alpha > 0
        empty = pos & (self._label_pos < 0)
        if empty.any():
            raise ValueError(f"weight on domains with no documents: ids "
                             f"{self.labels[empty][:10].tolist()} ({int(empty.sum())} in all)")
        support, p = self._label_pos[pos], alpha[pos]
        if (np.diff(support) < 0).any():  # keep draws in index order (memory locality)
            o = np.argsort(support)
            support, p = support[o], p[o]
        self._mixture, self._mixture_key = _InverseCdf(support, p), key
        return self._mixture

    # ----- sampling
    def alpha(self, w: np.ndarray) -> np.ndarray:
        """Domain probabilities over index.domains (K,) for weights w."""
        mix = self._mixture_for(w)
        out = np.zeros(len(self.index))
        out[mix.support] = np.diff(np.r_[0.0, mix.cdf])
        return out

    def sample(self, n: int, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """n draws for weights w: (doc_ids (n,) int64, domain ids (n,) int64)."""
        mix = self._mixture_for(w)
        if n <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if not self.limited:
            u = self.rng.random((n, 2))
            dense = mix.support[mix.draw(u[:, 0])]
            pick = (u[:, 1] * self.pool_sizes[dense]).astype(np.int64)
            np.add.at(self.draws, dense, 1)
            return self.pool[self.pool_offsets[dense] + pick], self.index.domains[dense]
        c = mix.draw(self.rng.random(n))
        # Group the draws by domain, stably: the i-th draw of a domain in this call gets the
        # i-th next document of that domain (so the stream does not depend on call sizes).
        order = _stable_argsort(c)
        sc = c[order]
        first = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]])  # (U,) group starts
        counts = np.diff(np.r_[first, n])
        dense = mix.support[sc[first]]                          # (U,) domains drawn
        size, drawn = self.pool_sizes[dense], self.draws[dense]
        cursor, epoch = drawn % size, drawn // size
        self._refresh_cache(dense, epoch)
        # Item i of group g reads the cached order at offset + cursor + (i - first[g]).
        docs = self._perm.take(np.repeat(self.pool_offsets[dense] + cursor - first, counts)
                               + np.arange(n), mode="clip")
        left = size - cursor
        wrap = counts > left
        if wrap.any():  # those domains run out during this call: later epochs, slow path
            g = np.flatnonzero(wrap)
            _, seg, pos = _segments(counts[g] - left[g])
            docs[(first[g] + left[g])[seg] + pos] = self._next_epochs(dense[g], epoch[g],
                                                                      counts[g] - left[g], seg, pos)
        self.draws[dense] += counts
        out_docs = np.empty(n, dtype=np.int64)
        out_docs[order] = docs
        out_dom = np.empty(n, dtype=np.int64)
        out_dom[order] = np.repeat(self.index.domains[dense], counts)
        return out_docs, out_dom

    def _next_epochs(self, dense, epoch, extra, seg, pos) -> np.ndarray:
        """Documents for the ``extra`` (G,) draws of domains ``dense`` past their current
        epoch ``epoch``; item j of group seg[j] is draw pos[j] from the start of epoch + 1.
        Builds the orders of every later epoch touched (vectorised) and caches the last."""
        size = self.pool_sizes[dense]
        n_ep = (extra - 1) // size + 1                          # later epochs touched
        pair_start = np.cumsum(n_ep) - n_ep
        _, pair_g, pair_k = _segments(n_ep)
        orders, off, slot, pair = self._orders(dense[pair_g], epoch[pair_g] + 1 + pair_k)
        q = pos // size[seg]
        out = orders[off[pair_start[seg] + q] + pos - q * size[seg]]
        # Cache the last epoch touched: the next call continues inside it.
        last = (pair_k == n_ep[pair_g] - 1)[pair]
        self._perm[slot[last]] = orders[last]
        self._perm_epoch[dense] = epoch + n_ep
        return out

    @property
    def epochs(self) -> np.ndarray:
        """Completed passes over each domain's pool (K,): 1 = every document drawn once, 2 = the
        pool drawn a second time through (a domain repeats once this exceeds 1)."""
        return self.draws // self.pool_sizes

    # ----- state
    def state_dict(self) -> dict:
        """Plain state: draw counts, generator state and what they apply to."""
        return {"seed": self.seed, "pool_seed": self.pool_seed, "limited": self.limited,
                "tokens_per_domain": self.tokens_per_domain, "domains": self.index.domains.copy(),
                "pool_sizes": self.pool_sizes.copy(), "draws": self.draws.copy(),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict``: the continued stream equals an uninterrupted one."""
        for key in ("seed", "pool_seed", "limited", "tokens_per_domain"):
            if state.get(key, state["seed"] if key == "pool_seed" else None) != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state.get(key)!r}, this sampler "
                                 f"{getattr(self, key)!r}")
        if not (np.array_equal(state["domains"], self.index.domains)
                and np.array_equal(state["pool_sizes"], self.pool_sizes)):
            raise ValueError("sampler state was saved for a different domain index")
        self.draws = np.array(state["draws"], dtype=np.int64)
        self.rng.bit_generator.state = state["rng"]

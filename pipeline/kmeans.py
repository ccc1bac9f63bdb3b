"""Stage 1b: a top-down hierarchical k-means tree fitted with FAISS on bounded samples.

Level 1 is spherical k-means (``faiss.Kmeans``) with b_1 centroids on a seeded random sample
of at most b_1 * max_points_per_centroid embeddings. Every node of level l is then split by
an independent k-means with b_{l+1} centroids over (a bounded sample of) the documents the
tree descends into it. Each node's fit is the pure function :func:`fit_node`, so an engine
can run the nodes of a level anywhere (they only need their sample and their seed, which is
derived from (seed, level, node) by :func:`node_seed`).

Domain ids are flattened paths: a child of the level-(l-1) domain p has id ``p * b_l + j``
(j = 0, 1, ... over the centroids the node really got), so ids are unique within a level,
level-l ids lie in [0, b_1 * ... * b_l), and the ancestor of a level-L id at level l is
``id // (b_{l+1} * ... * b_L)``. A node with fewer members than b_l gets as many centroids as
it has members (one member: a single child); centroids left without any sample point after
FAISS's own empty-cluster splitting are dropped and the node's remaining children renumbered
0, 1, ..., so a node with dropped centroids lacks its highest child ids.

Memory: the embeddings are never loaded at once. The fit streams over the shards of a
:class:`VectorSource`: once per level to descend every document one level (keeping one int64
label per document, O(n) bytes), then to gather the selected sample (up to cap points per
node, chosen by seeded random priorities), in groups of nodes whose samples fit
``sample_memory`` bytes. The result does not depend on that grouping.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa

from dgamix.pipeline.core.errors import DgamixError, first_line
from dgamix.pipeline.core.manifest import embedding_matrix
from dgamix.pipeline.core.progress import progress_bar
from dgamix.pipeline.core.runtime import numpy_blas_single_thread


# --------------------------------------------------------------------------- sources
class VectorSource(Protocol):
    """Embeddings in shards, read one shard at a time (rows in a fixed global order).

    ``offsets[s]`` is the global position of shard s's first row; ``offsets[-1] == n``.
    ``read(s)`` returns (doc_ids int64 (rows,), vectors float32 (rows, dim)), validated.
    """

    n: int
    dim: int
    offsets: np.ndarray

    @property
    def num_shards(self) -> int: ...

    def read(self, s: int) -> tuple[np.ndarray, np.ndarray]: ...


class ArraySource:
    """An in-memory (n, d) array seen as shards of ``shard_size`` rows; doc ids are positions."""

    def __init__(self, x: np.ndarray, shard_size: int = 10_000):
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.n, self.dim = self.x.shape
        self.offsets = np.append(np.arange(0, self.n, shard_size), self.n).astype(np.int64)

    @property
    def num_shards(self) -> int:
        return len(self.offsets) - 1

    def read(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[s]), int(self.offsets[s + 1])
        return np.arange(a, b, dtype=np.int64), self.x[a:b]


# --------------------------------------------------------------------------- the tree
@dataclass
class Tree:
    """Per level (index 0 = level 1): domain ids (sorted), parent ids, centroids, sizes.

    Within a level the rows are sorted by domain id, hence grouped by parent: the children
    of parent p are the contiguous slice where ``parent == p``.
    """

    levels: tuple[int, ...]
    domain: list[np.ndarray]
    parent: list[np.ndarray]
    centroids: list[np.ndarray]
    size: list[np.ndarray | None] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return len(self.domain)

    @property
    def dim(self) -> int:
        return int(self.centroids[0].shape[1])

    def index_of(self, level: int, ids: np.ndarray) -> np.ndarray:
        """Row positions (within ``level``'s arrays) of domain ``ids``; error if one is unknown."""
        dom = self.domain[level - 1]
        pos = np.searchsorted(dom, ids)
        pos = np.minimum(pos, len(dom) - 1)
        if len(ids) and not np.array_equal(dom[pos], ids):
            bad = np.asarray(ids)[dom[pos] != ids][0]
            raise DgamixError(f"domain {bad} is not in level {level} of the tree; the assignments and the tree "
                              f"disagree: rerun `dgamix cluster` with --overwrite.")
        return pos

    def descend_level(self, x: np.ndarray, parent_labels: np.ndarray | None, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Level-``level`` domain of each row of ``x`` given its level-(level-1) domain.

        Nearest centroid by inner product among the children of the row's parent; the rows
        are grouped by parent and each group is one small matrix product. Ties go to the
        lower domain id. Returns (domain ids int64 (n,), similarities float32 (n,)).
        """
        dom, par, cent = self.domain[level - 1], self.parent[level - 1], self.centroids[level - 1]
        n = len(x)
        if level == 1 or n == 0:
            s = x @ cent.T
            j = np.argmax(s, axis=1)
            return dom[j], s[np.arange(n), j]
        out = np.empty(n, np.int64)
        sim = np.empty(n, np.float32)
        order = np.argsort(parent_labels, kind="stable")
        sorted_labels = parent_labels[order]
        groups, starts = np.unique(sorted_labels, return_index=True)
        ends = np.append(starts[1:], n)
        lo = np.searchsorted(par, groups, "left")
        hi = np.searchsorted(par, groups, "right")
        if np.any(hi == lo):
            bad = groups[hi == lo][0]
            raise DgamixError(f"domain {bad} of level {level - 1} has no children in the tree; the tree file is "
                              f"inconsistent: rerun `dgamix cluster` with --overwrite.")
        for g in range(len(groups)):
            idx = order[starts[g]:ends[g]]
            s = x[idx] @ cent[lo[g]:hi[g]].T
            j = np.argmax(s, axis=1)
            out[idx] = dom[lo[g] + j]
            sim[idx] = s[np.arange(len(idx)), j]
        return out, sim

    def descend(self, x: np.ndarray, depth: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Descend every row of ``x`` from the root: (ids int64 (n, L), similarities float32 (n, L))."""
        depth = depth or self.depth
        x = np.ascontiguousarray(x, dtype=np.float32)
        labels = np.empty((len(x), depth), np.int64)
        sims = np.empty((len(x), depth), np.float32)
        prev = None
        for level in range(1, depth + 1):
            prev, s = self.descend_level(x, prev, level)
            labels[:, level - 1], sims[:, level - 1] = prev, s
        return labels, sims

    def to_table(self) -> pa.Table:
        """tree.parquet: level, domain, parent (-1 at level 1), size (null if unknown), centroid."""
        lv, dom, par, size, cent = [], [], [], [], []
        for i in range(self.depth):
            m = len(self.domain[i])
            lv.append(np.full(m, i + 1, np.int32))
            dom.append(self.domain[i])
            par.append(self.parent[i])
            s = self.size[i] if i < len(self.size) else None
            size.append(np.full(m, -1, np.int64) if s is None else np.asarray(s, np.int64))
            cent.append(self.centroids[i])
        size_arr = np.concatenate(size)
        flat = pa.array(np.concatenate(cent).astype(np.float32).ravel())
        return pa.table({"level": pa.array(np.concatenate(lv), pa.int32()),
                         "domain": pa.array(np.concatenate(dom), pa.int64()),
                         "parent": pa.array(np.concatenate(par), pa.int64()),
                         "size": pa.array(size_arr, pa.int64(), mask=size_arr < 0),
                         "centroid": pa.FixedSizeListArray.from_arrays(flat, self.dim)})

    @classmethod
    def read(cls, path, levels: tuple[int, ...]) -> "Tree":
        """Load tree.parquet streaming the centroid column into one array (peak memory about
        twice the centroids, not four times as reading the whole table at once)."""
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path, pre_buffer=False, page_checksum_verification=True)
            table = pf.read(columns=["level", "domain", "parent", "size"])
            dim = pf.schema_arrow.field("centroid").type.list_size
            cent = np.empty((table.num_rows, dim), np.float32)
            i = 0
            for batch in pf.iter_batches(batch_size=16_384, columns=["centroid"]):
                v = embedding_matrix(batch.column(0), dim)
                cent[i:i + len(v)] = v
                i += len(v)
        except (KeyError, pa.ArrowException, OSError) as e:
            raise DgamixError(f"{path} is corrupt or not a dgamix tree ({first_line(e)}); nothing of it was used: "
                              f"rerun `dgamix cluster` with --overwrite.") from None
        return cls.from_table(table, levels, cent)

    @classmethod
    def from_table(cls, table: pa.Table, levels: tuple[int, ...], centroids: np.ndarray | None = None) -> "Tree":
        """A tree from tree.parquet's table (``centroids``: the centroid column already as (n, d))."""
        if centroids is None:
            centroids = embedding_matrix(table["centroid"])
        level = table["level"].to_numpy()
        cent = np.asarray(centroids, dtype=np.float32)
        if np.any(np.diff(level) < 0):  # written sorted by level; sort anything else
            order = np.argsort(level, kind="stable")
            table, cent, level = table.take(order), cent[order], level[order]
        # each level is a view of its rows of the one centroid array (no copies)
        size = table["size"].combine_chunks().fill_null(-1).to_numpy()
        dom_all, par_all = table["domain"].to_numpy(), table["parent"].to_numpy()
        bounds = np.searchsorted(level, np.arange(1, len(levels) + 2))
        tree = cls(tuple(levels), [], [], [], [])
        for lv in range(len(levels)):
            a, b = bounds[lv], bounds[lv + 1]
            tree.domain.append(dom_all[a:b].astype(np.int64, copy=False))
            tree.parent.append(par_all[a:b].astype(np.int64, copy=False))
            tree.centroids.append(cent[a:b])
            s = size[a:b]
            tree.size.append(None if (s < 0).any() else s.astype(np.int64, copy=False))
        return tree

    def checksum(self) -> str:
        """sha256 (16 hex) of the ids and centroid bytes: what the assignments depend on."""
        h = hashlib.sha256()
        for d, p, c in zip(self.domain, self.parent, self.centroids):
            h.update(np.ascontiguousarray(d, np.int64).tobytes())
            h.update(np.ascontiguousarray(p, np.int64).tobytes())
            h.update(np.ascontiguousarray(c, np.float32).tobytes())
        return h.hexdigest()[:16]


# --------------------------------------------------------------------------- one node
def node_seed(seed: int, level: int, node: int) -> int:
    """The FAISS seed of ``node`` at ``level`` (a 31-bit int), derived deterministically."""
    return int(np.random.SeedSequence([int(seed), int(level), int(node)]).generate_state(1)[0] & 0x7FFFFFFF)


def kmeans_pp(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; 2 + ln k candidates per step, as in
    scikit-learn): k rows of ``x`` spread out by D^2 sampling. Only the initial centroids;
    the k-means iterations are FAISS's."""
    rng = np.random.default_rng(seed)
    n = len(x)
    trials = 2 + int(np.log(k))
    sq = np.einsum("nd,nd->n", x, x)
    gram = x @ x.T if n <= 2048 else None  # small nodes: one product instead of one per step
    dots = (lambda idx: gram[:, idx]) if gram is not None else (lambda idx: x @ x[idx].T)
    chosen = [int(rng.integers(n))]
    d2 = np.maximum(sq + sq[chosen[0]] - 2 * dots(chosen[0]), 0)
    for _ in range(1, k):
        cum = np.cumsum(d2, dtype=np.float64)
        cand = np.minimum(np.searchsorted(cum, rng.random(trials) * cum[-1]), n - 1)
        dc = np.minimum(np.maximum(sq[:, None] + sq[cand][None, :] - 2 * dots(cand), 0), d2[:, None])
        best = int(np.argmin(dc.sum(axis=0)))
        chosen.append(int(cand[best]))
        d2 = dc[:, best]
    return np.ascontiguousarray(x[chosen])


INITS = ("kmeans++", "random")
SMALL_NODE_WORK = 1 << 24  # n * k * d below which a node's k-means runs single-threaded


def fit_node(x: np.ndarray, k: int, seed: int, niter: int = 20, mppc: int = 256,
             init: str = "kmeans++") -> tuple[np.ndarray, dict]:
    """Spherical k-means of one node: ``x`` (n >= 1, d) float32 -> (centroids (k', d), stats).

    FAISS (``faiss.Kmeans``, spherical, ``seed``) runs the iterations; the initial centroids
    are greedy k-means++ (``init="kmeans++"``, seeded by ``seed``) or FAISS's own random pick
    (``init="random"``). k' = min(k, n), minus centroids that end with no point of ``x``
    (FAISS splits clusters that become empty during the iterations; those still empty at the
    end are dropped and counted). k' == 1 is the normalised mean. Pure: same inputs, same
    outputs. Callers running many nodes should hold :func:`numpy_blas_single_thread` (as
    :func:`fit_tree` does) or set OPENBLAS_NUM_THREADS=1 in a worker.
    stats: n, k (requested), centroids (k'), objective (FAISS's final sum of similarities),
    similarity (sum of each point's similarity to its final centroid), imbalance (FAISS's
    imbalance factor of the final assignment), splits (empty clusters FAISS split), dropped.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if n == 0:
        raise ValueError("fit_node needs at least one point")
    k = int(min(k, n))
    stats = {"n": n, "k": k, "splits": 0, "dropped": 0}
    if k == 1:
        c = x.sum(axis=0, dtype=np.float64)
        norm = np.linalg.norm(c)
        cent = (c / norm if norm > 0 else x[0]).astype(np.float32)[None, :]
        obj = float((x @ cent[0]).sum())
        stats.update(centroids=1, objective=obj, similarity=obj, imbalance=1.0)
        return cent, stats
    import faiss

    km = faiss.Kmeans(d, k, niter=int(niter), seed=int(seed), spherical=True, max_points_per_centroid=int(mppc),
                      min_points_per_centroid=1, verbose=False)
    if init not in INITS:
        raise DgamixError(f"k-means init {init!r} is unknown; use one of {', '.join(INITS)}.")
    start = kmeans_pp(x, k, seed) if init == "kmeans++" and k < n else None
    # Small nodes run on one thread: OpenMP start-up and barriers cost more than the work there
    # (and much more on a loaded machine). FAISS's result does not depend on the thread count.
    threads = faiss.omp_get_max_threads()
    if n * k * d < SMALL_NODE_WORK:
        faiss.omp_set_num_threads(1)
    try:
        km.train(x, init_centroids=start) if start is not None else km.train(x)
    finally:
        faiss.omp_set_num_threads(threads)
    cent = np.ascontiguousarray(km.centroids, dtype=np.float32)
    s = x @ cent.T
    j = np.argmax(s, axis=1)
    counts = np.bincount(j, minlength=k)
    keep = counts > 0
    stats["splits"] = int(sum(st["nsplit"] for st in km.iteration_stats))
    stats["dropped"] = int(k - keep.sum())
    stats["objective"] = float(km.obj[-1]) if len(km.obj) else 0.0
    stats["similarity"] = float(s[np.arange(n), j].sum())
    stats["imbalance"] = float(k * (counts.astype(np.float64) ** 2).sum() / float(n) ** 2)
    cent = cent[keep]
    stats["centroids"] = int(len(cent))
    return cent, stats


# --------------------------------------------------------------------------- sampling
def sample_positions(labels: np.ndarray, parents: np.ndarray, cap: int, seed: int, level: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``cap`` positions per parent, chosen by seeded random priorities.

    labels: the level-(level-1) domain of every position; parents: the sorted domain ids.
    Returns (positions, bounds): parent i's sample is positions[bounds[i]:bounds[i+1]],
    in ascending position order.
    """
    n = len(labels)
    prio = np.random.default_rng([int(seed), int(level), 0x5A3]).random(n)
    order = np.lexsort((prio, labels))
    lab_sorted = labels[order]
    pidx = np.searchsorted(parents, lab_sorted)
    starts = np.searchsorted(lab_sorted, parents, "left")
    rank = np.arange(n) - starts[pidx]
    keep = rank < cap
    sel, sel_p = order[keep], pidx[keep]
    o2 = np.lexsort((sel, sel_p))
    sel, sel_p = sel[o2], sel_p[o2]
    bounds = np.searchsorted(sel_p, np.arange(len(parents) + 1), "left")
    return sel.astype(np.int64), bounds


def gather(source: VectorSource, positions: np.ndarray, read_all: bool = False) -> np.ndarray:
    """Vectors at global ``positions`` (any order), reading only the shards that hold them."""
    out = np.empty((len(positions), source.dim), np.float32)
    order = np.argsort(positions, kind="stable")
    sp = positions[order]
    cuts = np.searchsorted(sp, source.offsets)
    for s in range(source.num_shards):
        a, b = cuts[s], cuts[s + 1]
        if a == b and not read_all:
            continue
        _, x = source.read(s)
        if a < b:
            out[order[a:b]] = x[sp[a:b] - source.offsets[s]]
    return out


# --------------------------------------------------------------------------- the fit
@dataclass(frozen=True)
class FitConfig:
    """What the tree depends on. Units: points are embeddings; memory is bytes."""

    levels: tuple[int, ...]
    seed: int = 0
    niter: int = 20                      # k-means iterations per node
    max_points_per_centroid: int = 256   # sample cap per node = branching * this
    sample_memory: int = 1 << 30         # bytes of sampled vectors held at once (does not change the result)
    init: str = "kmeans++"               # initial centroids of every node: kmeans++ | random (FAISS's)


def _label_pass(source: VectorSource, tree: Tree, labels: np.ndarray, level: int, quiet: bool) -> None:
    """Descend every document from its level-(level-1) label to ``level``, in place."""
    with progress_bar(f"descend level {level}", source.n, quiet, unit="docs") as tick:
        for s in range(source.num_shards):
            a, b = int(source.offsets[s]), int(source.offsets[s + 1])
            _, x = source.read(s)
            labels[a:b] = tree.descend_level(x, labels[a:b], level)[0]
            tick(b - a)


def fit_tree(source: VectorSource, cfg: FitConfig, quiet: bool = True, engine=None) -> tuple[Tree, list[dict]]:
    """Fit the tree top-down over ``source``. Returns (tree with sizes of levels < L, per-level stats).

    Sizes of the last level are left None (the assignment pass counts them). ``engine``
    (:class:`dgamix.pipeline.engine.EngineConfig`, default local): with Ray, the nodes of each level
    below the first are fitted as Ray tasks (same samples, same seeds: the same tree).
    """
    from dgamix.pipeline.engine import LOCAL

    with numpy_blas_single_thread():
        return _fit_tree(source, cfg, quiet, engine or LOCAL)


def _fit_tree(source: VectorSource, cfg: FitConfig, quiet: bool, engine) -> tuple[Tree, list[dict]]:
    from dgamix.pipeline.engine import LOCAL, map_tasks

    levels = tuple(int(b) for b in cfg.levels)
    n, d = source.n, source.dim
    mppc = int(cfg.max_points_per_centroid)
    tree = Tree(levels, [], [], [], [])
    labels = np.zeros(n, np.int64)  # level-0 label: the root, 0
    stats: list[dict] = []
    for level, b in enumerate(levels, start=1):
        t0 = time.perf_counter()
        if level == 1:
            parents, counts = np.zeros(1, np.int64), np.array([n], np.int64)
            parent_cent = None
        else:
            parents = tree.domain[level - 2]
            counts = np.bincount(np.searchsorted(parents, labels), minlength=len(parents)).astype(np.int64)
            tree.size[level - 2] = counts
            parent_cent = tree.centroids[level - 2]
        cap = b * mppc
        pos, bounds = sample_positions(labels, parents, cap, cfg.seed, level)
        per_node = np.diff(bounds)
        budget = max(cap, int(cfg.sample_memory) // (4 * d))
        groups, start, acc = [], 0, 0  # contiguous runs of parents whose samples fit the budget
        for i, m in enumerate(per_node):
            if acc + m > budget and i > start:
                groups.append((start, i))
                start, acc = i, 0
            acc += int(m)
        groups.append((start, len(parents)))

        doms, pars, cents, node_stats = [], [], [], []
        with progress_bar(f"fit level {level}", len(parents), quiet, unit="nodes") as tick:
            for g0, g1 in groups:
                gpos = pos[bounds[g0]:bounds[g1]]
                xs = gather(source, gpos, read_all=(level == 1))
                calls = ((xs[bounds[i] - bounds[g0]:bounds[i + 1] - bounds[g0]], min(b, int(counts[i])),
                          node_seed(cfg.seed, level, int(parents[i])), cfg.niter, mppc, cfg.init)
                         for i in range(g0, g1) if counts[i] > 0)
                fits = map_tasks(fit_node, calls, engine if level > 1 else LOCAL)  # independent nodes
                for i in range(g0, g1):
                    p = int(parents[i])
                    if counts[i] == 0:  # no document reached this node: it stays a single child
                        cent = parent_cent[i:i + 1].copy()
                        st = {"n": 0, "k": 1, "centroids": 1, "objective": 0.0, "similarity": 0.0,
                              "imbalance": 1.0, "splits": 0, "dropped": 0}
                    else:
                        cent, st = next(fits)
                    doms.append(p * b + np.arange(len(cent), dtype=np.int64) if level > 1
                                else np.arange(len(cent), dtype=np.int64))
                    pars.append(np.full(len(cent), p if level > 1 else -1, np.int64))
                    cents.append(cent)
                    node_stats.append(st)
                    tick(1)
                del xs
        tree.domain.append(np.concatenate(doms))
        tree.parent.append(np.concatenate(pars))
        tree.centroids.append(np.concatenate(cents).astype(np.float32))
        tree.size.append(None)
        npts = sum(st["n"] for st in node_stats)
        multi = [st for st in node_stats if st["centroids"] > 1]
        wsum = sum(st["n"] for st in multi)
        stats.append({
            "level": level, "branching": b, "nodes": len(parents), "domains": int(len(tree.domain[-1])),
            "reduced_nodes": int(sum(st["k"] < b for st in node_stats)),
            "sample_points": int(npts),
            "objective": float(sum(st["objective"] for st in node_stats)),
            "mean_similarity": float(sum(st["similarity"] for st in node_stats) / max(npts, 1)),
            "imbalance": float(sum(st["imbalance"] * st["n"] for st in multi) / wsum) if wsum else 1.0,
            "max_imbalance": float(max((st["imbalance"] for st in multi), default=1.0)),
            "splits": int(sum(st["splits"] for st in node_stats)),
            "empty_dropped": int(sum(st["dropped"] for st in node_stats)),
            "sample_groups": len(groups),
            "seconds": round(time.perf_counter() - t0, 3),
        })
        if level < len(levels):
            t1 = time.perf_counter()
            _label_pass(source, tree, labels, level, quiet)
            stats[-1]["seconds"] = round(stats[-1]["seconds"] + time.perf_counter() - t1, 3)
    return tree, stats

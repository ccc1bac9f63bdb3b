"""Stage 1c: assign every embedded document to a domain at every level by descending the tree.

`assign_shard` is the per-shard work (embeddings shard in -> assignments shard out);
`assign_vectors` does the same for any vectors (the target set uses it). `assign_workspace`
streams the workspace's embedding shards and writes ``clusters/<name>/assignments/part-NNNNN.parquet``
atomically, skipping parts already complete (same tree, same shard bounds), so a rerun resumes;
the parts to do run through :class:`ShardAssigner` on the local loop or a Ray actor pool
(:mod:`dgamix.pipeline.engine`), descending with numpy or, on ``--device cuda``, torch.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dgamix.pipeline.core import files, manifest, validate
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.progress import progress_bar
from dgamix.pipeline.core.runtime import numpy_blas_single_thread
from dgamix.pipeline.core.workspace import Workspace
from dgamix.pipeline.engine import LOCAL, EngineConfig, map_shards, session
from dgamix.pipeline.kmeans import Tree


# --------------------------------------------------------------------------- reading embeddings
class EmbeddingShards:
    """The workspace's embedding parts as a :class:`dgamix.pipeline.kmeans.VectorSource`.

    Checks up front that every part exists and has the manifest's dimension; each read
    checks row count, doc ids and that every value is finite.
    """

    def __init__(self, ws: Workspace):
        if not ws.embeddings.exists():
            raise DgamixError(f"{ws.embeddings} not found: {ws.root} has no embeddings; run "
                              f"`dgamix embed CORPUS --workspace {ws.root}` first.")
        self.ws = ws
        validate.embeddings(ws)  # schema, columns and built from the current docs.parquet
        table, meta = manifest.read(ws.embeddings, "embeddings")
        manifest.require_columns(table.column_names, ["shard", "first_doc_id", "last_doc_id", "rows", "path"],
                                 str(ws.embeddings), "rerun `dgamix embed` with --overwrite.")
        self.fingerprint: str = meta.get("inputs") or manifest.fingerprint(table.to_pylist())
        self.params: dict = meta.get("params", {})
        self.shard_ids = table["shard"].to_numpy().astype(np.int64)
        self.rows = table["rows"].to_numpy().astype(np.int64)
        self.first = table["first_doc_id"].to_numpy().astype(np.int64)
        self.last = table["last_doc_id"].to_numpy().astype(np.int64)
        self.paths = [ws.root / p for p in table["path"].to_pylist()]
        self.offsets = np.concatenate([[0], np.cumsum(self.rows)]).astype(np.int64)
        self.n = int(self.offsets[-1])
        if self.n == 0:
            raise DgamixError(f"{ws.embeddings} lists no embedded documents; rerun `dgamix embed` on a non-empty corpus.")
        dims = {}
        for path in self.paths:
            if not path.exists():
                raise DgamixError(f"{path} (listed in {ws.embeddings}) is missing; rerun the same `dgamix embed` "
                                  f"command to rebuild it.")
            try:
                typ = pq.read_schema(path).field("embedding").type
            except (KeyError, pa.ArrowException, OSError) as e:
                raise DgamixError(f"{path} is corrupt or has no 'embedding' column ({e}); delete it and rerun "
                                  f"`dgamix embed` to rebuild it.") from None
            if not pa.types.is_fixed_size_list(typ):
                raise DgamixError(f"{path}: column 'embedding' is {typ}, not a fixed-size list of floats; rerun "
                                  f"`dgamix embed` with --overwrite.")
            dims.setdefault(int(typ.list_size), path)
        if len(dims) > 1:
            (d1, p1), (d2, p2) = list(dims.items())[:2]
            raise DgamixError(f"the embeddings have mixed dimensions ({p1.name}: {d1}-d, {p2.name}: {d2}-d), "
                              f"so they come from different models; rerun `dgamix embed ... --overwrite` to "
                              f"re-embed the whole corpus with one model.")
        self.dim = next(iter(dims))
        if self.params.get("dim") not in (None, self.dim):
            raise DgamixError(f"{ws.embeddings} says dim={self.params['dim']} but the parts hold {self.dim}-d vectors; "
                              f"rerun `dgamix embed ... --overwrite`.")

    @property
    def num_shards(self) -> int:
        return len(self.paths)

    def read(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        path = self.paths[s]
        table, _ = manifest.read(path, "embeddings-part", columns=["doc_id", "embedding"])
        doc_ids = table["doc_id"].to_numpy().astype(np.int64)
        if len(doc_ids) != self.rows[s] or (len(doc_ids) and (doc_ids[0] != self.first[s] or doc_ids[-1] != self.last[s])):
            raise DgamixError(f"{path} holds {len(doc_ids)} rows (doc_ids {doc_ids[:1]}..{doc_ids[-1:]}) but "
                              f"{self.ws.embeddings} lists {self.rows[s]} ({self.first[s]}..{self.last[s]}); the "
                              f"embeddings are out of date: rerun `dgamix embed` with the same arguments.")
        x = manifest.embedding_matrix(table["embedding"], self.dim)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise DgamixError(f"{path}: {int(bad.sum())} embedding(s) are not finite (NaN or infinite, first at "
                              f"doc_id {int(doc_ids[bad][0])}): the file may be corrupted, or the encoder's precision "
                              f"overflowed; re-embed with `dgamix embed ... --overwrite` (--precision fp32 if it "
                              f"was another).")
        return doc_ids, x


# --------------------------------------------------------------------------- per shard
def assign_vectors(x: np.ndarray, tree: Tree) -> np.ndarray:
    """Domain ids (n, L) int64 of arbitrary vectors (L2-normalised like the corpus) by tree descent."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != tree.dim:
        raise DgamixError(f"cannot assign vectors of shape {x.shape} with a tree of {tree.dim}-d centroids; embed "
                          f"them with the model that embedded the corpus.")
    with numpy_blas_single_thread():
        return tree.descend(x)[0]


def level_columns(depth: int) -> list[str]:
    return [f"level_{i}" for i in range(1, depth + 1)]


def labels_table(doc_ids: np.ndarray, labels: np.ndarray) -> pa.Table:
    cols = {"doc_id": pa.array(np.asarray(doc_ids, np.int64), pa.int64())}
    for i, c in enumerate(level_columns(labels.shape[1])):
        cols[c] = pa.array(np.ascontiguousarray(labels[:, i]), pa.int64())
    return pa.table(cols)


def assign_shard(shard: pa.Table | np.ndarray, tree: Tree) -> pa.Table:
    """Per-shard work: an embeddings shard (table doc_id, embedding; or an (n, d) array whose doc
    ids are 0..n-1) -> table (doc_id, level_1, ..., level_L) int64."""
    if isinstance(shard, pa.Table):
        doc_ids = shard["doc_id"].to_numpy().astype(np.int64)
        x = manifest.embedding_matrix(shard["embedding"], tree.dim)
    else:
        x = np.asarray(shard, np.float32)
        doc_ids = np.arange(len(x), dtype=np.int64)
    return labels_table(doc_ids, assign_vectors(x, tree))


def similarities(x: np.ndarray, labels: np.ndarray, tree: Tree) -> np.ndarray:
    """Each row's inner product with the centroid of its assigned domain at every level (n, L)."""
    out = np.empty(labels.shape, np.float32)
    for i in range(labels.shape[1]):
        c = tree.centroids[i][tree.index_of(i + 1, labels[:, i])]
        out[:, i] = np.einsum("nd,nd->n", x, c)
    return out


# --------------------------------------------------------------------------- the pass
def _part_complete(part: Path, tree_fp: str, shard_params: dict) -> bool:
    if not part.exists():
        return False
    try:
        meta = manifest.read_meta(part, "assignments-part")
    except DgamixError:
        return False  # corrupt or foreign: rewrite it
    return meta.get("inputs") == tree_fp and all(meta["params"].get(k) == v for k, v in shard_params.items())


@dataclass
class ShardAssigner:
    """The assignment pass's shard work for :func:`dgamix.pipeline.engine.map_shards`.

    Called once per worker it returns ``work(job, tick)``: read embeddings shard ``job["shard"]``,
    descend the tree (numpy, or torch on ``device`` cuda), write the part atomically and return
    {doc_ids, labels, sims} (small: the driver counts sizes and domain statistics from them).
    Locally it uses the driver's ``tree``; a Ray actor reads tree.parquet once and checks its checksum.
    """

    source: EmbeddingShards
    inputs: str                    # the tree fingerprint, recorded in every part
    tree_path: str
    levels: tuple
    checksum: str                  # Tree.checksum() of the fitted tree
    device: str = "cpu"            # cpu: numpy; another torch device (cuda[:N]): torch (pipeline/assign_torch.py)
    tree: Tree | None = None       # the driver's tree (local engine)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "tree": None}

    def __call__(self):
        tree = self.tree
        if tree is None:
            tree = Tree.read(self.tree_path, tuple(self.levels))
            if tree.checksum() != self.checksum:
                raise DgamixError(f"{self.tree_path} read on a Ray worker differs from the driver's tree; the "
                                  f"workspace must be on storage every node sees at the same path.")
        if self.device != "cpu":
            from dgamix.pipeline.assign_torch import TorchTree

            descend = TorchTree(tree, self.device).descend
        else:
            descend = tree.descend

        def work(job: dict, tick=None) -> dict:
            doc_ids, x = self.source.read(job["shard"])
            with numpy_blas_single_thread():
                labels, sims = descend(x)
            manifest.write(job["part"], labels_table(doc_ids, labels), "assignments-part", job["params"], self.inputs)
            return {"doc_ids": doc_ids, "labels": labels, "sims": sims}

        return work


def assign_workspace(ws: Workspace, name: str, source: EmbeddingShards, tree: Tree, tree_fp: str,
                     observe: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None,
                     quiet: bool = False, engine: EngineConfig = LOCAL, device: str = "cpu") -> dict:
    """Write every assignment part (skipping complete ones); count documents per domain.

    ``observe(doc_ids, labels, sims)`` sees every shard in shard order (domain statistics). The
    parts still to do run on ``engine`` (:mod:`dgamix.pipeline.engine`), descending on ``device``. Returns
    {"sizes": [per-level int64 arrays aligned with tree.domain], "assigned": n, "skipped": n}.
    """
    depth = tree.depth
    sizes = [np.zeros(len(d), np.int64) for d in tree.domain]
    plan, jobs = [], []
    for s in range(source.num_shards):
        part = ws.assignment_part(name, int(source.shard_ids[s]))
        shard_params = {"shard": int(source.shard_ids[s]), "first_doc_id": int(source.first[s]),
                        "last_doc_id": int(source.last[s]), "rows": int(source.rows[s])}
        complete = _part_complete(part, tree_fp, shard_params)
        plan.append((s, part, complete))
        if not complete:  # absolute paths: a Ray actor may run in another folder (or on another node)
            jobs.append({"shard": s, "part": str(part.absolute()), "params": {"levels": list(tree.levels), **shard_params}})
    src = source
    if engine.is_ray:
        src = copy.copy(source)
        src.paths = [p.absolute() for p in source.paths]
    work = ShardAssigner(src, tree_fp, str(ws.tree(name).absolute()), tuple(tree.levels), tree.checksum(), device,
                         None if engine.is_ray else tree)
    done = skipped = 0
    with progress_bar("assign", source.n, quiet, unit="docs") as tick, numpy_blas_single_thread(), session(engine):
        results = map_shards(work, jobs, engine)
        for s, part, complete in plan:
            if complete:
                table, _ = manifest.read(part, "assignments-part")
                doc_ids = table["doc_id"].to_numpy().astype(np.int64)
                labels = np.stack([table[c].to_numpy() for c in level_columns(depth)], axis=1).astype(np.int64)
                sims = None
                if observe:  # the domain statistics need each document's similarity to its centroids
                    ids, x = source.read(s)
                    if not np.array_equal(ids, doc_ids):
                        raise DgamixError(f"{part} lists other doc_ids than its embeddings shard; delete "
                                          f"{ws.assignments_dir(name)} and rerun `dgamix cluster`.")
                    sims = similarities(x, labels, tree)
                skipped += 1
            else:
                r = next(results)
                doc_ids, labels, sims = r["doc_ids"], r["labels"], r["sims"]
                done += 1
            for i in range(depth):
                sizes[i] += np.bincount(tree.index_of(i + 1, labels[:, i]), minlength=len(sizes[i]))
            if observe:
                observe(doc_ids, labels, sims)
            tick(len(doc_ids))
        for _ in results:  # nothing is left; this lets a Ray run finish its dataset cleanly
            pass
    known = {ws.assignment_part(name, int(s)).name for s in source.shard_ids}
    for stale in ws.assignments_dir(name).glob("part-*.parquet"):
        if stale.name not in known:
            files.remove(stale, ws.root)
    return {"sizes": sizes, "assigned": done, "skipped": skipped}

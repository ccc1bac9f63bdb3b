"""The cluster stage: embeddings -> tree.parquet, assignments/part-*.parquet, domains.parquet.

Files, all under ``WS/clusters/<name>/`` (name defaults to the levels, e.g. ``k64-64-64``):

- tree.parquet: level, domain, parent (-1 at level 1), size (documents assigned), centroid.
  Metadata: params (levels, seed, niter, max_points_per_centroid, dim), inputs (fingerprint of
  the embeddings and the params), the per-level fit statistics, ``centroids_checksum`` and
  ``state`` ("fitted" once the tree is fitted, "complete" once every document is assigned).
- assignments/part-NNNNN.parquet: doc_id, level_1..level_L, one part per embeddings shard.
- domains.parquet: see :mod:`dgamix.pipeline.domains`.

A rerun with the same parameters resumes (reuses the tree, skips complete parts); other
parameters into an existing name are refused unless ``overwrite``. Another granularity under
another name reuses the same embeddings and leaves the first clustering alone.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Sequence

import numpy as np

from dgamix.pipeline.assign import EmbeddingShards, _part_complete, assign_workspace
from dgamix.pipeline.core import manifest, validate
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.params import ClusterParams
from dgamix.pipeline.core.sources import DocTexts
from dgamix.pipeline.core.stage import StageRun, run_stage
from dgamix.pipeline.core.workspace import Workspace, check_name
from dgamix.pipeline.domains import DomainStats, build_domains
from dgamix.pipeline.engine import LOCAL, LOCAL_DEVICE, EngineConfig, require_device, session
from dgamix.pipeline.kmeans import INITS, FitConfig, Tree, fit_tree


def parse_levels(levels: str | Sequence[int]) -> tuple[int, ...]:
    """'64,64,64' or [64, 64, 64] -> (64, 64, 64); every branching an integer >= 2."""
    items = [s.strip() for s in levels.split(",")] if isinstance(levels, str) else list(levels)
    if not items or any(i == "" for i in items):
        raise DgamixError(f"--levels {levels!r} is empty or has an empty entry; give comma-separated branchings, "
                          f"e.g. --levels 64,64,64.")
    out = []
    for item in items:
        try:
            if isinstance(item, float) and not item.is_integer():
                raise ValueError
            value = int(item)
        except (TypeError, ValueError):
            raise DgamixError(f"--levels {levels!r}: {item!r} is not an integer; give comma-separated integer "
                              f"branchings, e.g. --levels 64,64,64.") from None
        if value < 2:
            raise DgamixError(f"--levels {levels!r}: a level of {value} does not split anything; every branching "
                              f"must be >= 2 (e.g. --levels 64,64).")
        out.append(value)
    if math.prod(out) >= 1 << 62:
        raise DgamixError(f"--levels {levels!r} asks for more than 2^62 leaves; use fewer or smaller levels.")
    return tuple(out)


def default_name(levels: Sequence[int]) -> str:
    return "k" + "-".join(str(b) for b in levels)


def load_tree(ws: Workspace, name: str, complete: bool = True) -> tuple[Tree, dict]:
    """The tree of clustering ``name`` and its metadata: the one reader of tree.parquet.

    ``complete`` (what later stages read): it exists, is complete and was built from the
    workspace's current embeddings (``validate.clustering``, whose messages name the fix); without
    it (the cluster stage resuming its own tree) it need only exist. Always: its centroids match
    the checksum recorded when it was written.
    """
    path = ws.tree(name)
    if complete:
        meta = validate.clustering(ws, name)
    elif path.exists():
        meta = manifest.read_meta(path, "tree")
    else:
        have = ", ".join(ws.clusterings()) or "none"
        raise DgamixError(f"{path} not found (clusterings in {ws.root}: {have}); run "
                          f"`dgamix cluster --workspace {ws.root} --levels ... --name {name}` first.")
    tree = Tree.read(path, tuple(meta["params"]["levels"]))
    if tree.checksum() != meta.get("centroids_checksum"):
        raise DgamixError(f"{path}: the centroids do not match their checksum (the file was modified); rerun "
                          f"`dgamix cluster ... --name {name} --overwrite`.")
    return tree, meta


def list_clusterings(ws: Workspace) -> list[dict]:
    """One dict per clustering in the workspace: name, levels, domains (per level), docs, state."""
    out = []
    for name in ws.clusterings():
        path = ws.tree(name)
        try:
            meta = manifest.read_meta(path, "tree")
        except DgamixError:
            out.append({"name": name, "levels": "?", "domains": "?", "docs": None, "state": "unreadable"})
            continue
        out.append({"name": name, "levels": ",".join(map(str, meta["params"]["levels"])),
                    "domains": list(meta.get("domains_per_level", [])), "docs": meta.get("n_docs"),
                    "state": meta.get("state")})
    return out


def _describe(params: dict) -> str:
    return ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in params.items())


def _existing_tree(st: StageRun, name: str, params: dict, inputs: str, overwrite: bool
                   ) -> tuple[Tree | None, dict | None]:
    """The reusable tree of ``name`` (same inputs), or None once a replacement is staged (if allowed)."""
    ws = st.ws
    folder, path = ws.clusters_dir(name), ws.tree(name)
    if not path.exists():
        return None, None
    try:
        meta = manifest.read_meta(path, "tree")
    except DgamixError as e:
        if not overwrite:
            raise DgamixError(f"{e} (pass --overwrite to rebuild clusters/{name})") from None
        st.replace()
        return None, None
    if meta.get("inputs") == inputs:
        return load_tree(ws, name, complete=False)
    if not overwrite:
        old = meta.get("params", {})
        if {k: v for k, v in old.items() if k != "dim"} == {k: v for k, v in params.items() if k != "dim"}:
            why = "from other embeddings (the corpus was re-embedded since)"
        else:
            why = f"with other parameters ({_describe(old)}; now {_describe(params)})"
        raise DgamixError(f"{folder} was made {why}; pass --overwrite to replace it, or --name OTHER to keep both.")
    st.replace()  # the complete old clustering stays until the new one is complete
    return None, None


def _public_stats(stats: list[dict]) -> list[dict]:
    """Per-level stats without timings (tree.parquet must be byte-identical for the same seed)."""
    return [{k: v for k, v in s.items() if k != "seconds"} for s in stats]


def cluster_workspace(ws: Workspace, p: ClusterParams, name: str | None = None, *, overwrite: bool = False,
                      quiet: bool = False, engine: EngineConfig = LOCAL, device: str = LOCAL_DEVICE) -> dict:
    """The cluster stage with parameters ``p`` (its levels, seed, niter, ...; defaults in ClusterParams),
    written to WS/clusters/``name`` (default from the levels, e.g. k64-64). Returns a summary dict (see
    the module doc for the files written).

    ``engine``: with Ray, the nodes of each level below the first are fitted as Ray tasks and
    the assignment parts are written by an actor pool; the files are the same as locally.
    ``device``: cpu, or cuda[:N] to descend the tree with torch on a GPU in the assignment pass
    (the fit always runs on the CPU, so the tree does not depend on the device).
    """
    engine.check()
    if not engine.is_ray:  # on Ray the actors reserve GPUs and check there
        require_device(device)
    levels = parse_levels(p.levels)
    seed, niter, max_points_per_centroid, init = p.seed, p.niter, p.max_points_per_centroid, p.init
    if not 1 <= p.sample_memory_mib <= 1 << 40:
        raise DgamixError(f"--sample-memory {p.sample_memory_mib} must be between 1 and 2^40 (MiB).")
    name = check_name(name or default_name(levels), "clustering", "--name")
    c_int = 2 ** 31 - 1  # FAISS takes --niter and --max-points-per-centroid as C ints
    for opt, value, low, high in (("--seed", seed, 0, None), ("--niter", niter, 1, c_int),
                                  ("--max-points-per-centroid", max_points_per_centroid, 1, c_int)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise DgamixError(f"{opt} {value!r} must be an integer >= {low}.")
        if high is not None and value > high:
            raise DgamixError(f"{opt} {value!r} must be at most {high:,}.")
    if init not in INITS:
        raise DgamixError(f"--init {init!r} is unknown; use one of {', '.join(INITS)}.")
    source = EmbeddingShards(ws)
    n = source.n
    if math.prod(levels) > n:
        fix = (f"use fewer or smaller levels (each leaf needs documents), e.g. --levels {max(2, int(n ** 0.5) // 2)}"
               if n >= 2 else "a clustering needs at least 2 documents (every level splits in 2 or more): embed a "
                              "larger corpus")
        raise DgamixError(f"--levels {','.join(map(str, levels))} asks for up to {math.prod(levels):,} leaf domains "
                          f"but {ws.root} has only {n:,} embedded documents; {fix}.")
    params = replace(p, levels=levels).recorded(source.dim)
    inputs = manifest.fingerprint(source.fingerprint, params)
    docs, _ = manifest.read(ws.docs, "docs", columns=["doc_id", "n_tokens"])

    base = ws
    with run_stage(ws, f"cluster-{name}", [f"clusters/{name}"], overwrite=overwrite, replace_now=False) as st, \
            session(engine):
        t0 = time.perf_counter()
        tree, meta = _existing_tree(st, name, params, inputs, overwrite)
        ws = st.ws
        reused = tree is not None
        if tree is None:
            tree, stats = fit_tree(source, FitConfig(levels, seed, niter, max_points_per_centroid, p.sample_memory_mib << 20, init), quiet,
                                   engine)
            meta = _write_tree(ws, name, tree, params, inputs, source.fingerprint, n, "fitted", _public_stats(stats))
        else:
            stats = meta.get("stats", [])
        fit_seconds = time.perf_counter() - t0
        tree_fp = manifest.fingerprint(inputs, tree.checksum())

        t1 = time.perf_counter()
        assign_seconds = domains_seconds = 0.0
        if reused and meta.get("state") == "complete" and _up_to_date(ws, name, source, tree_fp):
            res = {"assigned": 0, "skipped": source.num_shards, "sizes": tree.size}
        else:
            doc_id = docs["doc_id"].to_numpy()
            n_tokens = np.zeros(int(doc_id.max()) + 1, np.int64)
            n_tokens[doc_id] = docs["n_tokens"].to_numpy()
            collect = DomainStats(tree, n_tokens, seed, p.text_docs)
            res = assign_workspace(ws, name, source, tree, tree_fp, collect, quiet, engine, device)
            sizes = res["sizes"]
            for i, s in enumerate(sizes):
                if int(s.sum()) != n:  # pragma: no cover - an internal invariant
                    raise RuntimeError(f"level {i + 1} sizes sum to {int(s.sum())}, expected {n}")
            tree.size = sizes
            stats = _with_sizes(stats, tree, n)
            assign_seconds = time.perf_counter() - t1
            domains = build_domains(tree, sizes, collect, DocTexts(ws), quiet)
            # domains first, then the tree marked complete: a crash in between just redoes this part
            manifest.write(ws.domains(name), domains, "domains", params, tree_fp)
            meta = _write_tree(ws, name, tree, params, inputs, source.fingerprint, n, "complete", _public_stats(stats))
            domains_seconds = time.perf_counter() - t1 - assign_seconds

    per_level = [len(d) for d in tree.domain]
    return {"workspace": str(base.root), "clusters": name, "folder": str(base.clusters_dir(name)),
            "levels": ",".join(map(str, levels)), "docs": n,
            "domains": " / ".join(f"{m:,}" for m in per_level),
            "tree": "reused" if reused else "fitted",
            "shards_assigned": res["assigned"], "shards_skipped": res["skipped"], "engine": engine.name,
            "fit_seconds": round(fit_seconds, 2), "assign_seconds": round(assign_seconds, 2),
            "domains_seconds": round(domains_seconds, 2),
            "level_stats": stats}


def _with_sizes(stats: list[dict], tree: Tree, n: int) -> list[dict]:
    """Add corpus-side numbers per level: empty domains and imbalance of the document counts."""
    out = []
    for i, s in enumerate(stats):
        size = tree.size[i].astype(np.float64)
        out.append({**s, "empty_domains": int((size == 0).sum()),
                    "corpus_imbalance": float(len(size) * (size ** 2).sum() / float(n) ** 2)})
    return out


def _write_tree(ws: Workspace, name: str, tree: Tree, params: dict, inputs: str, emb_fp: str, n: int, state: str,
                stats: list[dict]) -> dict:
    extra = {"state": state, "stats": stats, "centroids_checksum": tree.checksum(), "embeddings": emb_fp,
             "n_docs": n, "domains_per_level": [len(d) for d in tree.domain]}
    manifest.write(ws.tree(name), tree.to_table(), "tree", params, inputs, extra=extra)
    return manifest.read_meta(ws.tree(name), "tree")


def _up_to_date(ws: Workspace, name: str, source: EmbeddingShards, tree_fp: str) -> bool:
    """True when domains.parquet and every assignment part were made from this tree."""
    path = ws.domains(name)
    if not path.exists():
        return False
    try:
        if manifest.read_meta(path, "domains").get("inputs") != tree_fp:
            return False
    except DgamixError:
        return False
    for s in range(source.num_shards):
        shard_params = {"shard": int(source.shard_ids[s]), "first_doc_id": int(source.first[s]),
                        "last_doc_id": int(source.last[s]), "rows": int(source.rows[s])}
        if not _part_complete(ws.assignment_part(name, int(source.shard_ids[s])), tree_fp, shard_params):
            return False
    return True

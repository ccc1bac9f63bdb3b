"""Validation on read: is an input artefact still built from what its upstream is now?

Every manifest records what it was built from: the fingerprint of each upstream artefact at
build time (``built_from`` in its metadata; a tree's ``embeddings``). Before a stage works on
an artefact it calls one of the functions here, which read only footers. They check the
artefact exists and is complete, then compare each recorded upstream fingerprint with the
upstream's fingerprint now (validating the upstream first, so the error names the first
thing to rebuild) and refuse a stale artefact with the command that rebuilds it, e.g.

    clusters/k8-8 was built from embeddings 1a2b... but WS/embeddings.parquet is now 3c4d...;
    rebuild it with `dgamix cluster --workspace WS --levels 8,8 --name k8-8 --overwrite`

Upstream labels: ``docs``, ``embeddings``, ``encoder`` (the embedding settings a target set
must share with the corpus), ``clusters/NAME``, ``targets/NAME``, ``bases/NAME``. A manifest
that records no upstream (hand-made in a test, or written before this was recorded) is not
checked. This module is shared by pipeline/ and mixing/ like dgamix.pipeline.core.manifest.
"""
from __future__ import annotations

import os
from pathlib import Path

from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.errors import DgamixError, flag
from dgamix.pipeline.core.params import BasisParams, ClusterParams, TargetConfig, options
from dgamix.pipeline.core.workspace import Workspace

ENCODER_KEYS = ("model", "model_fingerprint", "max_seq_length", "precision", "dtype")


# --------------------------------------------------------------------------- the one check
def check_built_from(ws: Workspace, artefact: str, meta: dict, rebuild: str, only: tuple[str, ...] | None = None,
                     note: str = "") -> None:
    """Refuse ``artefact`` (a label such as 'clusters/k8-8') when an upstream it records in
    ``meta['built_from']`` has another fingerprint now; ``rebuild`` is the command that fixes it
    (``note`` follows it). ``only``: check just the upstreams whose label starts with these."""
    for label, recorded in (meta.get("built_from") or {}).items():
        if only is not None and not label.startswith(only):
            continue
        current, path, detail = _current(ws, label, recorded)
        if label == "encoder" and recorded != current:
            detail = _encoder_change(meta.get("params", {}).get("encoder") or {}, embeddings(ws)["params"])
        if recorded != current:
            raise DgamixError(f"{artefact} was built from {label} {recorded} but {path} is now {current}{detail}; "
                              f"rebuild it with `{rebuild}`{note}.")


def _current(ws: Workspace, label: str, recorded: str) -> tuple[str | None, Path, str]:
    """(fingerprint now, path, detail) of upstream ``label``, after validating it in turn."""
    kind, _, name = label.partition("/")
    if kind == "docs":
        return manifest.read_meta(_need(ws, ws.docs, "docs"), "docs").get("inputs"), ws.docs, ""
    if kind == "embeddings":
        return embeddings(ws).get("inputs"), ws.embeddings, ""
    if kind == "encoder":
        return encoder_fingerprint(embeddings(ws)["params"]), ws.embeddings, ""
    if kind == "clusters":
        return tree_fingerprint(clustering(ws, name)), ws.tree(name), ""
    if kind == "targets":
        return target(ws, name).get("inputs"), target_path(ws, name), ""
    if kind == "bases":
        return basis(ws, name).get("inputs"), ws.basis(name), ""
    raise DgamixError(f"unknown upstream '{label}' recorded in a manifest of {ws.root}; rebuild it with this dgamix.")


def _encoder_change(was: dict, now: dict) -> str:
    diff = [f"{k} {was[k]} -> {now.get(k)}" for k in ENCODER_KEYS if k in was and was[k] != now.get(k)]
    return f" ({', '.join(diff)})" if diff else ""


def _need(ws: Workspace, path: Path, what: str) -> Path:
    if not path.exists():
        raise DgamixError(f"{path} not found: {ws.root} has no {what}; run `dgamix embed CORPUS --workspace "
                          f"{ws.root}` first.")
    return path


# --------------------------------------------------------------------------- fingerprints
def tree_fingerprint(meta: dict) -> str:
    """What a clustering's assignments, domains and later artefacts record as its fingerprint."""
    return manifest.fingerprint(meta.get("inputs"), meta.get("centroids_checksum"))


def encoder_fingerprint(params: dict) -> str:
    """Fingerprint of the embedding settings (from embeddings.parquet params) a target must share."""
    keys = {k: params.get(k) for k in ENCODER_KEYS}
    if params.get("vectors"):  # the user's own vectors: their encoder's name and dimension (MiniLM's stay as they were)
        keys["vectors"] = {"encoder": params["vectors"].get("encoder"), "dim": params["vectors"].get("dim")}
    return manifest.fingerprint(keys)


# --------------------------------------------------------------------------- artefacts
def embeddings(ws: Workspace) -> dict:
    """embeddings.parquet's metadata, checked against docs.parquet."""
    meta = manifest.read_meta(_need(ws, ws.embeddings, "embeddings"), "embeddings")
    check_built_from(ws, "embeddings.parquet", meta, f"dgamix embed CORPUS --workspace {ws.root} --overwrite")
    return meta


def cluster_command(ws: Workspace, name: str, params: dict, overwrite: bool = True) -> str:
    opts = options(ClusterParams, params, ("seed", "niter", "max_points_per_centroid", "init"))
    levels = ",".join(map(str, params.get("levels") or [])) or "..."
    cmd = f"dgamix cluster --workspace {ws.root} --levels {levels} --name {name}{opts}"
    return cmd + " --overwrite" if overwrite else cmd


def clustering(ws: Workspace, clusters: str, *, assignments: bool = False, name=flag) -> dict:
    """tree.parquet's metadata of clustering ``clusters``: exists, complete, built from the current
    embeddings; with ``assignments`` also every assignment part made by this tree. ``name``: how
    messages name a setting (``errors.flag`` for the CLI)."""
    path = ws.tree(clusters)
    if not path.exists():
        have = ws.clusterings()
        raise DgamixError(f"no clustering '{clusters}' in {ws.root} (have: {have or 'none'}); run "
                          f"`dgamix cluster --workspace {ws.root} --levels ... --name {clusters}` first, or pass one "
                          f"of those as {name('clusters')}.")
    meta = manifest.read_meta(path, "tree")
    params = meta.get("params", {})
    if meta.get("state", "complete") != "complete":
        raise DgamixError(f"clusters/{clusters} is not complete (the clustering was interrupted); finish it by rerunning "
                          f"`{cluster_command(ws, clusters, params, overwrite=False)}`.")
    built = dict(meta.get("built_from") or {})
    if "embeddings" in meta:
        built.setdefault("embeddings", meta["embeddings"])
    check_built_from(ws, f"clusters/{clusters}", {"built_from": built}, cluster_command(ws, clusters, params))
    if assignments and meta.get("centroids_checksum"):
        fp = tree_fingerprint(meta)
        for part in sorted(ws.assignments_dir(clusters).glob("part-*.parquet")):
            if manifest.read_meta(part, "assignments-part").get("inputs") != fp:
                raise DgamixError(f"{part} was made by another tree than {path}; rerun "
                                  f"`{cluster_command(ws, clusters, params, overwrite=False)}` to reassign it.")
    return meta


def target_path(ws: Workspace, name: str) -> Path:
    return ws.target_dir(name) / "examples.parquet"


def target_command(ws: Workspace, name: str, params: dict) -> str:
    files = params.get("source") or ["TARGET"]
    src = files[0] if len(files) == 1 else os.path.commonpath(files)
    return f"dgamix target {src} --workspace {ws.root} --name {name}{options(TargetConfig, params)} --overwrite"


def target(ws: Workspace, name: str) -> dict:
    """examples.parquet's metadata of target ``name``: exists, embedded like the corpus is now."""
    path = target_path(ws, name)
    if not path.exists():
        root = ws.root / "targets"
        have = sorted(p.name for p in root.iterdir() if (p / "examples.parquet").exists()) if root.exists() else []
        raise DgamixError(f"no target '{name}' in {ws.root} (have: {have or 'none'}); run "
                          f"`dgamix target FILE --workspace {ws.root} --name {name}` first.")
    meta = manifest.read_meta(path, "target")
    check_built_from(ws, f"targets/{name}", meta, target_command(ws, name, meta.get("params", {})))
    return meta


def basis_command(ws: Workspace, name: str, p: dict) -> str:
    opts = options(BasisParams, p, ("generic", "smoothing", "seed", "temper"))
    return (f"dgamix basis --workspace {ws.root} --clusters {p.get('clusters')} --level {p.get('level')} "
            f"--target {p.get('target')} --by {p.get('by')}{opts} --name {name} --overwrite")


def basis(ws: Workspace, name: str) -> dict:
    """WS/bases/<name>.parquet's metadata: exists, built from the current clustering and target."""
    path = ws.basis(name)
    if not path.exists():
        have = sorted(p.stem for p in (ws.root / "bases").glob("*.parquet") if not p.stem.endswith(".summary")) \
            if (ws.root / "bases").exists() else []
        raise DgamixError(f"no basis '{name}' in {ws.root} (have: {have or 'none'}); build it with "
                          f"`dgamix basis --workspace {ws.root} ... --name {name}`.")
    meta = manifest.read_meta(path, "basis")
    check_built_from(ws, f"bases/{name}", meta, basis_command(ws, name, meta.get("params", {})))
    return meta


def run(ws: Workspace, name: str, meta: dict, only: tuple[str, ...] | None = None) -> dict:
    """A run's manifest metadata (weights/metrics), checked against its clustering/basis/target."""
    check_built_from(ws, f"runs/{name}", meta, f"dgamix train --workspace {ws.root} --name {name} --overwrite",
                     only, note=" and the options it was trained with")
    return meta

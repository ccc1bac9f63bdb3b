"""Reading stage 1-2 manifests into the mixing engine's inputs (index, basis matrix, doc ids).

mixing meets pipeline only through manifests: this module reads them with the shared
manifest module and turns low-level errors into DgamixErrors that name the command to run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from dgamix.mixing.dga import INIT_FLOOR, BasisMatrix, DGAConfig, target_mixture
from dgamix.mixing.mixers import ADAPTIVE, MIXER_NAMES, make_mixer, mixer_ema_beta
from dgamix.mixing.sampler import DomainIndex, MixtureSampler
from dgamix.pipeline.core import manifest, validate
from dgamix.pipeline.core.errors import ALONE, DgamixError, flag
from dgamix.pipeline.core.workspace import Workspace

DGA_FIELDS = frozenset(f.name for f in fields(DGAConfig))  # named as DGAConfig(...) by ``keyword``
HOLDOUT_SEED = 0  # the general held-out slice is the same for every run of a workspace


# --------------------------------------------------------------------------- naming a setting in a message

class Placeholder(str):
    """A value shown as written (``B`` in ``--basis B``), not as a Python literal."""


def keyword(param: str, value: Any = ALONE) -> str:
    """How the Python API names a setting: ``level``, ``level=3``, ``clusters='k64-4'``; a DGAConfig
    field as ``DGAConfig(ema_beta=0.5)``, the object a Python caller sets it on."""
    shown = None if value is ALONE else str(value) if isinstance(value, Placeholder) else repr(value)
    if param in DGA_FIELDS:
        return f"DGAConfig.{param}" if shown is None else f"DGAConfig({param}={shown})"
    return param if shown is None else f"{param}={shown}"


Naming = Callable[..., str]  # flag (the CLI) or keyword (the Python API): messages name settings through it


def _n_levels(ws: Workspace, clusters: str, meta: dict) -> int:
    levels = meta["params"].get("levels")
    if not levels:
        raise DgamixError(f"{ws.tree(clusters)} records no levels; rebuild it with `dgamix cluster --overwrite`.")
    return len(levels)


def clustering_levels(ws: Workspace, clusters: str, name: Naming = flag) -> int:
    """Number of levels of clustering ``clusters``; a clear error when it does not exist, is
    incomplete or was built from other embeddings than the workspace's (dgamix.pipeline.core.validate)."""
    return _n_levels(ws, clusters, validate.clustering(ws, clusters, name=name))


def check_level(ws: Workspace, clusters: str, level: int, assignments: bool = False, name: Naming = flag) -> dict:
    """Validates clustering ``clusters`` (with its assignment parts when ``assignments``) and that
    ``level`` is one of its levels; returns the tree's metadata. ``name``: how messages name settings."""
    meta = validate.clustering(ws, clusters, assignments=assignments, name=name)
    n = _n_levels(ws, clusters, meta)
    if not 1 <= level <= n:
        raise DgamixError(f"{name('level', level)} is out of range: clustering '{clusters}' has levels 1..{n}.")
    return meta


def load_index(ws: Workspace, clusters: str, level: int, exclude: np.ndarray | None = None) -> DomainIndex:
    """domain -> doc ids at ``level`` (token counts from docs.parquet), minus ``exclude`` doc ids."""
    tmeta = check_level(ws, clusters, level, assignments=True)  # one validation of the tree and its parts
    import polars as pl

    parts = sorted(ws.assignments_dir(clusters).glob("part-*.parquet"))
    a = pl.from_arrow(manifest.read_parts(parts, "assignments-part", ["doc_id", f"level_{level}"]))
    if tmeta.get("n_docs") is not None and a.height != tmeta["n_docs"]:
        raise DgamixError(f"{ws.assignments_dir(clusters)} holds {a.height:,} assignments but clusters/{clusters} "
                          f"has {tmeta['n_docs']:,} documents (parts missing or extra); rerun "
                          f"`{validate.cluster_command(ws, clusters, tmeta['params'], overwrite=False)}`.")
    docs, _ = manifest.read(ws.docs, "docs", columns=["n_tokens"])  # row i is doc_id i (embed writes them so)
    tokens = np.asarray(docs["n_tokens"])
    ids, dom = a["doc_id"].to_numpy(), a[f"level_{level}"].to_numpy()
    del a, docs  # O(n) tables: not held while the index is sorted
    if exclude is not None and len(exclude):
        keep = ~np.isin(ids, exclude)
        ids, dom = ids[keep], dom[keep]
    return DomainIndex.from_arrays(ids, dom, n_tokens=tokens[ids])


def load_basis(ws: Workspace, name: str, clusters: str, level: int,
               naming: Naming = flag) -> tuple[BasisMatrix, list[str], dict]:
    """(P (N x k over domain ids), basis names, metadata) of WS/bases/<name>.parquet.

    Refuses a basis built for another clustering or level: its domain ids would mean other domains.
    """
    path = ws.basis(name)
    validate.basis(ws, name)  # exists; built from the current clustering and target
    table, meta = manifest.read(path, "basis", columns=["basis", "domain", "weight", "name"])
    p = meta["params"]
    if (p.get("clusters"), p.get("level")) != (clusters, level):
        raise DgamixError(f"basis '{name}' was built for clustering '{p.get('clusters')}' level {p.get('level')}, "
                          f"not '{clusters}' level {level}; rebuild it or pass matching {naming('clusters')}/"
                          f"{naming('level')}.")
    basis, domain = np.asarray(table["basis"]), np.asarray(table["domain"])
    try:  # columns are domain ids 0..max: the sampler maps them onto the populated domains
        P = BasisMatrix.from_rows(basis, domain, np.asarray(table["weight"]), int(domain.max()) + 1)
    except ValueError as e:
        raise DgamixError(f"{path}: {e}; rebuild it with `dgamix basis`.") from None
    names = [None] * P.n
    for b, nm in zip(basis.tolist(), table["name"].to_pylist()):
        names[b] = nm
    return P, names, meta


def user_ids(ws: Workspace) -> pa.Array:
    """The user's `id` of every doc, indexed by doc_id (row i of docs.parquet is doc_id i)."""
    docs, _ = manifest.read(ws.docs, "docs", columns=["id"])
    return docs["id"].combine_chunks()


# --------------------------------------------------------------------------- a run's training pool

def general_holdout(index: DomainIndex, frac: float, cap: int) -> np.ndarray:
    """Doc ids of the general held-out slice (sorted): round(frac * n) docs, at most ``cap``,
    drawn with HOLDOUT_SEED; docs of a domain that would be emptied are given back."""
    n = index.docs.size
    n_hold = min(cap, int(round(frac * n))) if frac > 0 else 0
    if n_hold == 0:
        return np.zeros(0, dtype=np.int64)
    ids = np.sort(index.docs)
    held = np.sort(np.random.default_rng(HOLDOUT_SEED).permutation(ids)[:n_hold])
    dom = np.repeat(index.domains, index.sizes)           # domain of each entry of index.docs
    is_held = np.isin(index.docs, held)
    left = np.bincount(np.repeat(np.arange(len(index)), index.sizes)[~is_held], minlength=len(index))
    emptied = index.domains[left == 0]
    if emptied.size:
        held = np.setdiff1d(held, index.docs[np.isin(dom, emptied)])
    return held


def restricted_basis(P: BasisMatrix, index: DomainIndex, names: list[str], basis: str) -> BasisMatrix:
    """P with the mass on domains without trainable documents dropped, rows renormalised."""
    k = max(P.k, index.k)
    M = sp.csr_matrix(P.P, copy=True)
    M.resize((P.n, k))
    alive = np.zeros(k, dtype=bool)
    alive[index.domains] = True
    M = (M @ sp.diags(alive.astype(np.float64))).tocsr()
    sums = np.asarray(M.sum(axis=1)).ravel()
    dead = np.flatnonzero(sums <= 0)
    if dead.size:
        raise DgamixError(f"basis '{basis}': bases {[names[i] for i in dead[:5]]} put all their mass on domains "
                          f"with no trainable documents; rebuild the basis or use another level.")
    return BasisMatrix(sp.diags(1.0 / sums) @ M)


def check_mixer_basis(mixer: str, basis: str | None, name: Naming = flag) -> None:
    """Mixer is needs a basis; uniform and natural take none (`dgamix train` and `schedule` alike)."""
    if mixer == "is" and basis is None:
        raise DgamixError(f"{name('mixer', mixer)} needs {name('basis', Placeholder('B'))}: the "
                          f"importance-sampling histogram (its basis named 'target', else its first basis); build "
                          f"one with `dgamix basis ... --by single`.")
    if mixer in ("uniform", "natural") and basis is not None:
        raise DgamixError(f"{name('mixer', mixer)} does not use {name('basis')} (it mixes the domains "
                          f"at {name('level')}); drop {name('basis', basis)}, or pass "
                          f"{name('mixer', 'is')}.")


def is_weights(P: BasisMatrix, names: list[str], index: DomainIndex) -> np.ndarray:
    """The static importance-sampling mixture of a basis, over index.domains (float64 (k,)): its
    basis named 'target', else its first. What `--mixer is --basis B` means in train and schedule."""
    row = names.index("target") if "target" in names else 0
    return np.asarray(P.P.getrow(row).todense()).ravel()[index.domains]


@dataclass(frozen=True)
class Pool:
    """What a run trains on: ``index`` = ``full`` minus the general held-out doc ids ``held``."""

    full: DomainIndex     # every assigned, non-duplicate document at the level
    held: np.ndarray      # doc ids of the general held-out slice (sorted), never trained on
    index: DomainIndex    # the trainable documents
    docs_meta: dict       # docs.parquet's metadata


def training_pool(ws: Workspace, clusters: str, level: int, holdout_fraction: float, eval_size: int) -> Pool:
    """The documents a run trains on: the clustering's assigned documents at ``level`` minus
    near-duplicates (dup_of set) and minus the general held-out slice (``general_holdout`` of
    ``holdout_fraction`` capped at ``eval_size`` docs). `dgamix train` and `dgamix schedule --run`
    both use it, so a schedule replays a run on the run's own documents."""
    docs, docs_meta = manifest.read(ws.docs, "docs", columns=["doc_id", "dup_of"])
    dups = np.asarray(docs["doc_id"])[np.asarray(docs["dup_of"].is_valid())]
    del docs
    full = load_index(ws, clusters, level, exclude=dups)
    if not len(full):
        raise DgamixError(f"clustering '{clusters}' assigns no (non-duplicate) documents; rerun `dgamix cluster`.")
    held = general_holdout(full, holdout_fraction, eval_size)
    if not held.size:  # nothing held out: the pool is the index itself, not a copy (O(n) memory)
        return Pool(full, held, full, docs_meta)
    keep = ~np.isin(full.docs, held)
    dom = np.repeat(full.domains, full.sizes)
    index = DomainIndex.from_arrays(full.docs[keep], dom[keep], k=full.k,
                                    n_tokens=None if full.tokens is None else full.tokens[keep])
    return Pool(full, held, index, docs_meta)


def pool_definition(params: dict) -> tuple[float, int]:
    """(general_holdout, eval_size) of a run's recorded params: what ``training_pool`` needs to rebuild
    the run's documents. `dgamix train` records its evaluation set as eval_batches x eval_batch_size;
    a weight log that records neither (written by hand) gets (0, 0): every document."""
    eval_size = params.get("eval_size")
    if eval_size is None:
        eval_size = int(params.get("eval_batches") or 0) * int(params.get("eval_batch_size") or 0)
    return float(params.get("general_holdout") or 0.0), int(eval_size)


def target_domains(ws: Workspace, target: str, clusters: str, level: int) -> np.ndarray:
    """Domain ids (m,) at ``level`` of the target's reweight examples, from the assignments that
    `dgamix basis` caches in WS/targets/T/<clusters>/assignments.parquet (stage 3 reads stage 2's
    manifests, it does not run stage 2). A missing or stale file is a one-line error."""
    path = ws.target_dir(target) / clusters / "assignments.parquet"
    fix = (f"build any basis of target '{target}' on clustering '{clusters}' first (`dgamix basis --workspace "
           f"{ws.root} --clusters {clusters} --level {level} --target {target} --by single --name NAME`)")
    if not path.exists():
        raise DgamixError(f"DGA's init 'target' needs the target's domains ({path} is missing); {fix}.")
    tree_meta = manifest.read_meta(ws.tree(clusters), "tree")
    target_meta = manifest.read_meta(validate.target_path(ws, target), "target")
    table, meta = manifest.read(path, "target-assignments", columns=["split", f"level_{level}"])
    if meta.get("inputs") != manifest.fingerprint(target_meta.get("inputs"), tree_meta.get("centroids_checksum")):
        raise DgamixError(f"{path} was made from another clustering or target than the current ones; {fix}.")
    reweight = np.asarray(table["split"].to_pylist()) == "reweight"
    return np.asarray(table[f"level_{level}"])[reweight]


PROBE_SALT = 1_000_003    # probe sampler seed = seed + PROBE_SALT
MAX_DOMAIN_PROBES = 1024  # domain reweighting costs k + 1 backward passes per reweighting


# --------------------------------------------------------------------------- inputs from manifests

@dataclass
class ManifestInputs:
    """What ``from_workspace`` and `dgamix train` both build from the manifests."""

    pool: Pool
    sampler: MixtureSampler
    probe: MixtureSampler
    mixer: Any
    kind: str
    ids: np.ndarray
    names: list[str]
    reweight_texts: list[str]
    holdout_texts: list[str]
    adaptive: bool
    params: dict
    config: DGAConfig


def check_mixer_name(mixer_name: str, name: Naming = flag) -> None:
    """One of MIXER_NAMES, else a one-line error listing them."""
    if mixer_name not in MIXER_NAMES:
        raise DgamixError(f"unknown {name('mixer', mixer_name)}; choose one of {'|'.join(MIXER_NAMES)}.")


def resolve_config(mixer_name: str, config: DGAConfig, name: Naming = flag) -> DGAConfig:
    """``config`` with the EMA weight the mixer really uses (``mixer_ema_beta``), so a run records
    what it ran with; an ema_beta the mixer would ignore is a one-line error."""
    beta = config.ema_beta
    try:
        return replace(config, ema_beta=mixer_ema_beta(mixer_name, beta))
    except ValueError:
        if mixer_name == "dga-noema":
            raise DgamixError(f"{name('mixer', 'dga-noema')} is DGA with {name('ema_beta', 0)}; drop "
                              f"{name('ema_beta', beta)} or use {name('mixer', 'dga')} "
                              f"{name('ema_beta', beta)}.") from None
        raise DgamixError(f"{name('mixer', mixer_name)} has no EMA; drop {name('ema_beta', beta)} (it "
                          f"applies to {name('mixer', 'dga')}).") from None


def load_target_examples(ws: Workspace, target: str) -> tuple[list[str], list[str], dict]:
    """(reweight texts, holdout texts, metadata) of WS/targets/<target>/examples.parquet, in
    example_id order."""
    validate.target(ws, target)  # exists; embedded like the corpus is now
    table, meta = manifest.read(validate.target_path(ws, target), "target", columns=["example_id", "split", "text"])
    order = np.argsort(np.asarray(table["example_id"]), kind="stable")
    split = np.asarray(table["split"].to_pylist(), dtype=object)[order]
    text = np.asarray(table["text"].to_pylist(), dtype=object)[order]
    return list(text[split == "reweight"]), list(text[split == "holdout"]), meta


def start_weights(ws: Workspace, clusters: str, level: int, target: str, P: BasisMatrix | None,
                  config: DGAConfig, index) -> np.ndarray | None:
    """DGA's starting weights (None = uniform): with ``init = "target"`` the mixture of P's rows
    (P None: of the populated domains, index.domains) that best explains the target's reweight
    examples, floored at INIT_FLOOR."""
    if config.init == "uniform":
        return None
    domains = target_domains(ws, target, clusters, level)
    if P is None:  # domain reweighting: columns = the populated domains; other examples are dropped
        P, domains = BasisMatrix.identity(len(index)), index.positions(domains)
    w = target_mixture(P, domains)
    return (1 - INIT_FLOOR) * w + INIT_FLOOR / P.n


def mixture_inputs(ws: Workspace, clusters: str, level: int, target: str, mixer_name: str, basis: str | None,
                   config: DGAConfig, seed: int, tokens_per_domain: int | None, general_holdout: float,
                   eval_size: int, name: Naming = flag) -> ManifestInputs:
    """Validate the manifests as `dgamix train` does (the same messages, settings named by ``name``:
    ``flag`` for the CLI, ``keyword`` for the Python API) and build the samplers and mixer."""
    check_mixer_name(mixer_name, name)
    config = resolve_config(mixer_name, config, name)
    ws.require(ws.docs, f"dgamix embed CORPUS --workspace {ws.root}")
    check_level(ws, clusters, level, name=name)
    check_mixer_basis(mixer_name, basis, name)
    reweight_texts, holdout_texts, target_meta = load_target_examples(ws, target)
    adaptive = mixer_name in ADAPTIVE
    if adaptive and not reweight_texts:
        raise DgamixError(f"target '{target}' has no 'reweight' examples to align with; rebuild it with "
                          f"`dgamix target` and a --holdout below 1.")
    pool = training_pool(ws, clusters, level, general_holdout, eval_size)
    index = pool.index
    P, basis_meta, basis_names = None, None, None
    if basis is not None:
        P0, basis_names, basis_meta = load_basis(ws, basis, clusters, level, name)
        P = restricted_basis(P0, index, basis_names, basis)
    tpd = tokens_per_domain
    if tpd is not None and index.tokens is None:
        raise DgamixError(f"{name('tokens_per_domain')} needs n_tokens in docs.parquet; re-embed the corpus.")
    seeds = dict(seed=seed, tokens_per_domain=tpd)
    # probes: their own order, but the training sampler's documents (same budgeted subsets)
    probe_seeds = dict(seed=seed + PROBE_SALT, tokens_per_domain=tpd, pool_seed=seed)
    if basis is not None and adaptive:  # distribution reweighting over N bases
        kind, ids, names = "basis", np.arange(P.n), [str(n) for n in basis_names]
        init = start_weights(ws, clusters, level, target, P, config, index)
        mixer = make_mixer(mixer_name, P.n, init=init, config=config)
        sampler, probe = MixtureSampler(index, P, **seeds), MixtureSampler(index, P, **probe_seeds)
    else:  # domain-level mixtures over the k populated domains
        kind, ids, names = "domain", index.domains.copy(), [str(d) for d in index.domains]
        if adaptive and len(index) > MAX_DOMAIN_PROBES:
            raise DgamixError(f"domain reweighting over {len(index):,} domains needs {len(index) + 1:,} backward "
                              f"passes per reweighting; pass {name('basis', Placeholder('B'))} (distribution "
                              f"reweighting) or a coarser {name('level')}.")
        init = None
        if adaptive:
            init = start_weights(ws, clusters, level, target, None, config, index)
        elif mixer_name == "natural":
            init = index.sizes.astype(np.float64)
        elif mixer_name == "is":
            init = is_weights(P, basis_names, index)
        mixer = make_mixer(mixer_name, len(index), init=init, config=config)
        sampler, probe = MixtureSampler(index, **seeds), MixtureSampler(index, **probe_seeds)
    params = {"clusters": clusters, "level": level, "target": target, "mixer": mixer_name, "basis": basis,
              **asdict(config), "tokens_per_domain": tpd,
              "corpus": pool.docs_meta.get("inputs"), "target_file": target_meta.get("inputs"),
              "basis_file": None if basis_meta is None else basis_meta.get("inputs"),
              # load_index validated the clustering above; only its fingerprint is needed here
              "clusters_file": validate.tree_fingerprint(manifest.read_meta(ws.tree(clusters), "tree")),
              "n_general_holdout": int(pool.held.size),
              # the pool's definition: `dgamix schedule --run` rebuilds the run's documents from it
              "general_holdout": float(general_holdout), "eval_size": int(eval_size)}
    return ManifestInputs(pool, sampler, probe, mixer, kind, ids, names, reweight_texts, holdout_texts,
                         adaptive, params, config)

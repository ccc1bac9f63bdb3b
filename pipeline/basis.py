"""Stage 2b: importance-sampling histograms and basis distributions over the domains (CRISP).

A basis is a distribution over the k populated level-L domains (those holding corpus docs).
Builders (docs/method.md, "Stage 2"): `single` (the IS histogram), `group` (one per target group),
`kmeans:N` (one per k-means group of the target embeddings), `levels` (the target histogram
at each level <= L, lifted to L), plus an optional generic basis (natural or uniform).
``--temper G1,G2,...`` emits every target-derived basis once per exponent gamma (``temper``).
The pure functions here work on arrays; `build_basis` is the stage over manifests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.params import BasisParams


@dataclass(frozen=True)
class Domains:
    """The populated level-L domains: ids (k,) sorted, corpus sizes (k,), ancestors (k, L)."""

    ids: np.ndarray        # int64 (k,) domain ids at level L with >= 1 corpus doc
    sizes: np.ndarray      # int64 (k,) corpus documents per domain
    ancestors: np.ndarray  # int64 (k, L): column l-1 = the domain's ancestor at level l (last = itself)


def histogram(assigned: np.ndarray, ids: np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    """Normalised counts of ``assigned`` domain ids over ``ids`` (k,); mass outside ``ids`` is dropped.

    smoothing: additive count on every domain in ``ids`` (0 = the faithful IS histogram).
    Returns zeros when nothing lands in ``ids`` and smoothing is 0.
    """
    pos = np.searchsorted(ids, assigned)
    ok = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == assigned)
    counts = np.bincount(pos[ok], minlength=len(ids)).astype(np.float64) + smoothing
    top = counts.max(initial=0.0)
    if top <= 0:
        return counts
    counts = counts / top  # first: a huge --smoothing (1e308) would make the sum overflow to inf
    return counts / counts.sum()


def lift(coarse_ids: np.ndarray, coarse_hist: np.ndarray, ancestor: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Spread a histogram over coarse domains onto the k fine domains in proportion to corpus sizes.

    coarse_ids (m,) sorted, coarse_hist (m,); ancestor (k,) the coarse ancestor of each fine
    domain; sizes (k,) corpus docs per fine domain. Mass is conserved for every coarse domain
    that has a populated descendant.
    """
    pos = np.searchsorted(coarse_ids, ancestor)
    mass = coarse_hist[np.minimum(pos, len(coarse_ids) - 1)] * (coarse_ids[np.minimum(pos, len(coarse_ids) - 1)] == ancestor)
    per_coarse = np.bincount(pos, weights=sizes.astype(np.float64), minlength=len(coarse_ids))
    return mass * sizes / np.where(per_coarse[pos] > 0, per_coarse[pos], 1.0)


MAX_TEMPER = 8.0  # (density ratio)^gamma with gamma > 8 is a point mass on the densest domain in all but name


def tempered(h: np.ndarray, sizes: np.ndarray, gamma: float) -> np.ndarray:
    """A target histogram h (k,) sharpened by its density ratio to the corpus: h * (h / s)^gamma, normalised.

    s = sizes / sum(sizes) (k,) is the corpus's share of documents per domain. Sampling a domain
    from h and then a document uniformly in it draws each document in proportion to its domain's
    ratio r = h / s (importance sampling); the tempered basis draws it in proportion to r^(1 + gamma),
    so gamma > 0 leans towards the domains densest in target examples (those made mostly of
    target-like documents) and gamma = 0 returns h unchanged. Domains with h = 0 (or no corpus
    documents) get 0. Computed in log space and shifted by the maximum, so no power under- or
    overflows before the normalisation.
    """
    if gamma == 0.0:
        return h
    live = (h > 0) & (sizes > 0)
    if not live.any():
        return np.zeros_like(h)
    logw = np.full(h.shape, -np.inf)
    s = sizes[live] / sizes.sum()
    logw[live] = np.log(h[live]) + gamma * (np.log(h[live]) - np.log(s))
    w = np.exp(logw - logw[live].max())
    return w / w.sum()


def kmeans_groups(emb: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Labels (n_examples,) of spherical faiss k-means of the target embeddings into n groups."""
    import faiss

    if n > len(emb):
        raise DgamixError(f"--by kmeans:{n} asks for more groups than the {len(emb)} target examples used "
                          f"for reweighting; choose N <= {len(emb)}.")
    km = faiss.Kmeans(emb.shape[1], n, niter=20, seed=seed, spherical=True, verbose=False)
    km.train(np.ascontiguousarray(emb, dtype=np.float32))
    return km.index.search(np.ascontiguousarray(emb, dtype=np.float32), 1)[1][:, 0]


def build_rows(by: str, assigned: np.ndarray, level: int, dom: Domains, *, groups: np.ndarray | None = None,
               emb: np.ndarray | None = None, generic: str = "none", smoothing: float = 0.0,
               seed: int = 0, tempers: tuple[float, ...] = (0.0,)) -> list[tuple[str, np.ndarray]]:
    """The bases as (name, weights over dom.ids (k,)) pairs.

    assigned: (n, >= level) int64 target domain ids per level (reweighting examples only).
    tempers: every target-derived basis is emitted once per exponent (``temper``), in this order;
    a basis tempered by gamma != 0 is named "<name>^<gamma>".
    """
    fine = assigned[:, level - 1]
    if by == "single":
        rows = [("target", histogram(fine, dom.ids, smoothing))]
    elif by == "group":
        if groups is None or all(g is None for g in groups):
            raise DgamixError("--by group needs a target made with --group-column; rebuild the target with "
                              "`dgamix target FILE --group-column COL`.")
        names = sorted({g for g in groups if g is not None})
        rows = [(f"group:{g}", histogram(fine[groups == g], dom.ids, smoothing)) for g in names]
    elif by.startswith("kmeans:"):
        n = kmeans_count(by)
        labels = kmeans_groups(emb, n, seed)
        rows = [(f"kmeans:{j}", histogram(fine[labels == j], dom.ids, smoothing)) for j in range(n)]
    elif by == "levels":
        rows = []
        for lv in range(1, level + 1):
            coarse_ids = np.unique(dom.ancestors[:, lv - 1])
            h = histogram(assigned[:, lv - 1], coarse_ids, smoothing)
            rows.append((f"level:{lv}", lift(coarse_ids, h, dom.ancestors[:, lv - 1], dom.sizes)))
    else:
        raise DgamixError(f"--by {by} is unknown; use single, group, kmeans:N or levels.")
    for name, w in rows:
        if w.sum() <= 0:
            raise DgamixError(f"basis '{name}': its target examples fall only in domains with no corpus "
                              f"documents at level {level}; use a coarser --level, --smoothing > 0, or a "
                              f"corpus closer to the target.")
    rows = [(name if g == 0 else f"{name}^{g:g}", tempered(w, dom.sizes, g)) for g in tempers for name, w in rows]
    names = [name for name, _ in rows]
    if len(set(names)) != len(names):  # e.g. a group literally named "a^1" beside group "a" tempered by 1
        dup = next(n for n in names if names.count(n) > 1)
        raise DgamixError(f"two bases would both be named '{dup}'; rename the target's groups or change --temper.")
    if generic == "natural":
        rows.append(("generic:natural", dom.sizes / dom.sizes.sum()))
    elif generic == "uniform":
        rows.append(("generic:uniform", np.full(len(dom.ids), 1.0 / len(dom.ids))))
    elif generic != "none":
        raise DgamixError(f"--generic {generic} is unknown; use natural, uniform or none.")
    return [(name, w / w.sum()) for name, w in rows]


def describe(rows: list[tuple[str, np.ndarray]], dom: Domains, fine: np.ndarray, pocket_min: int,
             top: int = 5) -> list[dict]:
    """Per basis: non-zero domains, entropy (nats), effective number of domains exp(H), top domains.

    Also the fraction of the target examples that landed in domains holding fewer than
    ``pocket_min`` corpus docs (or in none): the "narrow pocket" warning.
    """
    pos = np.searchsorted(dom.ids, fine)
    found = (pos < len(dom.ids)) & (dom.ids[np.minimum(pos, len(dom.ids) - 1)] == fine)
    small = ~found | (dom.sizes[np.minimum(pos, len(dom.ids) - 1)] < pocket_min)
    out = []
    for j, (name, w) in enumerate(rows):
        nz = w[w > 0]
        h = float(-(nz * np.log(nz)).sum())
        order = np.argsort(-w, kind="stable")[:top]
        out.append({"basis": j, "name": name, "nonzero_domains": int(len(nz)), "entropy": h,
                    "effective_domains": float(np.exp(h)), "top_domains": dom.ids[order].tolist(),
                    "top_weights": w[order].tolist(), "pocket_fraction": float(small.mean()) if len(fine) else 0.0})
    return out


def tree_domains(tree, level: int) -> Domains:
    """The populated level-``level`` domains of a fitted Tree, with their ancestors at every level."""
    if tree.size[level - 1] is None:
        raise DgamixError("the clustering has no domain sizes; rerun `dgamix cluster --overwrite`.")
    keep = tree.size[level - 1] > 0
    ids = tree.domain[level - 1][keep]
    anc = np.empty((len(ids), level), np.int64)
    anc[:, level - 1] = ids
    for lv in range(level - 1, 0, -1):  # walk the parent links up the tree
        anc[:, lv - 1] = tree.parent[lv][tree.index_of(lv + 1, anc[:, lv])]
    return Domains(ids=ids, sizes=tree.size[level - 1][keep].astype(np.int64), ancestors=anc)


def _top_terms(ws, clusters: str, level: int) -> dict[int, list[str]]:
    from dgamix.pipeline.core import manifest

    path = ws.domains(clusters)
    if not path.exists():
        return {}
    t, _ = manifest.read(path)
    if "top_terms" not in t.column_names:
        return {}
    lv = np.asarray(t["level"]) == level
    return dict(zip(np.asarray(t["domain"])[lv].tolist(), [t["top_terms"][int(i)].as_py() for i in np.flatnonzero(lv)]))


MAX_SEED = 2 ** 31 - 1  # faiss takes a C int


def kmeans_count(by: str) -> int:
    """N of ``--by kmeans:N`` (an integer >= 1), else a one-line error."""
    try:
        n = int(by.split(":", 1)[1])
    except ValueError:
        raise DgamixError(f"--by {by}: N must be an integer, e.g. kmeans:8.") from None
    if n < 1:
        raise DgamixError(f"--by {by}: N must be >= 1.")
    return n


def parse_tempers(text: str) -> tuple[float, ...]:
    """``--temper`` "0,1,2" -> (0.0, 1.0, 2.0) (checked by check_temper), else a one-line error."""
    try:
        out = tuple(float(x) for x in str(text).split(","))
    except ValueError:
        raise DgamixError(f"--temper {text!r}: give comma-separated numbers, e.g. 0 or 0,1,2.") from None
    return check_temper(out, text)


def check_temper(tempers, shown=None) -> tuple[float, ...]:
    """Distinct finite exponents in [0, MAX_TEMPER] (as floats), else a one-line error."""
    shown = ",".join(map(str, tempers)) if shown is None else shown
    try:
        out = tuple(float(g) for g in tempers)
    except (TypeError, ValueError):
        raise DgamixError(f"--temper {shown!r}: give numbers, e.g. 0 or 0,1,2.") from None
    if not out or not all(math.isfinite(g) and 0 <= g <= MAX_TEMPER for g in out):
        raise DgamixError(f"--temper {shown!r}: every exponent must be in [0, {MAX_TEMPER:g}] (0 = the plain histogram).")
    if len({f"{g:g}" for g in out}) != len(out):  # equal as printed = one basis name
        raise DgamixError(f"--temper {shown!r}: an exponent is repeated.")
    return tuple(g + 0.0 for g in out)  # -0.0 -> 0.0: one name, one basis


def check_options(p: BasisParams) -> tuple[float, ...]:
    """The basis options, checked before anything is read or written (one-line errors); returns the
    checked ``temper`` exponents."""
    by, smoothing = p.by, p.smoothing
    if by not in ("single", "group", "levels") and not by.startswith("kmeans:"):
        raise DgamixError(f"--by {by} is unknown; use single, group, kmeans:N or levels.")
    if by.startswith("kmeans:"):
        kmeans_count(by)
    if p.generic not in ("natural", "uniform", "none"):
        raise DgamixError(f"--generic {p.generic} is unknown; use natural, uniform or none.")
    if not (isinstance(smoothing, (int, float)) and math.isfinite(smoothing) and smoothing >= 0):
        raise DgamixError(f"--smoothing {smoothing} must be a finite number >= 0 (e.g. 0, or 1 to add one "
                          f"count per domain).")
    if p.pocket_min < 0:
        raise DgamixError(f"--pocket-min {p.pocket_min} must be >= 0 (corpus documents).")
    if not 0 <= p.seed <= MAX_SEED:
        raise DgamixError(f"--seed {p.seed} must be in [0, {MAX_SEED}].")
    tempers = check_temper(p.temper)
    if tempers != (0.0,) and smoothing > 0:
        raise DgamixError("--temper with --smoothing > 0 would sharpen the pseudo-counts: tiny domains that no "
                          "target example falls in would get the largest ratios; use one or the other.")
    return tempers


def build_basis(ws, clusters: str, level: int, target: str, name: str, params: BasisParams = BasisParams(), *,
                overwrite: bool = False) -> dict:
    """The basis stage: writes WS/bases/<name>.parquet (basis, name, domain, weight) and
    WS/bases/<name>.summary.parquet; returns the summary rows and the path."""
    from dgamix.pipeline.core.stage import run_stage

    tempers = check_options(params)
    exists = f"basis '{name}' already exists ({ws.basis(name)}); pass --overwrite or choose another --name."
    # its two files are replaced together, at the end, under the basis's lock
    with run_stage(ws, f"basis-{name}", [f"bases/{name}.parquet", f"bases/{name}.summary.parquet"],
                   overwrite=overwrite, exists=exists, replace_now=True) as st:
        summary = _build_basis(ws, st.ws, clusters, level, target, params.by, name, params.generic,
                               params.smoothing, params.pocket_min, params.seed, tempers)
    return {"path": str(ws.basis(name)), "bases": summary, "pocket_min": params.pocket_min}


def _build_basis(ws, out_ws, clusters, level, target, by, name, generic, smoothing, pocket_min, seed,
                 tempers) -> list[dict]:
    """Compute the bases and write both files through ``out_ws`` (the staged workspace)."""
    import pyarrow as pa

    from dgamix.pipeline.cluster import load_tree
    from dgamix.pipeline.core import manifest, validate
    from dgamix.pipeline.target import load_target, target_assignments

    out = out_ws.basis(name)
    tree, tmeta = load_tree(ws, clusters)
    if not 1 <= level <= tree.depth:
        raise DgamixError(f"--level {level} is out of range: clustering '{clusters}' has levels 1..{tree.depth}.")
    dom = tree_domains(tree, level)
    if by == "group":  # before the target's assignments are computed (and cached)
        ex, _ = load_target(ws, target)
        if ex["group"].null_count == ex.num_rows:
            build_rows(by, np.zeros((0, level), np.int64), level, dom, groups=None)  # its one-line error
    assign = target_assignments(ws, target, clusters, tree)
    reweight = np.asarray(assign["split"].to_pylist()) == "reweight"
    assigned = np.stack([np.asarray(assign[f"level_{i}"]) for i in range(1, level + 1)], 1)[reweight]
    groups = np.asarray(assign["group"].to_pylist(), dtype=object)[reweight]
    emb = None
    if by.startswith("kmeans:"):
        ex, _ = load_target(ws, target)
        emb = manifest.embedding_matrix(ex["embedding"])[reweight]
    rows = build_rows(by, assigned, level, dom, groups=groups, emb=emb, generic=generic, smoothing=smoothing, seed=seed,
                      tempers=tempers)
    parts = [(j, nm, dom.ids[w > 0], w[w > 0]) for j, (nm, w) in enumerate(rows)]
    table = pa.table({"basis": pa.array(np.concatenate([np.full(len(d), j) for j, _, d, _ in parts]), pa.int64()),
                      "name": pa.array([nm for _, nm, d, _ in parts for _ in range(len(d))], pa.string()),
                      "domain": pa.array(np.concatenate([d for *_, d, _ in parts]), pa.int64()),
                      "weight": pa.array(np.concatenate([w for *_, w in parts]), pa.float64())})
    params = {"clusters": clusters, "level": level, "target": target, "by": by, "generic": generic,
              "smoothing": smoothing, "seed": seed, "names": [nm for nm, _ in rows]}
    if tempers != (0.0,):  # only when used: the fingerprints of bases built without it stay as they were
        params["temper"] = list(tempers)
    fp = manifest.fingerprint(params, tmeta.get("inputs"), tree.checksum())
    summary = describe(rows, dom, assigned[:, level - 1], pocket_min)
    terms = _top_terms(ws, clusters, level)
    for s in summary:
        s["top_terms"] = [", ".join(terms.get(d, [])[:4]) for d in s["top_domains"]]
    built = {f"clusters/{clusters}": validate.tree_fingerprint(tmeta),
             # target_assignments validated the target above; only its fingerprint is needed here
             f"targets/{target}": manifest.read_meta(validate.target_path(ws, target), "target").get("inputs")}
    manifest.write(out, table, "basis", params, fp, extra={"built_from": built})
    manifest.write(out_ws.basis_summary(name), pa.Table.from_pylist(summary), "basis-summary", params, fp,
                   extra={"built_from": built})
    return summary

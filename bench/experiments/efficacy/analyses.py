"""Analyses of finished runs and bases, without training: how stable DGA's alignments are from one
update to the next, and what share of a basis's draws come from a given pool source."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def alignment_persistence(run: Path) -> list[float]:
    """Spearman rank correlation between the alignments of each DGA update and the next one's
    (weights.parquet): near 1, every update sees the same ranking of bases/domains; near 0, the
    alignments are mostly noise of the probe batches and the mirror step takes a random walk."""
    import polars as pl
    from scipy.stats import spearmanr

    w = pl.read_parquet(run / "weights.parquet").filter(pl.col("alignment").is_not_null())
    entry = pl.coalesce("basis", "domain")
    a = [w.filter(pl.col("step") == s).sort(entry)["alignment"].to_numpy() for s in sorted(w["step"].unique())]
    return [float(spearmanr(x, y)[0]) for x, y in zip(a, a[1:])]


def persistence_report(workspace: Path, patterns: list[str]) -> dict:
    """Print and return alignment_persistence of the runs matching each glob pattern in WS/runs/."""
    out = {}
    for pat in patterns:
        runs = sorted(p for p in (workspace / "runs").glob(pat) if (p / "weights.parquet").exists())
        per = {r.name: alignment_persistence(r) for r in runs}
        pairs = [x for v in per.values() for x in v]
        out[pat] = {"runs": {k: round(float(np.mean(v)), 3) if v else None for k, v in per.items()},
                    "pairs": len(pairs), "mean": round(float(np.mean(pairs)), 3) if pairs else None}
        print(f"{pat}: {out[pat]['mean']} over {len(pairs)} pairs of consecutive updates ({len(runs)} runs: "
              + ", ".join(f"{k} {v}" for k, v in out[pat]["runs"].items()) + ")")
    return out


def source_share(workspace: Path, basis: str, src: str) -> dict:
    """Per basis row: the share of the documents it draws (domain c ~ row, then a document uniform in c)
    whose pool ``src`` column is ``src``, e.g. the pool's own MMLU questions. A diagnosis with the
    pool's labels, which no mixer sees; approximate, as it counts the documents the trainer holds
    out for the general loss too."""
    import polars as pl

    from dgamix.pipeline.core import manifest

    path = workspace / "bases" / f"{basis}.parquet"
    if not path.exists():
        sys.exit(f"no basis {path}")
    docs = pl.read_parquet(workspace / "docs.parquet", columns=["doc_id", "src", "dup_of"]).filter(
        pl.col("dup_of").is_null())
    b = pl.read_parquet(path)
    params = manifest.read_meta(path, "basis")["params"]
    lv = params["level"]
    a = pl.read_parquet(workspace / "clusters" / params["clusters"] / "assignments" / "*.parquet",
                        columns=["doc_id", f"level_{lv}"])
    per = a.join(docs, on="doc_id").group_by(f"level_{lv}").agg(n=pl.len(), hit=(pl.col("src") == src).sum())
    share = (b.join(per.rename({f"level_{lv}": "domain"}), on="domain", how="left").fill_null(0)
             .group_by("basis", "name", maintain_order=True)
             .agg((pl.col("weight") * pl.col("hit") / pl.col("n").clip(1)).sum().alias("share")))
    out = dict(zip(share["name"].to_list(), share["share"].to_list()))
    for name, v in out.items():
        print(f"{basis}: {name}: {v:.1%} of the drawn documents have src = {src}")
    return out

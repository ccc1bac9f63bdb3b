"""`dgamix cluster`: embeddings -> hierarchical k-means tree, assignments, domains (stage 1b)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dgamix.cli.common import (
    ENGINE_HELP,
    GPUS_HELP,
    NUM_WORKERS_HELP,
    RAY_ADDRESS_HELP,
    WS_HELP,
    engine_config,
    show,
    user_errors,
)
from dgamix.pipeline.core.params import ClusterParams
from dgamix.pipeline.engine import LOCAL, LOCAL_DEVICE

_COLUMNS = [("level", "level", "{}"), ("k", "branching", "{}"), ("nodes", "nodes", "{:,}"),
            ("domains", "domains", "{:,}"), ("reduced", "reduced_nodes", "{:,}"), ("sample", "sample_points", "{:,}"),
            ("mean_sim", "mean_similarity", "{:.4f}"), ("imbalance", "imbalance", "{:.3f}"),
            ("splits", "splits", "{:,}"), ("dropped", "empty_dropped", "{:,}"), ("empty", "empty_domains", "{:,}"),
            ("doc_imbalance", "corpus_imbalance", "{:.3f}"), ("seconds", "seconds", "{:.1f}")]


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def _level_table(stats: list[dict]) -> None:
    cols = [c for c in _COLUMNS if any(c[1] in s for s in stats)]
    _table([[fmt.format(s[key]) if key in s else "-" for _, key, fmt in cols] for s in stats], [c[0] for c in cols])

_P = ClusterParams()  # the one home of the defaults shown below


@user_errors
def cluster(
    workspace: Path = typer.Option(..., "--workspace", "-w", help=WS_HELP),
    levels: Optional[str] = typer.Option(None, help="Comma-separated branching per level, each >= 2: 64,64,64 gives "
                                                    "64 / 4,096 / 262,144 domains (at most as many leaves as documents)."),
    name: Optional[str] = typer.Option(None, help="Folder under WS/clusters/ (default from the levels, e.g. k64-64-64)."),
    seed: int = typer.Option(_P.seed, help="Seed of the samples and of every node's k-means."),
    niter: int = typer.Option(_P.niter, help="k-means iterations per node."),
    max_points_per_centroid: int = typer.Option(_P.max_points_per_centroid, help="Sample cap per node = branching x this many embeddings "
                                                          "(FAISS's rule; more points cost time, not quality)."),
    sample_memory: int = typer.Option(_P.sample_memory_mib, help="MiB of sampled embeddings held at once while fitting a level "
                                                 "(bounds memory; does not change the result)."),
    init: str = typer.Option(_P.init, help="Initial centroids of every node: kmeans++ (greedy D^2 seeding) or random "
                                              "(FAISS's default); FAISS runs the iterations either way."),
    engine: str = typer.Option(LOCAL.name, help=ENGINE_HELP + " With ray the nodes of each level are also fitted as Ray tasks."),
    ray_address: Optional[str] = typer.Option(None, envvar="RAY_ADDRESS", help=RAY_ADDRESS_HELP),
    num_workers: Optional[int] = typer.Option(None, help=NUM_WORKERS_HELP),
    gpus_per_worker: float = typer.Option(LOCAL.gpus_per_worker, help=GPUS_HELP),
    device: str = typer.Option(LOCAL_DEVICE, help="Where the assignment pass descends the tree: cpu (numpy) or cuda (torch; "
                                           "the fit always runs on the CPU)."),
    overwrite: bool = typer.Option(False, help="Replace a clustering of the same name made with other parameters or "
                                               "other embeddings."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    list_: bool = typer.Option(False, "--list", help="List the clusterings of the workspace and exit."),
):
    """Fit a top-down k-means tree on the embeddings, assign every document at every level, describe the domains.

    Writes WS/clusters/NAME/tree.parquet, assignments/part-*.parquet and domains.parquet. Rerun to resume.
    """
    from dgamix.pipeline.cluster import cluster_workspace, list_clusterings, parse_levels
    from dgamix.pipeline.core.errors import DgamixError
    from dgamix.pipeline.core.workspace import Workspace

    ws = Workspace(workspace)
    if list_:
        found = list_clusterings(ws)
        if not found:
            print(f"no clusterings in {ws.root} (make one with `dgamix cluster --workspace {ws.root} --levels 64,64`)")
            return
        _table([[c["name"], c["levels"], " / ".join(f"{m:,}" for m in c["domains"]) if isinstance(c["domains"], list)
                 else str(c["domains"]), f"{c['docs']:,}" if c["docs"] is not None else "?", str(c["state"])]
                for c in found], ["name", "levels", "domains", "docs", "state"])
        return
    if levels is None:
        raise DgamixError("--levels is required (e.g. --levels 64,64,64), or pass --list.")
    eng = engine_config(engine, ray_address, num_workers, gpus_per_worker, device)
    params = ClusterParams(parse_levels(levels), seed, niter, max_points_per_centroid, init, sample_memory)
    summary = cluster_workspace(ws, params, name, overwrite=overwrite, quiet=quiet, engine=eng, device=device)
    stats = summary.pop("level_stats")
    show(summary)
    print()
    _level_table(stats)

"""`dgamix basis`: importance-sampling histograms and basis distributions (stage 2b)."""
from __future__ import annotations

from pathlib import Path

import typer

from dgamix.cli.common import WS_HELP, user_errors
from dgamix.pipeline.core.params import BasisParams

_P = BasisParams()  # the one home of the defaults shown below


@user_errors
def basis(
    workspace: Path = typer.Option(..., "--workspace", "-w", help=WS_HELP),
    clusters: str = typer.Option(..., help="Clustering name (see `dgamix cluster --list`)."),
    level: int = typer.Option(..., help="Tree level whose domains the bases are distributions over (1 = coarsest)."),
    target: str = typer.Option(..., help="Target name (from `dgamix target`)."),
    by: str = typer.Option(_P.by, help="single (the IS histogram) | group (one per target group) | kmeans:N "
                                         "(N k-means groups of the target) | levels (the histogram at every level <= L, lifted to L)."),
    generic: str = typer.Option(_P.generic, help="Add one generic basis: natural (corpus cluster sizes) | uniform | none."),
    smoothing: float = typer.Option(_P.smoothing, help="Additive count on every populated domain (0 = faithful importance sampling)."),
    pocket_min: int = typer.Option(_P.pocket_min, help="Warn about target examples in domains with fewer corpus docs than this."),
    seed: int = typer.Option(_P.seed, help="Seed for --by kmeans:N."),
    temper: str = typer.Option(",".join(f"{g:g}" for g in _P.temper), help="Exponents gamma, comma-separated: each target basis is emitted once per "
                                         "gamma, sharpened to h * (h / corpus share)^gamma (0 = the plain histogram; "
                                         "1 draws documents by their domain's target/corpus density ratio squared)."),
    name: str = typer.Option(..., help="Name of the basis (WS/bases/NAME.parquet)."),
    overwrite: bool = typer.Option(False, help="Replace an existing basis of this name."),
):
    """Build N basis distributions over the level-L domains from the target's assignments."""
    from rich.console import Console
    from rich.table import Table

    from dgamix.pipeline.basis import build_basis, parse_tempers
    from dgamix.pipeline.core.workspace import Workspace

    params = BasisParams(by, generic, smoothing, pocket_min, seed, parse_tempers(temper))
    out = build_basis(Workspace(workspace), clusters, level, target, name, params, overwrite=overwrite)
    table = Table(title=f"bases -> {out['path']}")
    for col in ("basis", "name", "domains", "eff. domains", "top domains (weight: terms)"):
        table.add_column(col)
    for b in out["bases"]:
        top = "\n".join(f"{d} ({w:.2f}): {t}" for d, w, t in zip(b["top_domains"][:3], b["top_weights"], b["top_terms"]))
        table.add_row(str(b["basis"]), b["name"], str(b["nonzero_domains"]), f"{b['effective_domains']:.1f}", top)
    console = Console(width=140)
    console.print(table)
    pocket = out["bases"][0]["pocket_fraction"]
    msg = f"{pocket:.1%} of the target's reweighting examples fall in domains with < {out['pocket_min']} corpus docs"
    console.print(("[yellow]warning: narrow pockets: " if pocket > 0.1 else "") + msg)

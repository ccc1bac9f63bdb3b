"""`dgamix schedule`: export the doc ids of every training step for an external trainer."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dgamix.cli.common import WS_HELP, show, user_errors
from dgamix.pipeline.core.params import ScheduleParams

_P = ScheduleParams(0, 0)  # the one home of the defaults shown below


@user_errors
def schedule(
    workspace: Path = typer.Option(..., "--workspace", "-w", help=WS_HELP),
    clusters: str = typer.Option(..., help="Clustering name."),
    level: int = typer.Option(..., help="Tree level whose domains are sampled."),
    mixer: Optional[str] = typer.Option(None, help="Static mixture, as in `dgamix train`: uniform (over the domains) | "
                                                   "natural (cluster sizes) | is (importance sampling, needs --basis)."),
    basis: Optional[str] = typer.Option(None, help="--mixer is: the basis whose histogram named 'target' (else its first) "
                                                   "is sampled, as `dgamix train --mixer is --basis B` does; --basis B "
                                                   "alone implies --mixer is."),
    run: Optional[str] = typer.Option(None, help="Replay the weight trajectory of a `dgamix train` run step by step, on "
                                                 "the run's own documents (its general held-out slice left out, its "
                                                 "--tokens-per-domain budget kept)."),
    steps: int = typer.Option(..., help="Training steps to schedule."),
    batch_size: int = typer.Option(..., help="Documents (sequences) per step."),
    seed: Optional[int] = typer.Option(_P.seed, help="Sampling seed: the order of the draws (with --run, each domain's "
                                                  "--tokens-per-domain subset stays the run's) [default: the run's "
                                                  "seed with --run, else 0]."),
    limited: bool = typer.Option(_P.limited, "--limited/--with-replacement", help="Draw documents without replacement inside a domain (new epoch when exhausted)."),
    name: str = typer.Option(..., help="Schedule name (WS/schedules/NAME.parquet)."),
    overwrite: bool = typer.Option(False, help="Replace an existing schedule of this name."),
):
    """Write WS/schedules/NAME.parquet: step, position, doc_id, domain, id (steps x batch-size rows)."""
    from dgamix.mixing.schedule import export_schedule
    from dgamix.pipeline.core.workspace import Workspace

    params = ScheduleParams(steps, batch_size, seed, limited)
    show(export_schedule(Workspace(workspace), clusters, level, name, params, mixer=mixer, basis=basis, run=run,
                         overwrite=overwrite))

"""`dgamix weights`: a run's final and averaged domain weights, for a static (big) run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dgamix.cli.common import WS_HELP, show, user_errors
from dgamix.mixing.runlog import AVERAGED_JSON, FINAL_JSON, WEIGHTS_DIR, WEIGHTS_TABLE


@user_errors
def weights(
    workspace: Path = typer.Option(..., "--workspace", "-w", help=WS_HELP),
    run: str = typer.Option(..., help="The run (WS/runs/RUN/, by `dgamix train` or OnlineMixture.write_run) whose "
                                      "weights to export."),
    out: Optional[Path] = typer.Option(None, help=f"Folder to write {FINAL_JSON}, {AVERAGED_JSON} and {WEIGHTS_TABLE} "
                                                  f"into (default: WS/{WEIGHTS_DIR}/RUN)."),
):
    """Write a run's domain weights as probabilities (fractions of the documents drawn from each domain, summing
    to 1): final (the last weights) and averaged (each logged weight vector weighted by the training steps it was
    in force). JSON {domain name: probability} for datasets.interleave_datasets(probabilities=...), and a Parquet
    table (domain, name, final, averaged, n_docs = documents of the domain the run drew from). A basis run's
    weights are turned into domain probabilities (weights x basis)."""
    from dgamix.mixing.runlog import export_weights
    from dgamix.pipeline.core.workspace import Workspace

    show(export_weights(Workspace(workspace), run, out))

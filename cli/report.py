"""`dgamix report`: plots and report.md for a workspace's clusterings and runs."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dgamix.cli.common import WS_HELP, split_names, user_errors


@user_errors
def report(
    workspace: Path = typer.Option(..., "--workspace", "-w", help=WS_HELP),
    runs: Optional[list[str]] = typer.Option(None, "--runs", help="Runs to compare (repeat the option or separate by commas); default: every run."),
):
    """Write WS/report/: cluster-size plots, weight trajectories, loss curves of all runs on one figure, report.md."""
    from dgamix.mixing.report import write_report
    from dgamix.pipeline.core.workspace import Workspace

    path = write_report(Workspace(workspace), split_names(runs or []) or None)
    print(f"report: {path}")
    for png in sorted(path.parent.glob("*.png")):
        print(f"plot  : {png}")

"""`dgamix target`: embed a target set with the workspace's encoder (stage 2a)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dgamix.cli.common import WS_HELP, show, user_errors
from dgamix.pipeline.core.params import TargetConfig

_P = TargetConfig()  # the one home of the defaults shown below


@user_errors
def target(
    target_file: Path = typer.Argument(..., metavar="TARGET", help="Target examples: .parquet, .jsonl (also .jsonl.gz / "
                                       ".jsonl.zst), .arrow, a saved Hugging Face dataset or a folder of .txt files."),
    workspace: Path = typer.Option(..., "--workspace", "-w", help=WS_HELP),
    name: str = typer.Option(..., help="Name of the target inside the workspace (WS/targets/NAME/)."),
    text_column: str = typer.Option(_P.text_column, help="Column holding the example text."),
    id_column: str = typer.Option(_P.id_column, help="Column holding example ids (generated when absent)."),
    group_column: Optional[str] = typer.Option(_P.group_column, help="Column naming each example's task/subject; enables `basis --by group`."),
    holdout: float = typer.Option(_P.holdout, help="Fraction of examples held out for evaluation only (never used to reweight)."),
    seed: int = typer.Option(_P.seed, help="Seed of the reweight/holdout split."),
    vectors: Optional[Path] = typer.Option(_P.vectors, help="The examples' own vectors, required when the corpus was "
                                           "embedded with --vectors (and refused otherwise): a Parquet file with the "
                                           "--id-column and a 'vector' column from the same encoder (same dimension "
                                           "and --vectors-encoder name); L2-normalised by dgamix."),
    vectors_encoder: str = typer.Option(_P.vectors_encoder, help="Name of the model that made --vectors; must be the "
                                        "corpus's --vectors-encoder."),
    overwrite: bool = typer.Option(False, help="Replace an existing target of this name made from other inputs."),
    model: Optional[str] = typer.Option(None, help="The encoder's folder, when the corpus was embedded with one other "
                                        "than the packaged default (a folder found only in the workspace is never "
                                        "loaded); its weights must match the corpus's."),
):
    """Embed target examples with the corpus's encoder (or read their --vectors) and split them into
    reweight / holdout parts."""
    from dgamix.pipeline.core.workspace import Workspace
    from dgamix.pipeline.target import build_target

    cfg = TargetConfig(text_column, id_column, group_column, holdout, seed,
                       str(vectors) if vectors is not None else None, vectors_encoder)
    show(build_target(Workspace(workspace), str(target_file), name, cfg, overwrite, model=model))

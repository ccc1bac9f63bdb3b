"""What every command shares: user errors print one line and exit 2, never a traceback."""
from __future__ import annotations

import functools
import os
import sys

import typer

from pipeline.errors import DgamixError

# Nothing in dgamix needs the internet at run time: the default model is packaged.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


WS_HELP = "Workspace folder: every stage reads and writes Parquet manifests here."


def user_errors(fn):
    """Turn a DgamixError (or bad numeric input) into `error: ...` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DgamixError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            print("interrupted: finished shards are kept; rerun the same command to resume.", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def split_csv(value: str | None) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b'); None or '' -> ()."""
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def show(summary: dict) -> None:
    """Print a stage summary as aligned key: value lines on stdout."""
    width = max(map(len, summary), default=0)
    for k, v in summary.items():
        print(f"{k:<{width}} : {v}")

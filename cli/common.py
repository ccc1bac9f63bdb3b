"""What every command shares: user errors print one line and exit 2, never a traceback."""
from __future__ import annotations

import functools
import os
import sys

import typer

from dgamix.pipeline.core.errors import DgamixError

# Process-wide settings belong to the program, not to library calls, so they are made here, in the
# `dgamix` command's process, before any stage imports its libraries; a user's own setting wins.
# Nothing in dgamix needs the internet at run time: the default model is packaged.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# FAISS's OpenMP threads sleep when idle instead of spinning (read when FAISS loads libgomp, on its
# first use): spinning threads fight numpy's BLAS threads and other processes for the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


WS_HELP = "Workspace folder: every stage reads and writes Parquet manifests here."


# Options that name an artefact of the workspace, and the kind of artefact; `--name` names what the
# command itself writes. They are checked before the command does anything.
NAME_OPTIONS = {"clusters": "clustering", "target": "target", "basis": "basis", "run": "run", "runs": "run"}
WRITES = {"cluster": "clustering", "target": "target", "basis": "basis", "train": "run", "schedule": "schedule"}


def check_name_options(command: str, options: dict) -> None:
    """Every name-valued option of ``command`` obeys the workspace's one name rule (one-line error)."""
    from dgamix.pipeline.core.workspace import check_name

    kinds = {**NAME_OPTIONS, "name": WRITES.get(command)}
    for key, value in options.items():
        if kinds.get(key) and value is not None:
            for v in split_names(value) if isinstance(value, list) else [value]:
                check_name(v, kinds[key], f"--{key}")


def check_encodable(options: dict) -> None:
    """A path or value this process cannot pass on as text (its bytes are not valid in the locale's
    encoding, e.g. a non-ASCII name under LC_ALL=POSIX with PYTHONUTF8=0) is one line, not a misleading
    failure deeper down."""
    for key, value in options.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            text = str(v) if v is not None else ""
            if any("\udc80" <= ch <= "\udcff" for ch in text):
                raise DgamixError(f"--{key.replace('_', '-')} {text.encode('utf-8', 'backslashreplace').decode()}: "
                                  f"this name is not valid text in the current locale (file system encoding "
                                  f"{sys.getfilesystemencoding()}); run with PYTHONUTF8=1 or a UTF-8 locale "
                                  f"(e.g. LC_ALL=C.UTF-8).")


def user_errors(fn):
    """Turn a DgamixError (or bad numeric input) into `error: ...` on stderr and exit code 2.

    Name-valued options are checked first, so a bad name never reaches a stage."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            check_encodable(kwargs)
            check_name_options(fn.__name__, kwargs)
            return fn(*args, **kwargs)
        except DgamixError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            print("interrupted: finished shards are kept; rerun the same command to resume.", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


ENGINE_HELP = ("Where the shard work runs: local (this process) or ray (a Ray Data actor pool, one model / tree "
               "per actor; needs `pip install -e '.\\[ray]'`). The files written are the same.")
RAY_ADDRESS_HELP = ("--engine ray: the cluster to use (auto: the one `ray start --head` started; HOST:6379; "
                    "ray://HOST:10001). Default: start a local Ray instance for this command.")
NUM_WORKERS_HELP = "--engine ray: actors in the pool (default: one per CPU of the cluster, or per GPU share)."
GPUS_HELP = "--engine ray: GPUs reserved per actor (e.g. 1, or 0.5 to share a GPU); use with --device cuda."


def engine_config(engine: str, ray_address: str | None, num_workers: int | None, gpus_per_worker: float,
                  device: str):
    """The EngineConfig of the --engine options, validated (Ray installed, GPUs for --device cuda)."""
    from dgamix.pipeline.engine import EngineConfig

    cfg = EngineConfig(engine, ray_address or None, num_workers, gpus_per_worker).check()
    if cfg.is_ray and device.startswith("cuda") and not gpus_per_worker:
        raise DgamixError("--device cuda with --engine ray needs --gpus-per-worker (e.g. 1): a Ray actor sees "
                          "no GPU unless it reserves one.")
    return cfg


def split_csv(value: str | None) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b'); None or '' -> ()."""
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def split_names(values: list[str]) -> list[str]:
    """A repeatable option that also takes commas (--runs a,b --runs c) -> ['a', 'b', 'c']."""
    return [v for item in values for v in split_csv(item)]


def show(summary: dict) -> None:
    """Print a stage summary as aligned key: value lines on stdout."""
    width = max(map(len, summary), default=0)
    for k, v in summary.items():
        print(f"{k:<{width}} : {v}")

"""The workspace the runs train on, built (or reused) with the `dgamix` command: embeddings, the
clustering, the targets and the bases."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .regimes import CLUSTERS, MIN_IS_EPOCHS, ROOT, TARGETS, basis_name


def dgamix(*args: str, log: list[str]) -> str:
    """Run one `dgamix` command (python -m dgamix.cli.main); returns stdout; exits on failure."""
    cmd = [sys.executable, "-m", "dgamix.cli.main", *args]
    shown = "dgamix " + " ".join(args)
    print(f"$ {shown}", flush=True)
    log.append(shown)
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {shown}\n{p.stdout}\n{p.stderr}")
    return p.stdout


def exists(path: Path, kind: str) -> bool:
    from dgamix.pipeline.core import manifest

    try:
        meta = manifest.read_meta(path, kind)
        return meta.get("state", "complete") == "complete"
    except Exception:  # noqa: BLE001 - missing or unreadable: the command rebuilds it
        return False


def prepare(args, log: list[str]) -> dict:
    """Build (or reuse) the workspace; returns what the runs need (names, budgets)."""
    ws = args.workspace
    t0 = time.perf_counter()
    if not (ws / "embeddings.parquet").exists():
        dgamix("embed", str(args.pool), "--workspace", str(ws), "--keep-columns", "src,domain,label",
               "--max-seq-length", "128", "--precision", "int8", "--quiet", log=log)
    if not exists(ws / "clusters" / CLUSTERS / "tree.parquet", "tree"):
        dgamix("cluster", "--workspace", str(ws), "--levels", "64,64", "--name", CLUSTERS, "--quiet", log=log)
    for name in args.target_names:
        holdout = "0.99426" if name == "mmlu64" else "0.2"  # 11,151 x (1 - 0.99426) = 64 reweight examples
        if not exists(ws / "targets" / name / "examples.parquet", "target"):
            dgamix("target", str(args.targets / f"{TARGETS.get(name, name)}.parquet"), "--workspace", str(ws),
                   "--name", name, "--group-column", "group", "--holdout", holdout, log=log)
    return {"seconds": time.perf_counter() - t0}


def ensure_basis(args, regime: dict, name: str, by: str, generic: str, log: list[str], temper: str = "0") -> None:
    if not (args.workspace / "bases" / f"{name}.parquet").exists():
        dgamix("basis", "--workspace", str(args.workspace), "--clusters", CLUSTERS, "--level", str(regime["level"]),
               "--target", regime["target"], "--by", by, "--generic", generic, "--name", name,
               *(("--temper", temper) if temper != "0" else ()), log=log)


def is_budget(args, regime: dict) -> int:
    """Tokens per domain such that IS, drawing steps x batch x (context + 1) pieces, re-reads the
    domains it samples MIN_IS_EPOCHS times on average: E_alpha[epochs] = total * sum(alpha^2) / T."""
    import polars as pl

    b = pl.read_parquet(args.workspace / "bases" / f"{basis_name(regime, 'single', 'none')}.parquet")
    alpha = b.filter(pl.col("basis") == 0)["weight"].to_numpy()
    total = args.steps * args.batch_size * (args.context + 1)
    return max(1, int(total * float((alpha ** 2).sum()) / MIN_IS_EPOCHS))

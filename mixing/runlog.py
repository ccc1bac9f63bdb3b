"""A run's logs as manifests: metrics.parquet, weights.parquet, repetitions.parquet.

Written alike by `dgamix train` (mixing/testbed/train.py) and by a user's loop (``OnlineMixture.write_run``),
so `dgamix report` and `dgamix schedule --run` read both.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from dgamix.mixing.mixers import ADAPTIVE
from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.workspace import Workspace

# --------------------------------------------------------------------------- outputs

def metrics_table(result_metrics: list[dict]) -> pa.Table:
    return pa.table({"step": pa.array([m["step"] for m in result_metrics], pa.int64()),
                     "split": pa.array([m["split"] for m in result_metrics], pa.string()),
                     "loss": pa.array([m["loss"] for m in result_metrics], pa.float64()),
                     "tokens": pa.array([m["tokens"] for m in result_metrics], pa.int64()),
                     "seconds": pa.array([m["seconds"] for m in result_metrics], pa.float64())})


def weights_table(records: list[dict], kind: str, ids: np.ndarray, names: list[str]) -> pa.Table:
    """Long format: one row per (logged step, entry)."""
    n = len(ids)
    cols: dict[str, list] = {c: [] for c in ("step", "weight", "alignment", "grad_norm", "target_norm", "lr")}
    for r in records:
        cols["step"].append(np.full(n, r["step"], np.int64))
        cols["weight"].append(np.asarray(r["weights"], np.float64))
        for c in ("alignment", "grad_norm"):
            cols[c].append(np.full(n, np.nan) if r[c] is None else np.asarray(r[c], np.float64))
        cols["target_norm"].append(np.full(n, np.nan if r["target_norm"] is None else r["target_norm"]))
        cols["lr"].append(np.full(n, np.nan if r["lr"] is None else r["lr"]))
    cat = {c: (np.concatenate(v) if v else np.zeros(0)) for c, v in cols.items()}
    m = len(records)
    ent = np.tile(np.asarray(ids, np.int64), m)
    nulls = pa.nulls(n * m, pa.int64())

    def nullable(x):
        return pa.array(x, pa.float64(), mask=np.isnan(x))

    return pa.table({"step": pa.array(cat["step"].astype(np.int64), pa.int64()),
                     "basis": pa.array(ent, pa.int64()) if kind == "basis" else nulls,
                     "domain": pa.array(ent, pa.int64()) if kind == "domain" else nulls,
                     "name": pa.array(list(names) * m, pa.string()),
                     "weight": pa.array(cat["weight"], pa.float64()),
                     "alignment": nullable(cat["alignment"]), "grad_norm": nullable(cat["grad_norm"]),
                     "target_norm": nullable(cat["target_norm"]), "lr": nullable(cat["lr"])})


def repetitions_table(reps: dict) -> pa.Table:
    return pa.table({k: pa.array(np.asarray(reps[k], np.int64), pa.int64())
                     for k in ("domain", "n_docs", "draws", "epochs")})


def write_outputs(ws: Workspace, name: str, metrics: list[dict], weights: list[dict], kind: str,
                  ids: np.ndarray, names: list[str], params: dict, reps: dict | None = None,
                  state: str = "complete") -> None:
    """WS/runs/<name>/{metrics,weights,repetitions}.parquet; ``kind`` "basis" | "domain" and
    ``ids`` / ``names`` name the weights' entries; ``params`` go into every file's metadata.
    ``state``: "partial" for the logs written beside a checkpoint of a run still training (a
    schedule refuses them, the report marks them), "complete" for a finished run's."""
    d = ws.run_dir(name)
    # init: DGA's starting rule (DGAConfig.init: uniform | target); a static mixer's is its own name
    meta_params = {**params, "init": params["init"] if params["mixer"] in ADAPTIVE else params["mixer"],
                   "kind": kind}
    fp = manifest.fingerprint(params)
    built = {f"clusters/{params['clusters']}": params.get("clusters_file"),
             f"targets/{params['target']}": params.get("target_file")}
    if params.get("basis"):
        built[f"bases/{params['basis']}"] = params.get("basis_file")
    extra = {"built_from": {k: v for k, v in built.items() if v is not None}, "state": state}
    manifest.write(d / "metrics.parquet", metrics_table(metrics), "run-metrics", meta_params, fp, extra=extra)
    manifest.write(d / "weights.parquet", weights_table(weights, kind, ids, names),
                   "run-weights", meta_params, fp, extra=extra)
    if reps is not None:
        manifest.write(d / "repetitions.parquet", repetitions_table(reps), "run-repetitions", meta_params, fp,
                       extra=extra)

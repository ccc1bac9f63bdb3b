"""A run's logs as manifests: metrics.parquet, weights.parquet, repetitions.parquet.

Written alike by `dgamix train` (mixing/testbed/train.py) and by a user's loop (``OnlineMixture.write_run``),
so `dgamix report`, `dgamix weights` and `dgamix schedule --run` read both. Every file's metadata holds the
run's params and, when known, its model's identity (``model``: tokenizer, vocab_size, n_params, ...), which
decides whose losses the report may draw on one axis (``comparable_key``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from dgamix.mixing.mixers import ADAPTIVE
from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.workspace import Workspace

# --------------------------------------------------------------------------- the model a run trained

COMPARABLE = ("tokenizer", "vocab_size", "vocabulary")  # losses (nats/token) compare only where these agree


def model_identity(model=None, tokenizer=None, **extra) -> dict:
    """What makes a run's losses comparable with another's, as plain values: the tokenizer's name
    (``name_or_path``) and vocabulary size (``len(tokenizer)``), the model's name (a Hugging Face
    config's ``_name_or_path``, else its class) and parameter count, and any ``extra`` keys.
    Pass it to ``OnlineMixture.write_run(..., model=...)``."""
    out: dict = {}
    if tokenizer is not None:
        out["tokenizer"] = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
        out["vocab_size"] = int(len(tokenizer))
    if model is not None:
        cfg = getattr(model, "config", None)
        out["model"] = str(getattr(cfg, "_name_or_path", "") or type(model).__name__)
        out["n_params"] = int(sum(p.numel() for p in model.parameters()))
        if "vocab_size" not in out and getattr(cfg, "vocab_size", None) is not None:
            out["vocab_size"] = int(cfg.vocab_size)
    return {**out, **extra}


def comparable_key(model: dict | None) -> tuple | None:
    """The part of a model identity that decides whether two runs' losses share an axis (None: unknown)."""
    if not model or not any(model.get(k) is not None for k in COMPARABLE):
        return None
    return tuple(model.get(k) for k in COMPARABLE)


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
                  state: str = "complete", model: dict | None = None) -> None:
    """WS/runs/<name>/{metrics,weights,repetitions}.parquet; ``kind`` "basis" | "domain" and
    ``ids`` / ``names`` name the weights' entries; ``params`` go into every file's metadata.
    ``state``: "partial" for the logs written beside a checkpoint of a run still training (a
    schedule refuses them, the report marks them), "complete" for a finished run's. ``model``: the
    model's identity (``model_identity``), recorded beside the params."""
    d = ws.run_dir(name)
    # init: DGA's starting rule (DGAConfig.init: uniform | target); a static mixer's is its own name
    meta_params = {**params, "init": params["init"] if params["mixer"] in ADAPTIVE else params["mixer"],
                   "kind": kind}
    fp = manifest.fingerprint(params)
    built = {f"clusters/{params.get('clusters')}": params.get("clusters_file"),
             f"targets/{params.get('target')}": params.get("target_file")}
    if params.get("basis"):
        built[f"bases/{params['basis']}"] = params.get("basis_file")
    extra = {"built_from": {k: v for k, v in built.items() if v is not None}, "state": state}
    if model is not None:
        extra["model"] = model
    manifest.write(d / "metrics.parquet", metrics_table(metrics), "run-metrics", meta_params, fp, extra=extra)
    manifest.write(d / "weights.parquet", weights_table(weights, kind, ids, names),
                   "run-weights", meta_params, fp, extra=extra)
    if reps is not None:
        manifest.write(d / "repetitions.parquet", repetitions_table(reps), "run-repetitions", meta_params, fp,
                       extra=extra)


# --------------------------------------------------------------------------- a run's domain weights, for a static run

WEIGHTS_DIR = "weights"                      # `dgamix weights` writes WS/weights/RUN/ unless told where
FINAL_JSON = "final.json"                    # {domain name: probability}: the run's last weights
AVERAGED_JSON = "averaged.json"              # {domain name: probability}: weighted by the steps each was in force
WEIGHTS_TABLE = "domain_weights.parquet"     # domain, name, final, averaged, n_docs


def run_domain_weights(ws: Workspace, run: str) -> dict:
    """A run's final and time-averaged sampling distribution over domains, from WS/runs/RUN/.

    The weights logged at step s are in force from s to the next logged step (before the first
    logged step, the first weights); the last ones until the run's last step (the largest step of
    its weights and metrics). averaged = sum_i (steps in force_i) x w_i / steps; a run of no steps
    averages to its final weights. A basis run's weights w over N bases become domain
    probabilities alpha = w @ P with P the run's basis restricted to its training pool (as
    `dgamix schedule --run` samples it). Returns {kind, domain (K,), name (K,), final (K,),
    averaged (K,), n_docs (K,) or None (documents the run drew from: repetitions.parquet), steps}.
    """
    import polars as pl

    from dgamix.mixing import inputs
    from dgamix.mixing.schedule import segments_from_log
    from dgamix.pipeline.core import validate
    from dgamix.pipeline.core.errors import DgamixError
    from dgamix.pipeline.core.workspace import check_name

    check_name(run, "run", "run")
    d = ws.run_dir(run)
    path = d / "weights.parquet"
    if not path.exists():
        raise DgamixError(f"no run '{run}' with weights in {ws.root} ({path} missing); run `dgamix train --name "
                          f"{run}` or write it with OnlineMixture.write_run first.")
    table, meta = manifest.read(path, "run-weights")
    p = meta.get("params", {})
    w = pl.from_arrow(table)
    if not w.height:
        raise DgamixError(f"run '{run}' logged no weights ({path}); train it first.")
    key = "basis" if w["basis"].null_count() < w.height else "domain"
    wide = w.pivot(on=key, index="step", values="weight", aggregate_function="first").sort("step").fill_null(0.0)
    cols = sorted((c for c in wide.columns if c != "step"), key=int)
    steps, W = wide["step"].to_numpy(), wide.select(cols).to_numpy()
    end = int(steps.max())
    if (d / "metrics.parquet").exists():
        m = manifest.read(d / "metrics.parquet", "run-metrics", columns=["step"])[0]
        end = max(end, int(np.max(np.asarray(m["step"]))) if m.num_rows else end)
    segs = segments_from_log(steps, W, end)
    span = np.array([s.stop - s.start for s in segs], np.float64)
    final = W[-1]
    averaged = (span[:, None] * np.stack([s.w for s in segs])).sum(0) / span.sum() if span.sum() > 0 else final
    ids = np.array(cols, np.int64)
    names = dict(w.select(pl.col(key).cast(pl.String), pl.col("name")).unique(subset=key).iter_rows())
    labels = [str(names.get(c, c)) for c in cols]
    index = None
    if key == "basis":  # alpha over the populated domains of the run's pool, as the sampler draws them
        if not p.get("basis") or p.get("clusters") is None:
            raise DgamixError(f"run '{run}' logs basis weights but records no basis; it cannot be turned into domain "
                              f"weights.")
        validate.run(ws, run, meta, only=("clusters/", "bases/"))  # the basis still means these domains
        index = inputs.training_pool(ws, p["clusters"], int(p["level"]), *inputs.pool_definition(p)).index
        P0, bnames, _ = inputs.load_basis(ws, p["basis"], p["clusters"], int(p["level"]))
        P = inputs.restricted_basis(P0, index, bnames, p["basis"])
        final, averaged = (P.alpha(_over(v, ids, P.n))[index.domains] for v in (final, averaged))
        ids, labels = index.domains.copy(), [str(x) for x in index.domains]
    n_docs = None
    if (d / "repetitions.parquet").exists():
        reps = manifest.read(d / "repetitions.parquet", "run-repetitions", columns=["domain", "n_docs"])[0]
        have = dict(zip(np.asarray(reps["domain"]).tolist(), np.asarray(reps["n_docs"]).tolist()))
        n_docs = np.array([have.get(int(i), 0) for i in ids], np.int64)
    return {"kind": key, "domain": ids, "name": labels, "final": final / final.sum(),
            "averaged": averaged / averaged.sum(), "n_docs": n_docs, "steps": end}


def _over(v: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """Weights ``v`` of entries ``ids`` as a dense (n,) vector."""
    out = np.zeros(n)
    out[ids] = v
    return out


def export_weights(ws: Workspace, run: str, out: str | Path | None = None) -> dict:
    """`dgamix weights`: a run's domain weights in forms a static run takes, written atomically into
    ``out`` (default WS/weights/RUN/, under the stage runner): FINAL_JSON and AVERAGED_JSON,
    {domain name: probability} (``datasets.interleave_datasets(probabilities=...)`` in the order of
    your per-domain datasets), and WEIGHTS_TABLE (domain, name, final, averaged, n_docs). Returns a
    summary."""
    import json

    from dgamix.pipeline.core import files
    from dgamix.pipeline.core.errors import DgamixError
    from dgamix.pipeline.core.stage import run_stage

    r = run_domain_weights(ws, run)
    if len(set(r["name"])) != len(r["name"]):
        raise DgamixError(f"run '{run}' names two domains alike; their weights cannot be keyed by name.")
    table = pa.table({"domain": pa.array(r["domain"], pa.int64()), "name": pa.array(r["name"], pa.string()),
                      "final": pa.array(r["final"], pa.float64()), "averaged": pa.array(r["averaged"], pa.float64()),
                      "n_docs": pa.array(r["n_docs"], pa.int64()) if r["n_docs"] is not None
                      else pa.nulls(len(r["name"]), pa.int64())})
    run_meta = manifest.read_meta(ws.run_dir(run) / "weights.parquet", "run-weights")

    def write(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        manifest.write(folder / WEIGHTS_TABLE, table, "domain-weights", {"run": run, "kind": r["kind"],
                                                                         "steps": r["steps"]},
                       manifest.fingerprint(run_meta.get("inputs"), run_meta.get("params")))
        for fname, col in ((FINAL_JSON, "final"), (AVERAGED_JSON, "averaged")):
            with files.atomic_file(folder / fname) as tmp:
                tmp.write_text(json.dumps(dict(zip(r["name"], r[col].tolist())), indent=1) + "\n")

    if out is None:
        with run_stage(ws, f"weights-{run}", [f"{WEIGHTS_DIR}/{run}"], replace_now=True) as st:
            write(st.ws.at(WEIGHTS_DIR, run))
        folder = ws.root / WEIGHTS_DIR / run
    else:
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise DgamixError(f"{folder} is a file, not a folder: the weights need a folder to go into.")
        write(folder)
    top = np.argsort(-r["averaged"], kind="stable")[:5]
    return {"run": run, "weights": r["kind"], "domains": len(r["name"]), "steps": r["steps"],
            "top_averaged": ", ".join(f"{r['name'][i]}={r['averaged'][i]:.3f}" for i in top),
            "final": str(folder / FINAL_JSON), "averaged": str(folder / AVERAGED_JSON),
            "table": str(folder / WEIGHTS_TABLE)}

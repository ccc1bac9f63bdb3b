"""Schedule export: which documents to train on at every step, for any external trainer.

WS/schedules/NAME.parquet has one row per (step, position): doc_id, domain and the user's
`id`. The mixture is static (uniform, natural, a basis) or replays a run's recorded weight
trajectory step by step (the weights logged at step s hold until the next logged step).
Rows are produced in record batches and streamed to disk, so memory stays bounded at 100M rows.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mixing.sampler import MixtureSampler

SCHEMA = pa.schema([("step", pa.int64()), ("position", pa.int32()), ("doc_id", pa.int64()),
                    ("domain", pa.int64()), ("id", pa.string())])


@dataclass(frozen=True)
class Segment:
    """Steps [start, stop) drawn with weights w (over the sampler's bases or domains)."""

    start: int
    stop: int
    w: np.ndarray


def segments_from_log(steps: np.ndarray, weights: np.ndarray, total: int) -> list[Segment]:
    """Piecewise-constant segments covering steps [0, total) from logged (steps (m,), weights (m, n)).

    The weights logged at step s apply from s until the next logged step; before the first
    logged step the first weights apply.
    """
    order = np.argsort(steps, kind="stable")
    steps, weights = np.asarray(steps)[order], np.asarray(weights)[order]
    starts = np.r_[0, steps[1:]]
    out = []
    for i, s in enumerate(starts):
        stop = total if i + 1 == len(starts) else min(int(starts[i + 1]), total)
        if s < stop:
            out.append(Segment(int(s), stop, weights[i]))
    return out


def schedule_batches(sampler: MixtureSampler, segments: list[Segment], batch_size: int,
                     user_ids: pa.Array, rows_per_batch: int = 1 << 20) -> Iterator[pa.RecordBatch]:
    """Record batches of the schedule (columns of SCHEMA), at most ~rows_per_batch rows each.

    user_ids: the `id` of every doc, indexed by doc_id.
    """
    steps_per_chunk = max(1, rows_per_batch // batch_size)
    for seg in segments:
        for s0 in range(seg.start, seg.stop, steps_per_chunk):
            s1 = min(seg.stop, s0 + steps_per_chunk)
            n = (s1 - s0) * batch_size
            docs, doms = sampler.sample(n, seg.w)
            k = np.arange(n)
            yield pa.record_batch([pa.array(s0 + k // batch_size, pa.int64()),
                                   pa.array(k % batch_size, pa.int32()), pa.array(docs, pa.int64()),
                                   pa.array(doms, pa.int64()), user_ids.take(pa.array(docs))], schema=SCHEMA)


def static_weights(mixer: str, index) -> np.ndarray:
    """Weights over index.domains for a static mixture: uniform or natural (cluster sizes)."""
    if mixer == "uniform":
        return np.full(len(index), 1.0 / len(index))
    if mixer == "natural":
        return index.sizes / index.sizes.sum()
    raise ValueError(f"unknown static mixer {mixer!r}; use uniform or natural")


def export_schedule(ws, clusters: str, level: int, steps: int, batch_size: int, name: str, *,
                    mixer: str | None = None, basis: str | None = None, run: str | None = None,
                    seed: int = 0, limited: bool = True, overwrite: bool = False) -> dict:
    """The schedule stage: writes WS/schedules/<name>.parquet; returns a summary.

    Exactly one of mixer (uniform|natural), basis (static, uniform over its N bases; a single
    basis is importance sampling) or run (replays WS/runs/<run>/weights.parquet) is given.
    """
    import polars as pl

    from mixing import inputs
    from pipeline import manifest, validate
    from pipeline.errors import DgamixError
    from pipeline.workspace import lock

    if sum(x is not None for x in (mixer, basis, run)) != 1:
        raise DgamixError("give exactly one of --mixer uniform|natural, --basis B or --run RUN.")
    if steps < 1 or batch_size < 1:
        raise DgamixError("--steps and --batch-size must be positive integers.")
    out = ws.schedule(name)
    if out.exists() and not overwrite:
        raise DgamixError(f"schedule '{name}' already exists ({out}); pass --overwrite or another --name.")
    index = inputs.load_index(ws, clusters, level)
    P = None
    if mixer is not None:
        if mixer not in ("uniform", "natural"):
            raise DgamixError(f"--mixer {mixer}: a static schedule takes uniform or natural; for is/dga "
                              f"pass --basis B or --run RUN.")
        segments = [Segment(0, steps, static_weights(mixer, index))]
    elif basis is not None:
        P, _, _ = inputs.load_basis(ws, basis, clusters, level)
        segments = [Segment(0, steps, np.full(P.n, 1.0 / P.n))]
    else:
        path = ws.run_dir(run) / "weights.parquet"
        if not path.exists():
            raise DgamixError(f"no run '{run}' with weights in {ws.root} ({path} missing); run `dgamix train "
                              f"--name {run}` first.")
        table, meta = manifest.read(path, "run-weights")
        validate.run(ws, run, meta, only=("clusters/", "bases/"))  # its domain ids still mean these domains
        p = meta["params"]
        if (p.get("clusters"), p.get("level")) != (clusters, level):
            raise DgamixError(f"run '{run}' trained on clustering '{p.get('clusters')}' level {p.get('level')}, not "
                              f"'{clusters}' level {level}; pass matching --clusters/--level.")
        df = pl.from_arrow(table)
        key = "basis" if "basis" in df.columns and df["basis"].null_count() < df.height else "domain"
        if key == "basis" and p.get("basis"):
            P, _, _ = inputs.load_basis(ws, p["basis"], clusters, level)
        wide = df.pivot(on=key, index="step", values="weight", aggregate_function="first").sort("step").fill_null(0.0)
        cols = sorted((c for c in wide.columns if c != "step"), key=int)
        w = wide.select(cols).to_numpy()
        if key == "domain":  # align the logged domains with the index's populated domains
            full = np.zeros((len(w), len(index)))
            full[:, index.positions(np.array(cols, dtype=np.int64))] = w
            w = full
        segments = segments_from_log(wide["step"].to_numpy(), w, steps)
    sampler = MixtureSampler(index, P, seed=seed, limited=limited)
    params = {"clusters": clusters, "level": level, "mixer": mixer, "basis": basis, "run": run, "steps": steps,
              "batch_size": batch_size, "seed": seed, "limited": limited}
    fp = manifest.fingerprint(params, manifest.read_meta(ws.tree(clusters)).get("inputs"))
    with lock(ws, f"schedule-{name}"), manifest.writer(out, SCHEMA, "schedule", params, fp) as w:
        for batch in schedule_batches(sampler, segments, batch_size, inputs.user_ids(ws)):
            w.write_batch(batch)
    reps = sampler.epochs
    return {"schedule": str(out), "rows": steps * batch_size, "steps": steps, "batch_size": batch_size,
            "domains_used": int((sampler.draws > 0).sum()), "max_repetitions": int(reps.max()) if len(reps) else 0}

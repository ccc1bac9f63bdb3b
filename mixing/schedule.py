"""Schedule export: which documents to train on at every step, for any external trainer.

WS/schedules/NAME.parquet has one row per (step, position): doc_id, domain and the user's
`id`. The mixture is static (uniform, natural, a basis) or replays a run's recorded weight
trajectory step by step (the weights logged at step s hold until the next logged step).
Rows are produced in record batches and streamed to disk, so memory stays bounded at 100M rows.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from dgamix.mixing.sampler import MixtureSampler
from dgamix.pipeline.core.params import ScheduleParams

STATIC_MIXERS = ("uniform", "natural", "is")
MAX_ROWS = 10 ** 9           # steps x batch size: ~4 GB of Parquet, minutes of writing; beyond is a typo
BYTES_PER_ROW = 4            # Parquet (zstd) bytes per schedule row, about: sizes the free-disk check
MAX_BATCH = 2 ** 31 - 1      # `position` is int32
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


def export_schedule(ws, clusters: str, level: int, name: str, params: ScheduleParams, *,
                    mixer: str | None = None, basis: str | None = None, run: str | None = None,
                    overwrite: bool = False) -> dict:
    """The schedule stage: writes WS/schedules/<name>.parquet; returns a summary.

    The mixture means what the same options mean to `dgamix train`:
    - ``mixer`` uniform | natural: static, over the populated domains at ``level``;
    - ``mixer`` is (or ``basis`` alone) with ``basis`` B: static importance sampling, B's basis
      named 'target', else its first;
    - ``run``: replays WS/runs/<run>/weights.parquet on the run's own pool: its general held-out
      documents are left out, its ``tokens_per_domain`` budget applies to the same per-domain
      subsets (chosen with the run's seed), and ``seed`` (default: the run's) orders the draws.
    Near-duplicates are never scheduled. ``seed`` defaults to 0 for static mixtures.
    """
    import polars as pl

    from dgamix.mixing import inputs
    from dgamix.pipeline.core import manifest, validate
    from dgamix.pipeline.core.errors import DgamixError
    from dgamix.pipeline.core.stage import run_stage

    steps, batch_size, seed, limited = params.steps, params.batch_size, params.seed, params.limited
    if run is not None and (mixer is not None or basis is not None):
        raise DgamixError("--run replays a run's own mixture; drop --mixer/--basis, or drop --run.")
    if run is None and mixer is None:
        if basis is None:
            raise DgamixError("give one of --mixer uniform|natural, --mixer is --basis B (or --basis B) or --run RUN.")
        mixer = "is"
    if mixer is not None and mixer not in STATIC_MIXERS:
        raise DgamixError(f"--mixer {mixer}: a static schedule takes {'|'.join(STATIC_MIXERS)}; for dga pass "
                          f"--run RUN (the weights a `dgamix train` run learned).")
    inputs.check_mixer_basis(mixer, basis)
    if steps < 1 or batch_size < 1:
        raise DgamixError("--steps and --batch-size must be positive integers.")
    rows = steps * batch_size
    if batch_size > MAX_BATCH or rows > MAX_ROWS:
        raise DgamixError(f"--steps {steps:,} x --batch-size {batch_size:,} = {rows:,} rows (about "
                          f"{rows * BYTES_PER_ROW / 1e9:,.0f} GB) is more than a schedule holds (at most {MAX_ROWS:,} "
                          f"rows, about {MAX_ROWS * BYTES_PER_ROW / 1e9:,.0f} GB; batches of at most {MAX_BATCH:,}); "
                          f"schedule fewer steps.")
    disk = next((q for q in (ws.root, *ws.root.absolute().parents) if q.is_dir()), None)
    free = shutil.disk_usage(disk).free if disk is not None else None
    if free is not None and rows * BYTES_PER_ROW > free:
        raise DgamixError(f"--steps {steps:,} x --batch-size {batch_size:,} = {rows:,} rows needs about "
                          f"{rows * BYTES_PER_ROW / 1e9:,.1f} GB but the disk of {ws.root} has {free / 1e9:,.1f} GB "
                          f"free; schedule fewer steps or free disk space.")
    exists = f"schedule '{name}' already exists ({ws.schedule(name)}); pass --overwrite or another --name."
    if ws.schedule(name).exists() and not overwrite:
        raise DgamixError(exists)
    P, tokens_per_domain, pool_seed = None, None, None
    if run is None:
        index = inputs.training_pool(ws, clusters, level, 0.0, 0).index  # no run, no held-out slice
        if mixer == "is":
            P0, names, _ = inputs.load_basis(ws, basis, clusters, level)
            w = inputs.is_weights(inputs.restricted_basis(P0, index, names, basis), names, index)
        else:
            w = static_weights(mixer, index)
        segments = [Segment(0, steps, w)]
        seed = 0 if seed is None else seed
    else:
        path = ws.run_dir(run) / "weights.parquet"
        if not path.exists():
            raise DgamixError(f"no run '{run}' with weights in {ws.root} ({path} missing); run `dgamix train "
                              f"--name {run}` first.")
        table, meta = manifest.read(path, "run-weights")
        if meta.get("state", "complete") != "complete":
            raise DgamixError(f"run '{run}' is not complete (killed, or still training: its logs are those of its last "
                              f"checkpoint); finish it with `dgamix train ... --name {run} --resume` first.")
        p = meta["params"]
        if "clusters" in p and p["clusters"] is None:  # OnlineMixture.from_arrays: the user's own domains
            raise DgamixError(f"run '{run}' mixed domains of your own (OnlineMixture.from_arrays), not a clustering's "
                              f"documents: a schedule cannot replay it; export its weights with `dgamix weights "
                              f"--workspace {ws.root} --run {run}`.")
        validate.run(ws, run, meta, only=("clusters/", "bases/"))  # its domain ids still mean these domains
        if (p.get("clusters"), p.get("level")) != (clusters, level):
            raise DgamixError(f"run '{run}' trained on clustering '{p.get('clusters')}' level {p.get('level')}, not "
                              f"'{clusters}' level {level}; pass matching --clusters/--level.")
        index = inputs.training_pool(ws, clusters, level, *inputs.pool_definition(p)).index  # the run's own pool
        tokens_per_domain = p.get("tokens_per_domain")
        pool_seed = int(p.get("seed", 0))  # the run's budgeted subsets, whatever --seed orders them by
        seed = pool_seed if seed is None else seed
        df = pl.from_arrow(table)
        key = "basis" if "basis" in df.columns and df["basis"].null_count() < df.height else "domain"
        if key == "basis" and p.get("basis"):
            P0, names, _ = inputs.load_basis(ws, p["basis"], clusters, level)
            P = inputs.restricted_basis(P0, index, names, p["basis"])
        wide = df.pivot(on=key, index="step", values="weight", aggregate_function="first").sort("step").fill_null(0.0)
        cols = sorted((c for c in wide.columns if c != "step"), key=int)
        w = wide.select(cols).to_numpy()
        if key == "domain":  # align the logged domains with the index's populated domains
            full = np.zeros((len(w), len(index)))
            pos = index.positions(np.array(cols, dtype=np.int64))
            full[:, pos[pos >= 0]] = w[:, pos >= 0]
            w = full
        segments = segments_from_log(wide["step"].to_numpy(), w, steps)
    try:
        sampler = MixtureSampler(index, P, seed=seed, limited=limited, tokens_per_domain=tokens_per_domain,
                                 pool_seed=pool_seed)
    except ValueError as e:
        raise DgamixError(f"run '{run}': {e}; re-embed the corpus or retrain the run.") from None
    params = {"clusters": clusters, "level": level, "mixer": mixer, "basis": basis, "run": run, "steps": steps,
              "batch_size": batch_size, "seed": seed, "limited": limited, "tokens_per_domain": tokens_per_domain}
    fp = manifest.fingerprint(params, manifest.read_meta(ws.tree(clusters)).get("inputs"))
    with run_stage(ws, f"schedule-{name}", [f"schedules/{name}.parquet"], overwrite=overwrite, exists=exists) as st, \
            manifest.writer(st.ws.schedule(name), SCHEMA, "schedule", params, fp) as w:
        for batch in schedule_batches(sampler, segments, batch_size, inputs.user_ids(ws)):
            w.write_batch(batch)
    reps = sampler.epochs
    return {"schedule": str(ws.schedule(name)), "rows": steps * batch_size, "steps": steps, "batch_size": batch_size,
            "domains_used": int((sampler.draws > 0).sum()), "max_repetitions": int(reps.max()) if len(reps) else 0}

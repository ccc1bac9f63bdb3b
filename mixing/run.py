"""`dgamix train` glue: workspace manifests -> trainer inputs -> WS/runs/<name>/.

What a run trains on.
- Documents: every document of docs.parquet that the clustering assigned, minus duplicates
  (dup_of set) and minus the "general" held-out slice.
- General held-out slice: a fraction ``general_holdout`` of those documents (capped at the
  evaluation set size, eval_batches x eval_batch_size), chosen with a FIXED seed (0), not the
  run's seed, so that every run of a workspace is evaluated on the same documents. A domain
  whose documents would all be held out keeps them for training instead.
- The mixer's simplex: for dga / dga-noema / doge with --basis B, the N bases of B
  (distribution reweighting, alpha = w @ P); without --basis, the k populated domains at
  --level (domain reweighting, P = identity); uniform / natural: the k domains; is: the
  domains, with the static weights of B's basis named "target" (else its first basis).
  Basis mass on a domain with no trainable document is dropped and the basis renormalised.
- Target: the "reweight" examples give the alignment target batches, the "holdout" examples
  the "target" evaluation set (a fixed seeded subset of eval_batches x eval_batch_size examples,
  packed into at most that many windows, an equal share from each example).

Outputs (dgamix.pipeline.core.manifest, atomic): metrics.parquet (step, split, loss, tokens, seconds),
weights.parquet (step, basis, domain, name, weight, alignment, grad_norm, target_norm, lr; the
metadata holds every DGAConfig setting (eta, ema_beta, reweight_every, normalise, clip, init, ...),
mixer, basis, clusters, level and target, so every update can be recomputed from the log), repetitions.parquet
(domain, n_docs, draws, epochs) and checkpoint/state.pt.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from dgamix.mixing.dga import INIT_FLOOR, BasisMatrix, target_mixture
from dgamix.mixing.inputs import (
    HOLDOUT_SEED,
    check_level,
    check_mixer_basis,
    is_weights,
    load_basis,
    restricted_basis,
    target_domains,
    training_pool,
)
from dgamix.mixing.mixers import MIXER_NAMES, make_mixer, mixer_ema_beta
from dgamix.mixing.model import ModelConfig, TinyGPT
from dgamix.mixing.sampler import MixtureSampler
from dgamix.mixing.tokens import corpus_tokens, pack_stream, text_tokens
from dgamix.mixing.trainer import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    TrainConfig,
    TrainData,
    Trainer,
    TrainResult,
    load_checkpoint,
    train,
)
from dgamix.pipeline.core import manifest, validate
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.workspace import Workspace, check_name, lock

PROBE_SALT = 1_000_003    # probe sampler seed = seed + PROBE_SALT
MAX_DOMAIN_PROBES = 1024  # domain reweighting costs k + 1 backward passes per reweighting
ADAPTIVE = ("dga", "dga-noema", "doge")


# --------------------------------------------------------------------------- inputs

def resolve_ema_beta(mixer_name: str, config: TrainConfig) -> TrainConfig:
    """``config`` with the EMA weight the mixer really uses (``mixer_ema_beta``), so the run records
    what it ran with; a --ema-beta the mixer would ignore is a one-line error."""
    beta = config.dga.ema_beta
    try:
        return replace(config, dga=replace(config.dga, ema_beta=mixer_ema_beta(mixer_name, beta)))
    except ValueError:
        if mixer_name == "dga-noema":
            raise DgamixError(f"--mixer dga-noema is DGA with --ema-beta 0; drop --ema-beta {beta} or use "
                              f"--mixer dga --ema-beta {beta}.") from None
        raise DgamixError(f"--mixer {mixer_name} has no EMA; drop --ema-beta {beta} (it applies to --mixer dga).") \
            from None


def recorded_params(config: TrainConfig) -> dict:
    """The run's settings as one flat dict (DGA's beside the trainer's), without device and threads."""
    flat = {k: v for k, v in asdict(config).items() if k not in ("device", "threads", "dga")}
    return {**flat, **asdict(config.dga)}


def load_target_examples(ws: Workspace, target: str) -> tuple[list[str], list[str], dict]:
    """(reweight texts, holdout texts, metadata) of WS/targets/<target>/examples.parquet."""
    validate.target(ws, target)  # exists; embedded like the corpus is now
    table, meta = manifest.read(validate.target_path(ws, target), "target", columns=["example_id", "split", "text"])
    order = np.argsort(np.asarray(table["example_id"]), kind="stable")
    split = np.asarray(table["split"].to_pylist(), dtype=object)[order]
    text = np.asarray(table["text"].to_pylist(), dtype=object)[order]
    return list(text[split == "reweight"]), list(text[split == "holdout"]), meta


def eval_windows(tokens, ids: np.ndarray, context: int, size: int):
    """At most ``size`` packed windows of the documents ``ids``, each document cut to an equal
    share of them: its first ceil(size / len(ids)) x (context + 1) - 1 pieces."""
    share = -(-size // max(1, len(ids))) * (context + 1) - 1
    return pack_stream(tokens.stream(ids, limit=share), context, size)


def start_weights(ws: Workspace, clusters: str, level: int, target: str, P: BasisMatrix | None,
                  config: TrainConfig, index) -> np.ndarray | None:
    """DGA's starting weights (None = uniform): with ``dga.init = "target"`` the mixture of P's rows
    (P None: of the populated domains, index.domains) that best explains the target's reweight
    examples, floored at INIT_FLOOR."""
    if config.dga.init == "uniform":
        return None
    domains = target_domains(ws, target, clusters, level)
    if P is None:  # domain reweighting: columns = the populated domains; other examples are dropped
        P, domains = BasisMatrix.identity(len(index)), index.positions(domains)
    w = target_mixture(P, domains)
    return (1 - INIT_FLOOR) * w + INIT_FLOOR / P.n


def build_inputs(ws: Workspace, clusters: str, level: int, target: str, mixer_name: str,
                 basis: str | None, config: TrainConfig, quiet: bool = True) -> dict:
    """Everything a run needs, from the manifests; clear DgamixErrors for bad inputs."""
    if mixer_name not in MIXER_NAMES:
        raise DgamixError(f"unknown --mixer {mixer_name!r}; choose one of {'|'.join(MIXER_NAMES)}.")
    config = resolve_ema_beta(mixer_name, config)
    ws.require(ws.docs, f"dgamix embed CORPUS --workspace {ws.root}")
    check_level(ws, clusters, level)
    check_mixer_basis(mixer_name, basis)
    reweight_texts, holdout_texts, target_meta = load_target_examples(ws, target)
    if mixer_name in ADAPTIVE and not reweight_texts:
        raise DgamixError(f"target '{target}' has no 'reweight' examples to align with; rebuild it with "
                          f"`dgamix target` and a --holdout below 1.")

    eval_size = config.eval_batches * config.eval_batch_size
    pool = training_pool(ws, clusters, level, config.general_holdout, eval_size)
    full, held, index, docs_meta = pool.full, pool.held, pool.index, pool.docs_meta

    tokens, vocab, tok, token_key = corpus_tokens(ws, config.vocab_size, quiet=quiet)
    if len(tokens) <= int(full.docs.max()):
        raise DgamixError(f"assignments of '{clusters}' name doc_id {int(full.docs.max())} but docs.parquet has "
                          f"{len(tokens)} documents; rerun `dgamix cluster` after `dgamix embed`.")
    # Target and evaluation sets are packed like training batches. An evaluation set of eval_size
    # windows takes an equal share from every one of its documents (the first pieces of each), so
    # a few long documents cannot fill it alone.
    reweight = text_tokens(tok, vocab, reweight_texts)
    target_w = pack_stream(reweight.stream(np.arange(len(reweight))), config.context)
    hold = np.random.default_rng(HOLDOUT_SEED).permutation(len(holdout_texts))[:eval_size]
    holdout = text_tokens(tok, vocab, [holdout_texts[i] for i in np.sort(hold)])
    target_eval = eval_windows(holdout, np.arange(len(holdout)), config.context, eval_size)
    general_eval = eval_windows(tokens, held, config.context, eval_size)

    P, basis_meta, basis_names = None, None, None
    if basis is not None:
        P0, basis_names, basis_meta = load_basis(ws, basis, clusters, level)
        P = restricted_basis(P0, index, basis_names, basis)
    tpd = config.tokens_per_domain
    if tpd is not None and index.tokens is None:
        raise DgamixError("--tokens-per-domain needs n_tokens in docs.parquet; re-embed the corpus.")
    seeds = dict(seed=config.seed, tokens_per_domain=tpd)
    # probes: their own order, but the training sampler's documents (same budgeted subsets)
    probe_seeds = dict(seed=config.seed + PROBE_SALT, tokens_per_domain=tpd, pool_seed=config.seed)
    if basis is not None and mixer_name in ADAPTIVE:  # distribution reweighting over N bases
        kind, ids, names = "basis", np.arange(P.n), [str(n) for n in basis_names]
        init = start_weights(ws, clusters, level, target, P, config, index)
        mixer = make_mixer(mixer_name, P.n, init=init, config=config.dga)
        sampler, probe = MixtureSampler(index, P, **seeds), MixtureSampler(index, P, **probe_seeds)
    else:  # domain-level mixtures over the k populated domains
        kind, ids, names = "domain", index.domains.copy(), [str(d) for d in index.domains]
        if mixer_name in ADAPTIVE and len(index) > MAX_DOMAIN_PROBES:
            raise DgamixError(f"domain reweighting over {len(index):,} domains needs {len(index) + 1:,} backward "
                              f"passes per reweighting; pass --basis B (distribution reweighting) or a coarser --level.")
        init = None
        if mixer_name in ADAPTIVE:
            init = start_weights(ws, clusters, level, target, None, config, index)
        elif mixer_name == "natural":
            init = index.sizes.astype(np.float64)
        elif mixer_name == "is":
            init = is_weights(P, basis_names, index)
        mixer = make_mixer(mixer_name, len(index), init=init, config=config.dga)
        sampler, probe = MixtureSampler(index, **seeds), MixtureSampler(index, **probe_seeds)

    mean_len = float(tokens.lengths(full.docs).mean()) if full.docs.size else 1.0
    data = TrainData(tokens, sampler, probe, target_w, {"target": target_eval, "general": general_eval},
                     kind, ids, names, mean_len)
    params = {"clusters": clusters, "level": level, "target": target, "mixer": mixer_name, "basis": basis,
              **recorded_params(config),
              "corpus": docs_meta.get("inputs"), "tokens": token_key, "target_file": target_meta.get("inputs"),
              "basis_file": None if basis_meta is None else basis_meta.get("inputs"),
              # load_index validated the clustering above; only its fingerprint is needed here
              "clusters_file": validate.tree_fingerprint(manifest.read_meta(ws.tree(clusters), "tree")),
              "n_general_holdout": int(held.size)}
    return {"data": data, "mixer": mixer, "vocab": vocab, "params": params, "held": held, "index": index}


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


def write_outputs(ws: Workspace, name: str, metrics: list[dict], weights: list[dict], data: TrainData,
                  params: dict, reps: dict | None = None) -> None:
    d = ws.run_dir(name)
    # init: DGA's starting rule (DGAConfig.init: uniform | target); a static mixer's is its own name
    meta_params = {**params, "init": params["init"] if params["mixer"] in ADAPTIVE else params["mixer"],
                   "kind": data.kind}
    fp = manifest.fingerprint(params)
    built = {f"clusters/{params['clusters']}": params.get("clusters_file"),
             f"targets/{params['target']}": params.get("target_file")}
    if params.get("basis"):
        built[f"bases/{params['basis']}"] = params.get("basis_file")
    extra = {"built_from": {k: v for k, v in built.items() if v is not None}}
    manifest.write(d / "metrics.parquet", metrics_table(metrics), "run-metrics", meta_params, fp, extra=extra)
    manifest.write(d / "weights.parquet", weights_table(weights, data.kind, data.ids, data.names),
                   "run-weights", meta_params, fp, extra=extra)
    if reps is not None:
        manifest.write(d / "repetitions.parquet", repetitions_table(reps), "run-repetitions", meta_params, fp,
                       extra=extra)


# --------------------------------------------------------------------------- the stage

INPUT_KEYS = ("corpus", "tokens", "target_file", "basis_file", "clusters_file", "n_general_holdout")


def _compare(saved: dict, now: dict) -> None:
    """Refuse to resume when a parameter or an input differs from the checkpoint's."""
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) == now.get(key):
            continue
        if key in INPUT_KEYS:
            raise DgamixError(f"cannot resume: input '{key}' changed since the checkpoint (the workspace's corpus, "
                              f"clustering, target or basis was rebuilt); pass --overwrite to restart the run.")
        raise DgamixError(f"cannot resume: parameter '{key}' differs (checkpoint: {saved.get(key)!r}, now: "
                          f"{now.get(key)!r}); rerun with the options the run was started with, or pass "
                          f"--overwrite to restart.")


def train_run(ws: Workspace | str | Path, clusters: str, level: int, target: str, mixer_name: str,
              basis: str | None = None, config: TrainConfig | None = None, name: str = "run",
              resume: bool = False, overwrite: bool = False, quiet: bool = False) -> dict:
    """The train stage: trains a reference LM with ``mixer_name`` and writes WS/runs/<name>/.

    Returns a summary (final losses per split, top weights, timings, paths).
    """
    import torch

    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    config = config or TrainConfig()
    check_name(name, "run", "--name")
    if resume and overwrite:
        raise DgamixError("--resume and --overwrite contradict each other; pass one.")
    run_dir = ws.run_dir(name)
    ckpt = run_dir / "checkpoint" / CHECKPOINT
    exists = run_dir.exists() and any(run_dir.iterdir())
    if exists and not (resume or overwrite):
        raise DgamixError(f"run '{name}' already exists ({run_dir}); pass --resume to continue it, --overwrite "
                          f"to replace it, or choose another --name.")
    with lock(ws, f"train-{name}"):
        inp = build_inputs(ws, clusters, level, target, mixer_name, basis, config, quiet)
        data, mixer, params = inp["data"], inp["mixer"], inp["params"]
        resuming = resume and ckpt.exists()
        if resuming:
            saved = load_checkpoint(ckpt)
            if saved.get("format", 1) != CHECKPOINT_FORMAT:
                raise DgamixError(f"cannot resume run '{name}': its checkpoint was written by another dgamix "
                                  f"(checkpoint format {saved.get('format', 1)}, this one reads {CHECKPOINT_FORMAT}); "
                                  f"pass --overwrite to restart the run.")
            _compare(saved.get("params", {}), params)
        elif overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, the caller's RNG left as it was
            torch.manual_seed(config.seed)
            model = TinyGPT(ModelConfig(inp["vocab"].size, config.d_model, config.n_layer, config.n_head,
                                        config.context))

        def snapshot(tr: Trainer) -> None:  # partial logs beside every checkpoint
            write_outputs(ws, name, tr.metrics, tr.weights, data, params)

        result: TrainResult = train(model, data, mixer, config, checkpoint_dir=run_dir / "checkpoint",
                                    resume=resuming, params=params, quiet=quiet, on_checkpoint=snapshot)
        write_outputs(ws, name, result.metrics, result.weights, data, params, result.repetitions)
    return summarise(name, run_dir, result, data, params)


def summarise(name: str, run_dir: Path, result: TrainResult, data: TrainData, params: dict) -> dict:
    final = {m["split"]: m["loss"] for m in result.metrics if m["step"] == result.steps}
    w = result.weights[-1]["weights"]
    top = np.argsort(-w, kind="stable")[:5]
    reps = result.repetitions
    t = result.timings
    return {"run": name, "mixer": params["mixer"], "steps": result.steps,
            "resumed_from": result.resumed_from if result.resumed_from is not None else "-",
            "params": f"{result.n_params:,}", "tokens": result.metrics[-1]["tokens"] if result.metrics else 0,
            **{f"loss_{k}": round(v, 4) for k, v in final.items()},
            "top_bases" if data.kind == "basis" else "top_domains": ", ".join(f"{data.names[i]}={w[i]:.3f}" for i in top),
            "max_epochs": int(reps["epochs"].max()) if reps["epochs"].size else 0,
            "seconds": round(t["seconds"], 1), "seconds_per_step": round(t["step_seconds"], 4),
            "seconds_per_reweighting": round(t["align_seconds"], 4), "reweightings": t["n_reweightings"],
            "path": str(run_dir)}

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

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from dgamix.mixing.inputs import HOLDOUT_SEED, mixture_inputs
from dgamix.mixing.online import OnlineMixture
from dgamix.mixing.runlog import write_outputs
from dgamix.mixing.testbed.model import ModelConfig, TinyGPT
from dgamix.mixing.testbed.packing import PackedBatches, pack_stream
from dgamix.mixing.testbed.tokens import corpus_tokens, text_tokens, trusted_model
from dgamix.mixing.testbed.trainer import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    TrainConfig,
    TrainData,
    TrainResult,
    load_checkpoint,
    train,
)
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.stage import run_stage
from dgamix.pipeline.core.workspace import Workspace, check_name

# --------------------------------------------------------------------------- inputs

def recorded_params(config: TrainConfig) -> dict:
    """The run's settings as one flat dict (DGA's beside the trainer's), without device, threads and the
    model folder (the tokens key records the model's identity)."""
    flat = {k: v for k, v in asdict(config).items() if k not in ("device", "threads", "dga", "model")}
    return {**flat, **asdict(config.dga)}


def eval_windows(tokens, ids: np.ndarray, context: int, size: int):
    """At most ``size`` packed windows of the documents ``ids``, each document cut to an equal
    share of them: its first ceil(size / len(ids)) x (context + 1) - 1 pieces."""
    share = -(-size // max(1, len(ids))) * (context + 1) - 1
    return pack_stream(tokens.stream(ids, limit=share), context, size)


def build_inputs(ws: Workspace, clusters: str, level: int, target: str, mixer_name: str,
                 basis: str | None, config: TrainConfig, quiet: bool = True) -> dict:
    """Everything a run needs, from the manifests; clear DgamixErrors for bad inputs. The mixture is
    the ``OnlineMixture`` a user's loop gets from ``from_workspace``, with packed token batches."""
    eval_size = config.eval_batches * config.eval_batch_size
    inp = mixture_inputs(ws, clusters, level, target, mixer_name, basis, config.dga, config.seed,
                         config.tokens_per_domain, config.general_holdout, eval_size)
    config = replace(config, dga=inp.config)  # the EMA weight the mixer really runs with, recorded
    full, held = inp.pool.full, inp.pool.held
    tokens, vocab, tok, token_key = corpus_tokens(ws, config.vocab_size, model=config.model, quiet=quiet)
    if len(tokens) <= int(full.docs.max()):
        raise DgamixError(f"assignments of '{clusters}' name doc_id {int(full.docs.max())} but docs.parquet has "
                          f"{len(tokens)} documents; rerun `dgamix cluster` after `dgamix embed`.")
    # Target and evaluation sets are packed like training batches. An evaluation set of eval_size
    # windows takes an equal share from every one of its documents (the first pieces of each), so
    # a few long documents cannot fill it alone.
    reweight = text_tokens(tok, vocab, inp.reweight_texts)
    target_w = pack_stream(reweight.stream(np.arange(len(reweight))), config.context)
    holdout_texts = inp.holdout_texts
    hold = np.random.default_rng(HOLDOUT_SEED).permutation(len(holdout_texts))[:eval_size]
    holdout = text_tokens(tok, vocab, [holdout_texts[i] for i in np.sort(hold)])
    target_eval = eval_windows(holdout, np.arange(len(holdout)), config.context, eval_size)
    general_eval = eval_windows(tokens, held, config.context, eval_size)

    mean_len = float(tokens.lengths(full.docs).mean()) if full.docs.size else 1.0
    p = inp.params
    params = {"clusters": clusters, "level": level, "target": target, "mixer": mixer_name, "basis": basis,
              **recorded_params(config), "corpus": p["corpus"], "tokens": token_key,
              "target_file": p["target_file"], "basis_file": p["basis_file"], "clusters_file": p["clusters_file"],
              "n_general_holdout": p["n_general_holdout"]}
    batches = PackedBatches(tokens, target_w, config.context, mean_len)
    mix = OnlineMixture(inp.sampler, inp.probe, inp.mixer, batches, kind=inp.kind, ids=inp.ids, names=inp.names,
                        align_batch_size=config.align_batch_size, target_batch_size=config.target_batch_size,
                        seed=config.seed, ws=ws, params=params, rank=0, world_size=1, fixed_batch=False)
    data = TrainData(tokens, {"target": target_eval, "general": general_eval}, mean_len)
    # what the losses are measured in (runlog.model_identity): the encoder's tokenizer cut to the compact
    # vocabulary of this corpus (``vocabulary`` names it); n_params is added once the model exists
    model = {"tokenizer": trusted_model(ws, config.model)[0], "vocab_size": int(vocab.size),
             "vocabulary": token_key, "model": "TinyGPT"}
    return {"data": data, "mix": mix, "mixer": mix.mixer, "vocab": vocab, "params": params, "held": held,
            "index": inp.pool.index, "model": model}


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


def _complete(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run's logs (not the partial ones beside a checkpoint)."""
    from dgamix.pipeline.core import manifest

    path = run_dir / "metrics.parquet"
    return path.exists() and manifest.read_meta(path).get("state", "complete") == "complete"


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
    exists = (f"run '{name}' already exists ({ws.run_dir(name)}); pass --resume to continue it, --overwrite "
              f"to replace it, or choose another --name.")
    # --overwrite trains into a staging folder: the complete old run stays until the new one is complete
    with run_stage(ws, f"train-{name}", [f"runs/{name}"], overwrite=overwrite, exists=None if resume else exists) as st:
        out = st.ws
        run_dir = out.run_dir(name)
        ckpt = run_dir / "checkpoint" / CHECKPOINT
        inp = build_inputs(ws, clusters, level, target, mixer_name, basis, config, quiet)
        data, mix, params = inp["data"], inp["mix"], inp["params"]
        resuming = resume and ckpt.exists()
        if resume and not resuming and _complete(run_dir):
            raise DgamixError(f"run '{name}' is complete and has no checkpoint to resume from ({ckpt}); pass "
                              f"--overwrite to train it again, or choose another --name.")
        if resuming:
            saved = load_checkpoint(ckpt)
            if saved.get("format", 1) != CHECKPOINT_FORMAT:
                raise DgamixError(f"cannot resume run '{name}': its checkpoint was written by another dgamix "
                                  f"(checkpoint format {saved.get('format', 1)}, this one reads {CHECKPOINT_FORMAT}); "
                                  f"pass --overwrite to restart the run.")
            _compare(saved.get("params", {}), params)
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, the caller's RNG left as it was
            torch.manual_seed(config.seed)
            model = TinyGPT(ModelConfig(inp["vocab"].size, config.d_model, config.n_layer, config.n_head,
                                        config.context))
        identity = {**inp["model"], "n_params": int(sum(p.numel() for p in model.parameters()))}

        def snapshot(tr) -> None:  # partial logs beside every checkpoint
            write_outputs(out, name, tr.metrics, mix.log, mix.kind, mix.ids, mix.names, params, state="partial",
                          model=identity)

        result: TrainResult = train(model, data, mix, config, checkpoint_dir=run_dir / "checkpoint",
                                    resume=resuming, params=params, quiet=quiet, on_checkpoint=snapshot)
        write_outputs(out, name, result.metrics, result.weights, mix.kind, mix.ids, mix.names, params,
                      result.repetitions, model=identity)
    return summarise(name, ws.run_dir(name), result, mix, params)


def summarise(name: str, run_dir: Path, result: TrainResult, mix: OnlineMixture, params: dict) -> dict:
    final = {m["split"]: m["loss"] for m in result.metrics if m["step"] == result.steps}
    w = result.weights[-1]["weights"]
    top = np.argsort(-w, kind="stable")[:5]
    reps = result.repetitions
    t = result.timings
    return {"run": name, "mixer": params["mixer"], "steps": result.steps,
            "resumed_from": result.resumed_from if result.resumed_from is not None else "-",
            "params": f"{result.n_params:,}", "tokens": result.metrics[-1]["tokens"] if result.metrics else 0,
            **{f"loss_{k}": round(v, 4) for k, v in final.items()},
            "top_bases" if mix.kind == "basis" else "top_domains": ", ".join(f"{mix.names[i]}={w[i]:.3f}" for i in top),
            "max_epochs": int(reps["epochs"].max()) if reps["epochs"].size else 0,
            "seconds": round(t["seconds"], 1), "seconds_per_step": round(t["step_seconds"], 4),
            "seconds_per_reweighting": round(t["align_seconds"], 4), "reweightings": t["n_reweightings"],
            "path": str(run_dir)}

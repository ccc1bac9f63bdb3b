"""The sizing study behind PROTOCOL.md: how big a testbed this machine can afford so that (i) uniform's
final target loss is >= 0.5 nats below the unigram baseline (``unigram``) and (ii) DGA makes >= 40
reweightings, with the whole protocol inside its time budget.

    python -m bench.experiments.efficacy.sizing speed            # seconds per step: fp32, bf16, compile
    python -m bench.experiments.efficacy.sizing loss --steps 600 --d-model 128 --context 128 ...
    python -m bench.experiments.efficacy.sizing proxy --steps 600 --context 64   # no workspace needed
    python -m bench.experiments.efficacy.sizing noise            # DGA's step on simulated signal / noise

``speed`` times one training step (forward, backward, AdamW) of TinyGPT at a few shapes, in fp32,
under bf16 autocast and under torch.compile, on random tokens, one thread. ``loss`` trains uniform
(and, with --dga, DGA) at one shape on the workspace of the efficacy package (ws/minipile) and prints
its final MMLU validation loss beside the unigram baselines. Both append their figures to
bench/experiments/results/sizing.json under their own key.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from dgamix.mixing.testbed.config import TrainConfig

from .regimes import MINIPILE, RESULTS

OUT = RESULTS / "sizing.json"


def record(key: str, value) -> None:
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    data[key] = value
    OUT.write_text(json.dumps(data, indent=1) + "\n")


def step_seconds(d: int, layers: int, ctx: int, vocab: int, batch: int, mode: str, repeat: int = 12) -> float:
    """Median seconds of one training step of TinyGPT at this shape, in ``mode`` fp32 | bf16 | compile."""
    import torch

    from dgamix.mixing.testbed.model import ModelConfig, TinyGPT, lm_loss
    from dgamix.pipeline.core.runtime import torch_threads

    with torch_threads(1), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyGPT(ModelConfig(vocab, d, layers, max(1, d // 32), ctx))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        fwd = torch.compile(model) if mode == "compile" else model
        x = torch.randint(3, vocab, (batch, ctx + 1))
        times = []
        for i in range(repeat + 3):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                loss = lm_loss(fwd, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 3:  # warm-up (and compilation) excluded
                times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]


SHAPES = [  # (d_model, n_layer, context, vocab incl. specials, batch)
    (128, 4, 64, 4099, 16), (128, 4, 128, 4099, 16), (128, 4, 128, 8195, 16), (192, 4, 128, 4099, 16),
    (256, 4, 128, 4099, 16), (128, 4, 128, 2051, 32),
]


def speed(args) -> dict:
    out = []
    for d, layers, ctx, vocab, batch in SHAPES:
        row = {"d_model": d, "n_layer": layers, "context": ctx, "vocab": vocab, "batch": batch}
        for mode in args.modes.split(","):
            try:
                row[mode] = round(step_seconds(d, layers, ctx, vocab, batch, mode), 4)
            except Exception as e:  # noqa: BLE001 - a mode this machine cannot run is recorded, not fatal
                row[mode] = f"failed: {type(e).__name__}: {str(e)[:120]}"
        print(row, flush=True)
        out.append(row)
    record("speed", {"rows": out, "threads": 1, "note": "median seconds per training step (fwd+bwd+AdamW)"})
    return out


def loss(args) -> dict:
    from dgamix.mixing.dga import DGAConfig

    from .protocol import Protocol

    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, context=args.context, vocab_size=args.vocab_size,
                      d_model=args.d_model, n_layer=args.n_layer, n_head=max(1, args.d_model // 32), lr=args.lr,
                      warmup=args.warmup, eval_every=max(1, args.steps // 6), eval_batches=4, threads=1,
                      checkpoint_every=0, align_batch_size=args.align_batch_size,
                      dga=DGAConfig(reweight_every=args.reweight_every, reweight_start=args.warmup))
    proto = Protocol(Path(args.workspace), out=RESULTS, base=cfg)
    proto.prepare()  # every target: a uniform run is evaluated on each one's validation and test splits
    key = f"d{args.d_model}-L{args.n_layer}-c{args.context}-V{args.vocab_size}-b{args.batch_size}-s{args.steps}"
    rows = {}
    for mixer in ["uniform"] + (["dga"] if args.dga else []):
        t0 = time.perf_counter()
        r = proto.run(proto.job("a", "mmlu", mixer, 0, tag="size"))
        rows[mixer] = {"val": r["val"], "test": r["test"], "general": r["final_general"],
                       "seconds": round(time.perf_counter() - t0, 1), "seconds_per_step": r["seconds_per_step"],
                       "seconds_per_reweighting": r["seconds_per_reweighting"], "reweightings": r["reweightings"],
                       "curve": r["curves"]["target"]}
        print(key, mixer, {k: v for k, v in rows[mixer].items() if k != "curve"}, flush=True)
    uni = proto.unigram("mmlu")
    rec = {"config": {k: getattr(cfg, k) for k in ("steps", "batch_size", "context", "vocab_size", "d_model",
                                                   "n_layer", "n_head", "lr", "warmup", "align_batch_size")},
           "reweight_every": args.reweight_every, "runs": rows, "unigram_mmlu": uni,
           "uniform_below_unigram": uni["mixture:uniform"]["val"] - rows["uniform"]["val"]}
    print(key, "unigram", uni, "margin", round(rec["uniform_below_unigram"], 3), flush=True)
    record(f"loss:{key}", rec)
    return rec


def noise_check(updates: int = 45, n: int = 64, repeats: int = 200, eta: float = 0.3, beta: float = 0.1) -> dict:
    """How DGA's step treats signal and noise, on simulated alignments: entry j's alignment at every
    update is mu_j + noise, mu_j ~ N(0, share), noise ~ N(0, 1 - share) (share 0.09 ~ the measured rank
    persistence). Per normalise mode: gain = sum_j w_j mu_j / sd(mu) at the end, movement = summed total
    variation of the weights, drift = 0.5 |w_end - uniform|_1. "average" steps with the running mean of the
    z-scores (no shrinkage), for comparison."""
    from dgamix.mixing.dga import DGA, DGAConfig, normalise_alignments

    out = {}
    for share in (0.0, 0.09, 0.3):
        for mode in ("standardise", "average", "shrink"):
            rows = []
            for rep in range(repeats):
                rng = np.random.default_rng(rep)
                mu = rng.normal(size=n) * np.sqrt(share)
                dga = DGA(n, DGAConfig(eta=eta, ema_beta=beta, normalise="none" if mode == "average" else mode))
                z_sum, w, tv = np.zeros(n), dga.weights(), 0.0
                for t in range(1, updates + 1):
                    a = mu + rng.normal(size=n) * np.sqrt(1 - share)
                    if mode == "average":
                        z_sum += normalise_alignments(a, None, None, "standardise")
                        a = z_sum / t
                    new = dga.update(t, a)
                    tv += 0.5 * np.abs(new - w).sum()
                    w = new
                rows.append((float(w @ mu / np.sqrt(share)) if share else 0.0, tv, 0.5 * np.abs(w - 1 / n).sum()))
            g, m, d = np.mean(rows, axis=0)
            out[f"share {share}: {mode}"] = {"gain": round(float(g), 3), "movement": round(float(m), 3),
                                             "drift": round(float(d), 3)}
            print(f"share {share} {mode:12s}", out[f"share {share}: {mode}"], flush=True)
    record("noise_check", {"updates": updates, "n": n, "repeats": repeats, "eta": eta, "beta": beta, "rows": out})
    return out


PROXY_CACHE = RESULTS.parents[2] / "bench-ws" / "proxy-tokens.npz"


def proxy_tokens(pool: Path, target: Path, n_eval: int = 400):
    """(pool pieces: flat encoder ids, offsets; target eval pieces; target fit pieces) with the testbed's
    tokenizer (the packaged all-MiniLM-L6-v2 WordPiece), cached in bench-ws/."""
    import pyarrow.parquet as pq

    from dgamix.mixing.testbed.tokens import encode, flatten, tokenizer_path

    if PROXY_CACHE.exists():
        z = np.load(PROXY_CACHE)
        return (z["flat"], z["offsets"]), (z["eval_flat"], z["eval_offsets"]), z["fit"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path("all-MiniLM-L6-v2"))
    texts = pq.read_table(pool, columns=["text"])["text"].to_pylist()
    flat, offsets = flatten(encode(tok, texts))
    t = pq.read_table(target, columns=["text"])["text"].to_pylist()
    perm = np.random.default_rng(1).permutation(len(t))
    ev_flat, ev_off = flatten(encode(tok, [t[i] for i in np.sort(perm[:n_eval])]))
    fit = flatten(encode(tok, [t[i] for i in perm[n_eval:]]))[0]
    PROXY_CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(PROXY_CACHE, flat=flat, offsets=offsets, eval_flat=ev_flat, eval_offsets=ev_off, fit=fit)
    return (flat, offsets), (ev_flat, ev_off), fit


def proxy(args) -> dict:
    """Without the workspace: train on the pool's documents drawn uniformly at random (the natural
    mixture) and evaluate on MMLU examples, beside the natural mixture's unigram cross-entropy. The loss a
    shape reaches after a number of steps, and its step time, under the machine's load of the moment."""
    import torch

    from dgamix.mixing.testbed.model import ModelConfig, TinyGPT, lm_loss
    from dgamix.mixing.testbed.packing import DocTokens, Packer
    from dgamix.mixing.testbed.tokens import Vocab
    from dgamix.mixing.testbed.train import eval_windows
    from dgamix.mixing.testbed.trainer import evaluate, make_optimizer
    from dgamix.pipeline.core.runtime import torch_threads

    from .unigram import cross_entropy, mixture_unigram, own_unigram, predicted

    (flat, offsets), (ev_flat, ev_off), fit = proxy_tokens(Path(args.pool), Path(args.target))
    vocab = Vocab.top(flat, args.vocab_size, 30522)
    docs = DocTokens(vocab.lookup[flat], offsets)
    ev = DocTokens(vocab.lookup[ev_flat], ev_off)
    windows = eval_windows(ev, np.arange(len(ev)), args.context, 128)
    counts = np.bincount(docs.stream(np.arange(len(docs))), minlength=vocab.size)[None].astype(np.float64)
    uni = {"natural": cross_entropy(predicted(windows), mixture_unigram(counts, np.ones(1))),
           "own": cross_entropy(predicted(windows), own_unigram(vocab.lookup[fit], vocab.size))}
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, context=args.context, vocab_size=args.vocab_size,
                      d_model=args.d_model, n_layer=args.n_layer, n_head=max(1, args.d_model // 32), lr=args.lr,
                      warmup=args.warmup, threads=1)
    rng = np.random.default_rng(0)
    curve, t_train = [], 0.0
    with torch_threads(1), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyGPT(ModelConfig(vocab.size, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.context))
        opt = make_optimizer(model, cfg)
        packer = Packer(docs, cfg.context, cfg.batch_size, float(docs.lengths().mean()))
        for step in range(cfg.steps + 1):
            if step % max(1, cfg.steps // 6) == 0 or step == cfg.steps:
                curve.append((step, round(evaluate(model, windows, 32), 4)))
                print(curve[-1], flush=True)
            if step == cfg.steps:
                break
            t0 = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = cfg.lr_at(step)
            loss = lm_loss(model, packer.next(lambda m: rng.integers(0, len(docs), m)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            t_train += time.perf_counter() - t0
    key = f"d{args.d_model}-L{args.n_layer}-c{args.context}-V{args.vocab_size}-b{args.batch_size}-s{args.steps}"
    rec = {"config": {k: getattr(cfg, k) for k in ("steps", "batch_size", "context", "vocab_size", "d_model",
                                                   "n_layer", "n_head", "lr", "warmup")},
           "params": sum(p.numel() for p in model.parameters()), "curve": curve, "unigram_mmlu": uni,
           "below_natural_unigram": round(uni["natural"] - curve[-1][1], 4),
           "seconds_per_step_loaded": round(t_train / cfg.steps, 4), "loadavg": list(os.getloadavg())}
    print(key, rec, flush=True)
    record(f"proxy:{key}", rec)
    return rec


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.experiments.efficacy.sizing")
    sub = ap.add_subparsers(dest="part", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--modes", default="fp32,bf16,compile")
    p = sub.add_parser("loss")
    p.add_argument("--workspace", default=str(RESULTS.parents[2] / "ws" / "minipile"))
    for k, v in (("steps", 600), ("batch_size", 16), ("context", 128), ("vocab_size", 4096), ("d_model", 128),
                 ("n_layer", 4), ("warmup", 20), ("align_batch_size", 4), ("reweight_every", 12)):
        p.add_argument("--" + k.replace("_", "-"), type=int, default=v)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dga", action="store_true")
    x = sub.add_parser("proxy")
    x.add_argument("--pool", default=str(MINIPILE / "pool.parquet"))
    x.add_argument("--target", default=str(MINIPILE / "targets" / "mmlu.parquet"))
    for k, v in (("steps", 600), ("batch_size", 16), ("context", 128), ("vocab_size", 4096), ("d_model", 128),
                 ("n_layer", 4), ("warmup", 40)):
        x.add_argument("--" + k.replace("_", "-"), type=int, default=v)
    x.add_argument("--lr", type=float, default=3e-3)
    sub.add_parser("noise")
    args = ap.parse_args(argv)
    {"speed": speed, "loss": loss, "proxy": proxy, "noise": lambda a: noise_check()}[args.part](args)


if __name__ == "__main__":
    main()

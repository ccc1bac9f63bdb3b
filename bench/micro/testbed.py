"""The reference trainer's testbed: tokens/s against a plain torch loop, and bf16 autocast vs fp32.

Both loops train the same TinyGPT (mixing/testbed/model.py; the trainer's defaults: context 64, 4,096
pieces + 3 specials, d_model 128, 4 layers) on the same packed windows of real text (the
mini-Pile slice in data/minipile, tokenised once), with AdamW, the same learning-rate schedule
and gradient clipping, on one CPU thread:

  plain    a torch loop over a pre-packed stream of shuffled documents: windows -> loss ->
           backward -> clip -> step (no sampler, no mixture, no logging);
  trainer  mixing/testbed/trainer.Trainer with the `uniform` mixer over the slice's 14 source domains:
           the mixture sampler, the packer, loss checks, timing and the evaluations at step 0 and
           at the end (set-up included: the whole `train` call is timed).

The loops are repeated --repeat times, interleaved, and the best time of each counts.

The ratio trainer / plain tokens per second is what the reference trainer's own machinery
costs. The bf16 row times the plain loop under torch.autocast(bfloat16) and compares its final
training loss with fp32's (the trainer stays fp32 unless bf16 is faster at equal loss).

    python -m bench.micro.testbed [--steps 60] [--repeat 3] [--threads 1]   # JSON in bench/micro/results/testbed.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dgamix.pipeline.precision import cpu_info

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def setup(n_docs: int):
    import polars as pl
    from transformers import AutoTokenizer

    from dgamix.mixing.sampler import DomainIndex
    from dgamix.mixing.testbed.packing import DocTokens
    from dgamix.mixing.testbed.tokens import Vocab, encode, tokenizer_path

    df = pl.read_parquet(ROOT / "data" / "minipile" / "slice.parquet").head(n_docs)
    tok = AutoTokenizer.from_pretrained(tokenizer_path("all-MiniLM-L6-v2"))
    ids = encode(tok, df["text"].to_list())
    vocab = Vocab.build(ids, 4096, len(tok))
    tokens = DocTokens(*vocab.flat(ids))  # the texts are tokenised once
    names, dom = np.unique(df["domain"].to_numpy(), return_inverse=True)
    index = DomainIndex.from_arrays(np.arange(len(df)), dom.astype(np.int64))
    return tokens, vocab, index, [str(n) for n in names]


def plain_loop(model, windows: torch.Tensor, cfg, steps: int, bf16: bool) -> tuple[float, float]:
    """(seconds, final training loss) of ``steps`` steps over pre-packed windows (steps * B, T + 1)."""
    from dgamix.mixing.testbed.model import lm_loss
    from dgamix.mixing.testbed.trainer import make_optimizer

    opt = make_optimizer(model, cfg)
    loss = torch.tensor(float("nan"))
    t0 = time.perf_counter()
    for s in range(steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr_at(s)
        batch = windows[s * cfg.batch_size:(s + 1) * cfg.batch_size]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
    return time.perf_counter() - t0, float(loss.detach())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--quick", action="store_true", help="20 steps (make bench)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats of every loop; the best of each counts")
    ap.add_argument("--docs", type=int, default=4000, help="documents of the slice to train on")
    ap.add_argument("--out", type=Path, default=RESULTS / "testbed.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.repeat = 40, 2
    from dgamix.mixing.mixers import make_mixer
    from dgamix.mixing.online import OnlineMixture
    from dgamix.mixing.sampler import MixtureSampler
    from dgamix.mixing.testbed.model import ModelConfig, TinyGPT
    from dgamix.mixing.testbed.packing import PackedBatches, pack_stream
    from dgamix.mixing.testbed.trainer import TrainConfig, TrainData, train

    torch.set_num_threads(args.threads)
    tokens, vocab, index, names = setup(args.docs)
    cfg = TrainConfig(steps=args.steps, eval_every=10 ** 9, checkpoint_every=0, threads=args.threads)
    width = cfg.context + 1
    order = np.random.default_rng(0).permutation(len(tokens))
    stream = tokens.stream(order)
    need = args.steps * cfg.batch_size * width
    stream = np.tile(stream, math.ceil(need / stream.size))[:need]
    windows = torch.from_numpy(stream.reshape(-1, width).astype(np.int64))

    def model():
        torch.manual_seed(0)
        return TinyGPT(ModelConfig(vocab.size, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.context))

    plain_loop(model(), windows, cfg, 3, False)  # warm-up: first-call allocations
    k = len(index)
    target = pack_stream(tokens.stream(order[:200]), cfg.context)
    mean_len = float(tokens.lengths().mean())
    data = TrainData(tokens, {"general": pack_stream(tokens.stream(order[-64:]), cfg.context, 32)}, mean_len)

    def trainer_run() -> tuple[float, int, float]:
        mix = OnlineMixture(MixtureSampler(index, seed=0), MixtureSampler(index, seed=1), make_mixer("uniform", k),
                            PackedBatches(tokens, target, cfg.context, mean_len), kind="domain",
                            ids=index.domains.copy(), names=names, rank=0, world_size=1)
        t0 = time.perf_counter()
        res = train(model(), data, mix, cfg)
        return time.perf_counter() - t0, res.metrics[-1]["tokens"], res.timings["step_seconds"]

    # interleaved repeats, best of each: a load spike on the shared cores hits one repeat, not the ratio
    best: dict[str, tuple] = {}
    for _ in range(args.repeat):
        for label, bf16 in (("plain fp32", False), ("plain bf16 autocast", True)):
            sec, loss = plain_loop(model(), windows, cfg, args.steps, bf16)
            if label not in best or sec < best[label][0]:  # tokens = predicted positions, as the trainer counts
                best[label] = (sec, args.steps * cfg.batch_size * cfg.context, loss)
        sec, trained, step_s = trainer_run()
        if "trainer (uniform)" not in best or sec < best["trainer (uniform)"][0]:
            best["trainer (uniform)"] = (sec, trained, float("nan"), step_s)  # the trainer logs means, not the last loss
    rows = {label: {"seconds": v[0], "tokens_per_s": v[1] / v[0], "final_train_loss": v[2],
                    **({"step_seconds": v[3]} if len(v) > 3 else {})} for label, v in best.items()}
    plain = rows["plain fp32"]["tokens_per_s"]
    out = {"command": "python -m bench.micro.testbed " + " ".join(argv if argv is not None else sys.argv[1:]),
           "steps": args.steps, "threads": args.threads, "repeat": args.repeat,
           "model_params": sum(p.numel() for p in model().parameters()), "batch": [cfg.batch_size, width],
           "rows": rows, "trainer_vs_plain": rows["trainer (uniform)"]["tokens_per_s"] / plain,
           "bf16_vs_fp32": rows["plain bf16 autocast"]["tokens_per_s"] / plain,
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "bf16_units": "avx512_bf16" in cpu_info()[1]}}
    print(f"{'loop':<22}{'tokens/s':>10}{'seconds':>9}{'train loss':>12}")
    for label, r in rows.items():
        print(f"{label:<22}{r['tokens_per_s']:>10.0f}{r['seconds']:>9.1f}{r['final_train_loss']:>12.4f}")
    print(f"trainer / plain: {out['trainer_vs_plain']:.3f}x   bf16 autocast / fp32: {out['bf16_vs_fp32']:.3f}x "
          f"({args.steps} steps x {cfg.batch_size} x {width} pieces, {args.threads} thread(s))")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()

"""Alignments on a subset of the parameters (DGAConfig.align_params): cost and agreement with the
full-gradient alignments over the real updates of a DGA run.

A DGA run of the reference trainer's testbed (mini-Pile, k = 64 domains at level 1, MMLU; the
settings of `python -m bench.experiments.efficacy --regime a`) follows the full-gradient alignments; at every
reweighting the same target batch and probe batches are also aligned on the subset only. Printed:
seconds per reweighting (full vs subset, same batches), the Spearman rank correlation of the two
alignment vectors per update (mean, min), and how often the subset picks the same top-8 domains.
What the subset does to the final target loss is `python -m bench.experiments.efficacy --regime a --align-params RX`
(3 seeds, paired with the full-gradient runs; bench/experiments/results/efficacy-a-subset.json).

    python -m bench.micro.subset_align [--workspace ws/minipile] [--align-params 'blocks\\.3\\.|ln_f'] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=ROOT / "ws" / "minipile",
                    help="the workspace bench/experiments/efficacy builds (clustering k64-64, target mmlu); when it is "
                         "missing, bench/micro/online.py's (1,500 slice documents, k16)")
    ap.add_argument("--clusters", default="k64-64")
    ap.add_argument("--level", type=int, default=1)
    ap.add_argument("--target", default="mmlu")
    ap.add_argument("--align-params", default=r"blocks\.3\.|ln_f", help="regex on parameter names (last block)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="100 steps (make bench)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="JSON (default bench/micro/results/subset_align[-quick].json)")
    args = ap.parse_args(argv)
    args.out = args.out or RESULTS / ("subset_align-quick.json" if args.quick else "subset_align.json")
    if args.quick:
        args.steps = 100
    if not (args.workspace / "clusters" / args.clusters).exists():
        # no efficacy workspace (a fresh clone): the small one bench/micro/online.py builds from data/minipile
        from bench.micro.online import quick_workspace

        print(f"{args.workspace} has no clustering {args.clusters}: using bench/micro/online.py's workspace")
        args.workspace, args.clusters, args.level, args.target, _ = quick_workspace(1500)
    from dgamix.mixing.alignment import gradient_alignments
    from dgamix.mixing.testbed.model import ModelConfig, TinyGPT, lm_loss
    from dgamix.mixing.testbed.packing import Packer
    from dgamix.mixing.testbed.train import build_inputs
    from dgamix.mixing.testbed.trainer import TrainConfig, make_optimizer
    from dgamix.pipeline.core.workspace import Workspace

    torch.set_num_threads(args.threads)
    cfg = TrainConfig(steps=args.steps, align_batch_size=8, eval_every=50, eval_batches=4, checkpoint_every=0,
                      seed=args.seed, threads=args.threads)  # bench/experiments/efficacy's testbed
    ws = Workspace(args.workspace)
    inp = build_inputs(ws, args.clusters, args.level, args.target, "dga", None, cfg)
    mix, data = inp["mix"], inp["data"]
    torch.manual_seed(cfg.seed)
    model = TinyGPT(ModelConfig(inp["vocab"].size, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.context))
    opt = make_optimizer(model, cfg)
    packer = Packer(data.tokens, cfg.context, cfg.batch_size, data.mean_len)
    n = mix.mixer.n
    rows = []
    for step in range(cfg.steps):
        lr = cfg.lr_at(step)
        if mix.due(step):  # the batches maybe_reweight would draw, kept to align twice
            target = mix.batches.target(mix.cycle.next(mix.target_batch_size))
            probes = list(mix._probes(np.ones(n, dtype=bool)))
            model.eval()
            t0 = time.perf_counter()
            full = gradient_alignments(model, lm_loss, target, probes)
            t_full = time.perf_counter() - t0
            t0 = time.perf_counter()
            sub = gradient_alignments(model, lm_loss, target, probes, params=args.align_params)
            t_sub = time.perf_counter() - t0
            model.train()
            top_f, top_s = set(np.argsort(-full.alignments)[:8]), set(np.argsort(-sub.alignments)[:8])
            rows.append({"step": step, "spearman": spearman(full.alignments, sub.alignments),
                         "top8_overlap": len(top_f & top_s) / 8, "seconds_full": t_full, "seconds_subset": t_sub})
            mix.mixer.update(step, full.alignments, grad_norms=full.grad_norms, target_norm=full.target_norm, lr=lr)
        for g in opt.param_groups:
            g["lr"] = lr
        w = mix.weights()
        loss = lm_loss(model, packer.next(lambda m: mix.next_ids(m, w)[0]))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
    n_sub = sum(p.numel() for name, p in model.named_parameters() if re.search(args.align_params, name))
    rho = np.array([r["spearman"] for r in rows])
    out = {"command": "python -m bench.micro.subset_align " + " ".join(argv if argv is not None else []),
           "align_params": args.align_params, "params_subset": n_sub,
           "params_all": sum(p.numel() for p in model.parameters()), "domains": n, "steps": cfg.steps,
           "updates": len(rows), "spearman_mean": float(rho.mean()), "spearman_min": float(rho.min()),
           "top8_overlap_mean": float(np.mean([r["top8_overlap"] for r in rows])),
           "seconds_full": float(np.median([r["seconds_full"] for r in rows])),
           "seconds_subset": float(np.median([r["seconds_subset"] for r in rows])), "updates_detail": rows}
    out["cost_ratio"] = out["seconds_subset"] / out["seconds_full"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"subset {args.align_params!r}: {n_sub:,} of {out['params_all']:,} parameters; {len(rows)} updates over "
          f"{n} domains")
    print(f"seconds per reweighting: full {out['seconds_full']:.3f}, subset {out['seconds_subset']:.3f} "
          f"({out['cost_ratio']:.2f}x)")
    print(f"Spearman(full, subset) per update: mean {out['spearman_mean']:.3f}, min {out['spearman_min']:.3f}; "
          f"top-8 overlap {out['top8_overlap_mean']:.2f}")
    return out


if __name__ == "__main__":
    main()

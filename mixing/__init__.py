"""Stage 3 of dgamix, and the public API for your own training loop.

In your loop: ``OnlineMixture.from_workspace(...)`` then ``next_batch`` / ``maybe_reweight`` /
``state_dict`` (mixing/online.py); with ``transformers.Trainer``: ``MixtureDataset`` and
``MixtureCallback`` (mixing/hf.py); texts of any doc ids: ``DocTexts``; DGA's settings: ``DGAConfig``.
Lower level: DGA and the baselines, gradient alignment, the sampler. The reference LM that
`dgamix train` trains lives apart, in dgamix.mixing.testbed, and uses this API as a user's loop does.

The names below are imported on first use (PEP 562), so that `dgamix schedule` and
`dgamix report`, which need no torch, do not pay torch's import time.
"""
from importlib import import_module

_HOME = {
    "Alignments": "alignment", "gradient_alignments": "alignment",
    "DGA": "dga", "BasisMatrix": "dga", "DGAConfig": "dga", "ema": "dga", "mirror_step": "dga",
    "normalise_alignments": "dga",
    "MIXER_NAMES": "mixers", "DoGE": "mixers", "Mixer": "mixers", "Static": "mixers", "make_mixer": "mixers",
    "DomainIndex": "sampler", "MixtureSampler": "sampler",
    "OnlineMixture": "online", "Batch": "online", "Reweighting": "online", "loss_weights": "online",
    "MixtureDataset": "hf", "MixtureCallback": "hf", "DocTexts": "dgamix.pipeline.core.sources",
}
__all__ = list(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'dgamix.mixing' has no attribute {name!r}")
    home = _HOME[name]
    return getattr(import_module(home if "." in home else f"dgamix.mixing.{home}"), name)

"""Stage 3 of dgamix: weights (DGA and baselines), gradient alignment, sampler.

The names below are imported on first use (PEP 562), so that `dgamix schedule` and
`dgamix report`, which need no torch, do not pay torch's import time.
"""
from importlib import import_module

_HOME = {
    "Alignments": "alignment", "gradient_alignments": "alignment",
    "DGA": "dga", "BasisMatrix": "dga", "DGAConfig": "dga", "ema": "dga", "mirror_step": "dga",
    "normalise_alignments": "dga",
    "MIXER_NAMES": "mixers", "DoGE": "mixers", "Mixer": "mixers", "Static": "mixers", "make_mixer": "mixers",
    "DomainIndex": "sampler", "MixtureSampler": "sampler", "SamplerDataset": "sampler",
}
__all__ = list(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'dgamix.mixing' has no attribute {name!r}")
    return getattr(import_module(f"dgamix.mixing.{_HOME[name]}"), name)

"""Stage 3 of dgamix: weights (DGA and baselines), gradient alignment, sampler."""
from mixing.alignment import Alignments, gradient_alignments
from mixing.dga import DGA, BasisMatrix, DGAConfig, ema, mirror_step, normalise_alignments
from mixing.mixers import MIXER_NAMES, DoGE, Mixer, Static, make_mixer
from mixing.sampler import DomainIndex, MixtureSampler, SamplerDataset

__all__ = [
    "Alignments", "gradient_alignments", "DGA", "BasisMatrix", "DGAConfig", "ema", "mirror_step",
    "normalise_alignments", "MIXER_NAMES", "DoGE", "Mixer", "Static", "make_mixer",
    "DomainIndex", "MixtureSampler", "SamplerDataset",
]

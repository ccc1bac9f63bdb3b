"""Stage 3 of dgamix, and the public API for your own training loop.

In your loop: ``OnlineMixture.from_workspace(...)`` (or ``from_arrays``, for domains you name) then
``next_batch`` / ``maybe_reweight`` / ``state_dict`` (mixing/online.py); DataLoader workers:
``MixtureBatchSampler`` and ``DocDataset`` (mixing/loader.py); with ``transformers.Trainer``:
``MixtureTrainer`` / ``MixtureCallback`` (mixing/hf.py); texts of any doc ids: ``DocTexts``; DGA's
settings: ``DGAConfig``; what a run's model was: ``model_identity``.
Lower level: DGA and the baselines, gradient alignment, the sampler. The reference LM that
`dgamix train` trains lives apart, in dgamix.mixing.testbed, and uses this API as a user's loop does.

The names below are imported on first use (PEP 562), so that `dgamix schedule` and
`dgamix report`, which need no torch, do not pay torch's import time.
"""
from importlib import import_module as _import_module

_HOME = {
    "Alignments": "alignment", "gradient_alignments": "alignment", "is_fsdp": "alignment",
    "fsdp_alignments": "alignment",
    "DGA": "dga", "BasisMatrix": "dga", "DGAConfig": "dga", "ema": "dga", "mirror_step": "dga",
    "normalise_alignments": "dga",
    "MIXER_NAMES": "mixers", "DoGE": "mixers", "Mixer": "mixers", "Static": "mixers", "make_mixer": "mixers",
    "DomainIndex": "sampler", "MixtureSampler": "sampler",
    "OnlineMixture": "online", "Batch": "online", "Reweighting": "online", "loss_weights": "online",
    "ArrayTexts": "online", "AlignmentError": "online", "model_identity": "runlog",
    "MixtureTrainer": "hf", "MixtureCallback": "hf", "MixtureBatchSampler": "loader", "DocDataset": "loader",
    "min_delay": "loader",
    "DocTexts": "dgamix.pipeline.core.sources",
}
__all__ = list(_HOME)


def __dir__() -> list[str]:
    """The public names (``__all__``) beside the module's own attributes: ``dir(dgamix.mixing)``
    lists what can be imported from it, although nothing is imported before first use."""
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'dgamix.mixing' has no attribute {name!r}")
    home = _HOME[name]
    return getattr(_import_module(home if "." in home else f"dgamix.mixing.{home}"), name)

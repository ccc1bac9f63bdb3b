"""Stages 1-2 of dgamix: corpus -> embeddings -> k-means tree -> assignments -> target bases.

The stage modules below are imported on first use (PEP 562): ``dgamix.pipeline.cluster`` works
without importing it first, and ``dir(dgamix.pipeline)`` lists them.
"""
from importlib import import_module as _import_module

__all__ = ["core", "corpus", "dedup", "embed", "encoder", "precision", "engine", "kmeans", "cluster", "assign",
           "domains", "target", "basis"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'dgamix.pipeline' has no attribute {name!r}")
    return _import_module(f"dgamix.pipeline.{name}")


def __dir__() -> list[str]:
    """The stage modules (``__all__``) beside the package's own attributes."""
    return sorted(set(globals()) | set(__all__))

"""Stages 1-2 of dgamix: corpus -> embeddings -> k-means tree -> assignments -> target bases."""

__version__ = "0.1.0"

"""Stages 1-2 of dgamix: corpus -> embeddings -> k-means tree -> assignments -> target bases."""

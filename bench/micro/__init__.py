"""Micro benchmarks: one component each, timed against a plain baseline in the same process.

Run one from the repository root as ``python -m bench.micro.<name> [--quick]``; it writes
bench/micro/results/<name>.json. ``python bench/run_all.py`` runs them all.
"""

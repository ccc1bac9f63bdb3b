"""Experiments: training runs that measure what the mixers do to the model's losses.

Run one from the repository root as ``python -m bench.experiments.<name>``; it writes
bench/experiments/results/. ``python bench/run_all.py`` runs each with ``--quick``.
"""

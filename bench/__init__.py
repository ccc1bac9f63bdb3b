"""Benchmarks and experiments (not tests, not part of the installed dgamix).

Two folders, each with its results/ beside it:

- ``bench/micro``: micro benchmarks, each timing one component against a plain baseline measured
  in the same process (embed, cluster, dedup, mixing, online, testbed, ray_engine, verify,
  subset_align);
- ``bench/experiments``: long experiments that train models (efficacy, fine_grained).

Every script runs as a module from the repository root, so that bench/ is a package and shared
code is imported by its full name (nothing edits ``sys.path``)::

    python -m bench.micro.embed --quick
    python -m bench.experiments.efficacy --regime a --jobs 2
    python bench/run_all.py            # every script with --quick (make bench)
"""

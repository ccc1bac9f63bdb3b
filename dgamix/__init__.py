"""dgamix: turn a large generic corpus into a data mixture that specialises a language model to a
small target task (clustered importance sampling + Dynamic Gradient Alignment).

The repository's top-level folders install as subpackages of this one (pyproject's package-dir):

- ``dgamix.pipeline``: stages 1-2 (embed, cluster, target, basis), manifest -> manifest functions;
- ``dgamix.pipeline.core``: the kernel every stage stands on: manifests, the workspace and its
  names, validation on read, errors, progress bars, scoped process settings;
- ``dgamix.mixing``: stage 3 (DGA and the baselines, gradient alignment, the sampler, the
  reference trainer, schedules); it reads stages 1-2 only through ``dgamix.pipeline.core``;
- ``dgamix.cli``: the ``dgamix`` command, one module per stage.

What a user imports for their own training loop lives in ``dgamix.mixing``.
"""

__version__ = "0.1.0"

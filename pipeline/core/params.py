"""The parameters of the stages that the kernel must know too: the one home of their defaults.

`dgamix cluster`, `dgamix target` and `dgamix basis` read their options' defaults from these
dataclasses, the stages take them as typed values, and the rebuild commands that a stale or
damaged artefact's message names (``options``, used by ``validate``) leave out exactly the
options still at these defaults. (The trainer's settings live in dgamix.mixing.testbed.config, the
encoder's in dgamix.pipeline.encoder.EmbedConfig.)
"""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ClusterParams:
    """A hierarchical k-means tree. levels: branching per level, each >= 2 (64,64,64 gives
    64 / 4,096 / 262,144 domains); seed: of the samples and every node's k-means; niter: k-means
    iterations per node; max_points_per_centroid: sample cap per node = branching x this (FAISS's
    rule); init: kmeans++ | random; sample_memory_mib: MiB of sampled embeddings held while fitting
    a level (bounds memory, not recorded: the tree does not depend on it); text_docs: documents
    whose texts describe the domains (not recorded)."""

    levels: tuple[int, ...] = ()
    seed: int = 0
    niter: int = 20
    max_points_per_centroid: int = 256
    init: str = "kmeans++"
    sample_memory_mib: int = 1024
    text_docs: int = 50_000

    def recorded(self, dim: int) -> dict:
        """What tree.parquet records (and fingerprints) of these parameters."""
        return {"levels": list(self.levels), "seed": int(self.seed), "niter": int(self.niter),
                "max_points_per_centroid": int(self.max_points_per_centroid), "init": self.init, "dim": dim}


@dataclass(frozen=True)
class TargetConfig:
    """How a target file is read and split: its text / id / group columns, the fraction of examples
    held out for evaluation only, the seed of that split, and the examples' own vectors (when the
    corpus was embedded with --vectors; dgamix.pipeline.vectors)."""

    text_column: str = "text"
    id_column: str = "id"
    group_column: str | None = None   # e.g. a task or subject column; kept as `group`
    holdout: float = 0.2              # fraction of examples held out for evaluation only
    seed: int = 0                     # seeds the reweight/holdout split
    vectors: str | None = None        # the examples' own vectors (Parquet: id column + 'vector'), else embedded
    vectors_encoder: str = "user vectors"  # name of the model that made them: the corpus's must be the same


@dataclass(frozen=True)
class BasisParams:
    """How target histograms become bases. by: single | group | kmeans:N | levels; generic: one
    more basis, natural | uniform | none; smoothing: additive count per populated domain;
    pocket_min: warn about target examples in domains with fewer corpus documents; seed: of
    kmeans:N; temper: exponents gamma, every target basis h also emitted as h (h/q)^gamma."""

    by: str = "single"
    generic: str = "none"
    smoothing: float = 0.0
    pocket_min: int = 5
    seed: int = 0
    temper: tuple[float, ...] = (0.0,)


@dataclass(frozen=True)
class ScheduleParams:
    """A static training schedule: steps x batch_size documents; seed orders the draws (None: the
    run's seed with --run, else 0); limited: without replacement inside a domain (a new epoch when
    it is exhausted), else with replacement."""

    steps: int
    batch_size: int
    seed: int | None = None
    limited: bool = True


def options(cls, recorded: dict, names: tuple[str, ...] | None = None) -> str:
    """' --opt value' for each of ``names`` (default: every field of ``cls``) whose recorded value
    differs from ``cls``'s default: the options a rebuild command must repeat."""
    out = ""
    for f in fields(cls):
        if (names is not None and f.name not in names) or f.name not in recorded:
            continue
        value, default = recorded[f.name], f.default
        if value is None and default is not None:  # not recorded as such: the default
            continue
        if isinstance(default, tuple):
            value, default = tuple(value or ()), tuple(default)
        if value != default:
            shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) \
                if isinstance(value, tuple) else value
            out += f" --{f.name.replace('_', '-')} {shown}"
    return out

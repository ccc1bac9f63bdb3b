"""The workspace layout (docs/layout.md) and a per-stage lock.

All paths of a workspace are computed here so no stage spells a file name twice.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dgamix.pipeline.core.errors import DgamixError

NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_HELP = "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
RESERVED_SUFFIXES = (".summary", ".tmp")  # WS/bases/B.summary.parquet and the atomic writer's temporaries


def valid_name(name: object) -> bool:
    """Whether ``name`` may name an artefact: NAME_RULE, and no suffix that dgamix's own files use."""
    return isinstance(name, str) and bool(NAME_RULE.fullmatch(name)) and not name.endswith(RESERVED_SUFFIXES)


def check_name(name: object, what: str, option: str | None = None) -> str:
    """``name`` if it is a safe artefact name (NAME_RULE), else a one-line DgamixError.

    Every clustering, target, basis, run and schedule name becomes one path component under the
    workspace, so a name with a separator, a leading dot ('..', a hidden temporary) or a control
    character could write outside the workspace or clash with dgamix's own files; the rule admits
    none of them. ``what`` is the kind of artefact, ``option`` the CLI option that gave the name.
    """
    if valid_name(name):
        return name
    shown = repr(name) if not isinstance(name, str) or len(name) <= 60 else repr(name[:60] + "...")
    where = f"{option} {shown}" if option else shown
    raise DgamixError(f"{where} is not a valid {what} name; use {NAME_HELP}, not ending in "
                      f"{' or '.join(RESERVED_SUFFIXES)} (e.g. my-{what}_1).")


@dataclass(frozen=True)
class Workspace:
    """Paths of one workspace folder ``root``; every artefact name is checked by ``check_name``, so no
    path computed here leaves ``root``.

    ``staged`` maps outputs (paths relative to ``root``, e.g. ``runs/r1``) to where a stage that
    replaces them writes now (:mod:`dgamix.pipeline.core.stage`): the stage's code computes its
    paths here as usual and writes beside the complete old output until it is complete itself."""

    root: Path
    staged: tuple[tuple[str, Path], ...] = ()

    def __init__(self, root: str | Path, staged: tuple[tuple[str, Path], ...] = ()):
        object.__setattr__(self, "root", Path(root))
        object.__setattr__(self, "staged", tuple(staged))

    def at(self, *parts: str) -> Path:
        """The path of ``parts`` under the root, or where it is being staged."""
        rel = "/".join(parts)
        for out, where in self.staged:
            if rel == out:
                return where
            if rel.startswith(out + "/"):
                return where / rel[len(out) + 1:]
        return self.root.joinpath(*parts)

    def relative(self, path: Path) -> str:
        """``path`` (under the root or staged) as the root-relative name it has once complete."""
        for out, where in self.staged:
            if path == where or where in path.parents:
                return "/".join([out, *path.relative_to(where).parts])
        return path.relative_to(self.root).as_posix()

    # stage 1
    @property
    def docs(self) -> Path:
        return self.at("docs.parquet")

    @property
    def embeddings_dir(self) -> Path:
        return self.at("embeddings")

    @property
    def embeddings(self) -> Path:
        return self.at("embeddings.parquet")

    def embedding_part(self, shard: int) -> Path:
        return self.at("embeddings", f"part-{shard:05d}.parquet")

    def clusters_dir(self, name: str) -> Path:
        return self.at("clusters", check_name(name, "clustering"))

    def tree(self, name: str) -> Path:
        return self.clusters_dir(name) / "tree.parquet"

    def assignments_dir(self, name: str) -> Path:
        return self.clusters_dir(name) / "assignments"

    def assignment_part(self, name: str, shard: int) -> Path:
        return self.assignments_dir(name) / f"part-{shard:05d}.parquet"

    def domains(self, name: str) -> Path:
        return self.clusters_dir(name) / "domains.parquet"

    # stage 2
    def target_dir(self, name: str) -> Path:
        return self.at("targets", check_name(name, "target"))

    def basis(self, name: str) -> Path:
        return self.at("bases", f"{check_name(name, 'basis')}.parquet")

    def basis_summary(self, name: str) -> Path:
        return self.at("bases", f"{check_name(name, 'basis')}.summary.parquet")

    # stage 3
    def run_dir(self, name: str) -> Path:
        return self.at("runs", check_name(name, "run"))

    def schedule(self, name: str) -> Path:
        return self.at("schedules", f"{check_name(name, 'schedule')}.parquet")

    def clusterings(self) -> list[str]:
        """Names of the clusterings that have a tree."""
        root = self.root / "clusters"
        return sorted(p.name for p in root.iterdir() if valid_name(p.name) and (p / "tree.parquet").exists()) \
            if root.exists() else []

    def require(self, path: Path, how: str) -> Path:
        """``path`` if it exists, else a DgamixError that says which command builds it."""
        if not path.exists():
            raise DgamixError(f"{path} not found; run `{how}` first.")
        return path


def lock(ws: Workspace, stage: str):
    """Hold an exclusive lock on ``stage`` of the workspace for the duration of the block.

    A second dgamix process writing the same stage fails at once with a clear message instead
    of interleaving shards. The lock is an flock, so a killed process releases it."""
    from dgamix.pipeline.core import files

    if ws.root.exists() and not ws.root.is_dir():
        raise DgamixError(f"the workspace {ws.root} is a file, not a folder; pass a folder to --workspace.")
    path = ws.root / f".lock-{stage}"
    return files.flock(path, f"another dgamix process is writing '{stage}' in {ws.root} (lock {path}); wait for it "
                             f"to finish, then rerun (a rerun resumes).", root=ws.root, where="the workspace")

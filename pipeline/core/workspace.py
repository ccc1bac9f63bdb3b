"""The workspace layout (README.md, "Layout") and a per-stage lock.

All paths of a workspace are computed here so no stage spells a file name twice.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
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
    path computed here leaves ``root``."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    # stage 1
    @property
    def docs(self) -> Path:
        return self.root / "docs.parquet"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings.parquet"

    def embedding_part(self, shard: int) -> Path:
        return self.embeddings_dir / f"part-{shard:05d}.parquet"

    def clusters_dir(self, name: str) -> Path:
        return self.root / "clusters" / check_name(name, "clustering")

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
        return self.root / "targets" / check_name(name, "target")

    def basis(self, name: str) -> Path:
        return self.root / "bases" / f"{check_name(name, 'basis')}.parquet"

    def basis_summary(self, name: str) -> Path:
        return self.root / "bases" / f"{check_name(name, 'basis')}.summary.parquet"

    # stage 3
    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / check_name(name, "run")

    def schedule(self, name: str) -> Path:
        return self.root / "schedules" / f"{check_name(name, 'schedule')}.parquet"

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


@contextlib.contextmanager
def lock(ws: Workspace, stage: str):
    """Hold an exclusive lock on ``stage`` of the workspace for the duration of the block.

    A second dgamix process writing the same stage fails at once with a clear message instead
    of interleaving shards. The lock is an flock, so a killed process releases it.
    """
    path = ws.root / f".lock-{stage}"
    try:
        ws.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DgamixError(f"cannot write to the workspace {ws.root} (creating {path}: {e.strerror or e}); check "
                          f"write permission and free disk space there. Nothing was changed.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DgamixError(f"another dgamix process is writing '{stage}' in {ws.root} (lock {path}); "
                              f"wait for it to finish, then rerun (a rerun resumes).") from None
        yield
    finally:
        os.close(fd)

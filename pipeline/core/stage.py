"""The stage runner: how every stage that writes into a workspace takes its lock, keeps its outputs
inside the workspace, and replaces them atomically.

A stage names its lock and its outputs (files or folders relative to the workspace root) and runs
its work inside :func:`run_stage`::

    with run_stage(ws, "basis-B", ["bases/B.parquet", "bases/B.summary.parquet"], overwrite=True) as st:
        ... write through st.ws (st.ws.basis("B") is the staged path while old outputs exist) ...

What the runner guarantees, the same for every stage:

- **One writer**: an flock per lock name; a second writer fails at once with one line.
- **Containment**: every output resolves inside the workspace; a symlinked folder or name that
  leads out is refused before anything is written or deleted.
- **Atomic replacement**: while a complete output exists and the stage replaces it, the stage
  writes into a staging folder (``WS/.stage-LOCK.PID.RANDOM/new/...``) through a workspace whose
  paths point there (:class:`Workspace` ``staged``). Only when the block completes is each new
  output exchanged with the old one (``files.install``: one atomic exchange where the kernel has
  it, so the output never disappears), under a journal; a swap interrupted by a kill is completed
  by the next writer of that stage. A failure or kill before the swap leaves the complete old
  outputs as they were.
- **Orphans**: staging folders of dead processes are swept by the next writer of the stage.

Stages that resume (embed, cluster, train) write in place while no complete output of other
inputs exists, so finished shards survive a kill; they call :meth:`StageRun.replace` when they
find that an existing output must be replaced.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

from dgamix.pipeline.core import files
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.workspace import Workspace, lock

JOURNAL = "swap.json"


class StageRun:
    """One stage's hold on its outputs while it runs; ``ws`` is the workspace to write through."""

    def __init__(self, ws: Workspace, lock_name: str, outputs: tuple[str, ...]) -> None:
        self.base, self.lock_name, self.outputs = ws, lock_name, outputs
        self.ws = ws
        self.folder: Path | None = None  # the staging folder, once replacing
        self.made: list[Path] = []       # files written in place that a failed run removes (discard_on_failure)

    def discard_on_failure(self, paths: Iterable[str | Path]) -> None:
        """Files this run wrote in place, outside a staging folder: removed if the stage fails, so
        that a failed run leaves the workspace as it found it."""
        self.made.extend(Path(p) for p in paths)

    def keep(self, paths: Iterable[str | Path]) -> None:
        """Files given to :meth:`discard_on_failure` that the run now keeps whatever happens."""
        drop = {Path(p) for p in paths}
        self.made = [p for p in self.made if p not in drop]

    @property
    def replacing(self) -> bool:
        return self.folder is not None

    def final(self, rel: str) -> Path:
        return self.base.root / rel

    def exists(self) -> list[str]:
        """The outputs that exist now (complete or not), relative to the root."""
        return [r for r in self.outputs if self.final(r).exists() or self.final(r).is_symlink()]

    def replace(self, outputs: Iterable[str] | None = None) -> Workspace:
        """From now on write ``outputs`` (default: all) into a staging folder; they replace the
        current ones when the block completes. Returns (and sets) the workspace to write through."""
        if self.folder is None:
            self.folder = self.base.root / f".stage-{self.lock_name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            files.make_dir(self.folder / "new", self.base.root)
        rels = tuple(self.outputs if outputs is None else outputs)
        staged = dict(self.ws.staged)
        for rel in rels:
            staged.setdefault(rel, self.folder / "new" / rel)
            files.make_dir(staged[rel].parent, self.base.root)
        self.ws = Workspace(self.base.root, tuple(staged.items()))
        return self.ws

    def _commit(self) -> None:
        """Install every staged output in place, under a journal (see _recover)."""
        assert self.folder is not None
        root = self.base.root
        todo = [(rel, where) for rel, where in self.ws.staged if where.exists()]  # an output not made again stays
        with files.atomic_file(self.folder / JOURNAL, root) as tmp:
            tmp.write_text(json.dumps([[rel, os.stat(where).st_ino] for rel, where in todo]))
        for rel, where in todo:
            files.make_dir(self.final(rel).parent, root)
            files.install(where, self.final(rel), root)
        files.remove(self.folder, root)


def _recover(ws: Workspace, lock_name: str) -> None:
    """Finish what a killed writer of ``lock_name`` left. A swap that had begun (its journal is
    written only once every new output is complete) is completed: each output not yet in place
    (its inode is not the journal's) is installed. A staging folder that never reached its swap is
    deleted, the old outputs untouched. Called under the stage's lock."""
    prefix = f".stage-{lock_name}"
    for folder in sorted(ws.root.glob(f"{glob.escape(prefix)}.*")):
        # exactly this stage's (names may hold dots); any PID: we hold the stage's lock, so the
        # writer is gone even where its PID is alive again (or is ours: PID 1 in a container)
        if files.writer_pid(folder.name, prefix) is None or not folder.is_dir() or folder.is_symlink():
            continue
        journal = folder / JOURNAL
        if journal.exists():
            for rel, ino in json.loads(journal.read_text()):
                final, new = ws.root / rel, folder / "new" / rel
                done = final.exists() and os.stat(final).st_ino == ino
                if not done and new.exists() and os.stat(new).st_ino == ino:
                    files.install(new, final, ws.root)
        files.remove(folder, ws.root)


@contextlib.contextmanager
def run_stage(ws: Workspace, lock_name: str, outputs: Iterable[str], *, overwrite: bool = False,
              exists: str | None = None, replace_now: bool | None = None):
    """Run a stage's work under its lock; yields a :class:`StageRun`.

    outputs: the stage's files/folders relative to the root. exists: the one-line refusal when an
    output exists and ``overwrite`` is off (None: the stage decides itself, e.g. to resume).
    replace_now: stage every output from the start (default: when ``overwrite`` and one exists).
    """
    outputs = tuple(outputs)
    for rel in outputs:  # a symlinked folder or name leading out: refused before anything happens
        files.contained(ws.root / rel, ws.root)
    with lock(ws, lock_name):
        _recover(ws, lock_name)
        st = StageRun(ws, lock_name, outputs)
        have = st.exists()
        if have and not overwrite and exists is not None:
            raise DgamixError(exists)
        if replace_now if replace_now is not None else (overwrite and have):
            st.replace()
        try:
            with files.within(ws.root):
                yield st
        except BaseException as e:
            if st.folder is not None:  # the complete old outputs stay; the staged ones are dropped
                files.discard(st.folder)
            for p in st.made:
                files.discard(p)
            if isinstance(e, OSError):  # a write error the stage did not name itself: one line all the same
                raise files.os_error(e.filename or ws.root, e) from None
            raise
        if st.folder is not None:
            st._commit()


__all__ = ["StageRun", "run_stage"]

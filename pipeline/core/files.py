"""The one place dgamix renames, deletes and locks files.

Every path is first checked to stay inside its root (a workspace, or the per-machine cache):
a symlink anywhere on the way that leads out is refused with one line, and a deletion never
follows a link. Temporaries are named after the writing process (``.NAME.PID.RANDOM.tmp``) so a
later writer can sweep those of dead processes. Every ``OSError`` (disk full, read-only file
system, no permission, a file where a folder should be) becomes one :class:`DgamixError` line
that names the path; nothing half-written is left under a final name.
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import os
import re
import shutil
import uuid
from pathlib import Path

from dgamix.pipeline.core.errors import DgamixError

_WHY = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EDQUOT: "the disk quota is used up",
        errno.ENOTDIR: "a file stands where a folder is needed", errno.EEXIST: "a file stands where a folder is needed"}


def os_error(path: str | Path, e: OSError, doing: str = "write") -> DgamixError:
    """One line for an OSError met while doing ``doing`` to ``path``: what failed, why, the fix."""
    why = e.strerror or _WHY.get(e.errno) or type(e).__name__
    return DgamixError(f"could not {doing} {path}: {why}. Free disk space or fix the permissions of "
                       f"{Path(path).parent}, then rerun; earlier outputs are intact.")


# The root that writes and deletes without an explicit one must stay in: the workspace of the stage
# running (set by stage.run_stage through ``within``), else the file's own folder.
_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("dgamix_root", default=None)


@contextlib.contextmanager
def within(root: str | Path):
    """Every write and delete in the block without a root of its own must stay inside ``root``."""
    token = _ROOT.set(Path(root))
    try:
        yield
    finally:
        _ROOT.reset(token)


def _root_of(path: Path, root: str | Path | None) -> Path:
    return Path(root) if root is not None else (_ROOT.get() or path.parent)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def contained(path: str | Path, root: str | Path) -> Path:
    """``path`` if it stays inside ``root`` once every symlink on the way is followed (the last
    component included), else a one-line DgamixError. ``root`` itself may be a link."""
    path, root_r = Path(path), Path(root).resolve()
    try:
        where = path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise DgamixError(f"{path} cannot be resolved ({e}); remove the symlink loop.") from None
    if not _inside(where, root_r):
        raise DgamixError(f"{path} leads outside {root} (to {where}) through a symlink; dgamix writes and deletes "
                          f"only inside it: remove the link, or use another name or folder.")
    return path


def remove(path: str | Path, root: str | Path) -> None:
    """Delete the file or folder ``path`` inside ``root``; a link is removed as a link, never followed."""
    path = Path(path)
    try:
        if path.is_symlink() or path.is_file():
            contained(path.parent, root)  # a file reached through a linked folder is outside
            path.unlink(missing_ok=True)
        elif path.is_dir():
            contained(path, root)
            shutil.rmtree(path)  # never follows the links inside (they are unlinked)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise os_error(path, e, "delete") from None


def discard(path: str | Path) -> None:
    """Best-effort removal of a temporary of this process (no error: it is only clutter)."""
    path = Path(path)
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def replace(src: str | Path, dst: str | Path, root: str | Path) -> None:
    """Rename ``src`` to ``dst`` (both inside ``root``), replacing a file at ``dst`` atomically."""
    contained(Path(dst).parent, root)
    try:
        os.replace(src, dst)
    except OSError as e:
        raise os_error(dst, e) from None


def _renameat2_exchange():
    """libc's renameat2 with RENAME_EXCHANGE (Linux), or None where it is not available."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def install(new: str | Path, final: str | Path, root: str | Path) -> None:
    """Put the complete output ``new`` at ``final`` (file or folder), replacing what is there.

    Where the kernel allows, the two are exchanged atomically (renameat2 RENAME_EXCHANGE), so
    ``final`` never disappears, and the old output ends up at ``new``'s path; elsewhere the old
    output is first renamed to ``new``'s path + '.old', then ``new`` renamed into place."""
    import ctypes

    new, final = Path(new), Path(final)
    contained(final.parent, root)
    if not (final.exists() or final.is_symlink()):
        replace(new, final, root)
        return
    fn = _renameat2_exchange()
    if fn is not None and fn(_AT_FDCWD, os.fsencode(new), _AT_FDCWD, os.fsencode(final), _RENAME_EXCHANGE) == 0:
        return
    if fn is not None and ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        raise os_error(final, OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno())))
    replace(final, new.with_name(new.name + ".old"), root)
    replace(new, final, root)


def make_dir(path: str | Path, root: str | Path) -> Path:
    """``path`` created (with parents) inside ``root``; one line if it cannot be. The deepest existing
    folder on the way is checked first, so nothing is created outside ``root``."""
    path = Path(path)
    existing = path
    while not (existing.exists() or existing.is_symlink()) and existing != existing.parent:
        existing = existing.parent
    ex, r = existing.absolute(), Path(root).absolute()
    if ex == r or r in ex.parents:  # (root itself not made yet: nothing inside it to lead out)
        contained(existing, root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(path, e, "create the folder") from None
    if not path.is_dir():
        raise DgamixError(f"could not create the folder {path}: a file stands there; remove it or pick another "
                          f"folder.")
    return contained(path, root)


def read_at(fd: int, n: int, at: int) -> bytearray | None:
    """Exactly ``n`` bytes of the open file ``fd`` from offset ``at`` (one positioned read may
    return fewer, e.g. at most about 2 GiB); None where the file ends first."""
    buf = bytearray(n)
    view = memoryview(buf)
    while view:
        got = os.preadv(fd, [view], at)
        if got == 0:
            return None
        view, at = view[got:], at + got
    return buf


def temp_name(path: str | Path) -> Path:
    """A temporary sibling of ``path`` (same folder, so a rename is atomic), hidden, unique and named
    after this process: ``.NAME.PID.RANDOM.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return True
    return True


def writer_pid(name: str, prefix: str, suffix: str = "") -> int | None:
    """The writer's PID of a temporary named exactly ``PREFIX.PID.RANDOM`` + ``suffix`` (RANDOM: 8 hex
    digits, as temp_name and the stage runner make them), else None: another name that merely starts
    with PREFIX (names may hold dots and digits) is never taken for one."""
    m = re.fullmatch(re.escape(prefix) + r"\.(\d+)\.[0-9a-f]{8}" + re.escape(suffix), name)
    return int(m.group(1)) if m else None


def orphan_pid(name: str, prefix: str, suffix: str = "") -> int | None:
    """The writer's PID of temporary ``name`` (see writer_pid) when that process is gone, else None."""
    pid = writer_pid(name, prefix, suffix)
    return pid if pid is not None and pid != os.getpid() and not alive(pid) else None


def sweep_orphans(path: str | Path) -> int:
    """Delete the temporaries of ``path`` (files or folders) left by killed writers; returns how many.
    Temporaries of live processes are left alone."""
    path = Path(path)
    n = 0
    if path.parent.is_dir():
        for tmp in path.parent.iterdir():
            if orphan_pid(tmp.name, f".{path.name}", ".tmp") is not None:
                discard(tmp)
                n += 1
    return n


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_file(path: str | Path, root: str | Path | None = None):
    """Yield a temporary sibling of ``path`` to write; on success it is fsynced and renamed to ``path``,
    on any failure removed. Orphan temporaries of ``path`` are swept first. ``root``: the folder
    ``path`` must stay in (default: its own folder)."""
    path = Path(path)
    root = _root_of(path, root)
    make_dir(path.parent, root)
    contained(path, root)
    tmp = temp_name(path)
    with _temporary(tmp, path):
        sweep_orphans(path)
        yield tmp
        _commit(tmp, path)


@contextlib.contextmanager
def _temporary(tmp: Path, path: Path):
    """A failure inside the block removes the temporary ``tmp``; an OSError becomes one line naming ``path``."""
    try:
        yield
    except OSError as e:
        discard(tmp)
        raise os_error(path, e) from None
    except BaseException:
        discard(tmp)
        raise


def _commit(tmp: Path, path: Path) -> None:
    """The complete temporary takes its final name: its bytes reach the disk before the name does."""
    _fsync(tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(path: str | Path, root: str | Path | None = None):
    """Yield a temporary folder beside ``path`` to fill; on success it takes ``path``'s place (an
    existing folder there is replaced), on failure it is removed. Orphans are swept first."""
    path = Path(path)
    root = _root_of(path, root)
    make_dir(path.parent, root)
    contained(path, root)
    sweep_orphans(path)
    tmp = temp_name(path)
    with _temporary(tmp, path):
        tmp.mkdir()
        yield tmp
        install(tmp, path, root)  # an old folder there ends up at tmp (or tmp.old): removed below
        discard(tmp)
        discard(tmp.with_name(tmp.name + ".old"))


@contextlib.contextmanager
def flock(path: str | Path, busy: str, root: str | Path | None = None, where: str = "the folder"):
    """Hold an exclusive, non-blocking flock on ``path`` for the block; ``busy`` is the one-line
    message when another process holds it. A killed process releases it."""
    path = Path(path)
    root = path.parent if root is None else root
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(contained(path, root), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DgamixError(f"cannot write to {where} {path.parent} (creating {path}: {e.strerror or e}); check write "
                          f"permission and free disk space there. Nothing was changed.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DgamixError(busy) from None
        yield
    finally:
        os.close(fd)

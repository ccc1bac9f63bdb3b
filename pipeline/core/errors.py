"""The one exception type a user can cause, and how its messages name a setting. The CLI prints the
message without a traceback."""
from typing import Any


class DgamixError(Exception):
    """A problem with the user's input or workspace: the message names the file and the fix.

    Raised by every stage for errors a user can cause (missing column, corrupt manifest,
    dimension mismatch, ...). The CLI exits with code 2 and prints `error: <message>`.
    """


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``e``'s message (at most ``limit`` characters), else its type's name:
    how a one-line error quotes a library's exception, whose message may be empty or span lines."""
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(e).__name__


ALONE = object()  # a setting named without a value


def flag(param: str, value: Any = ALONE) -> str:
    """How the CLI names a setting in a message: ``--level``, ``--level 3``, ``--ema-beta 0.5``. A
    function that builds a message for both the CLI and Python callers takes ``name=flag`` (the
    Python API passes ``dgamix.mixing.inputs.keyword``: ``level=3``)."""
    name = "--" + param.replace("_", "-")
    return name if value is ALONE else f"{name} {value}"

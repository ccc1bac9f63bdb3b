"""The one exception type a user can cause. The CLI prints its message without a traceback."""


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

"""The one exception type a user can cause. The CLI prints its message without a traceback."""


class DgamixError(Exception):
    """A problem with the user's input or workspace: the message names the file and the fix.

    Raised by every stage for errors a user can cause (missing column, corrupt manifest,
    dimension mismatch, ...). The CLI exits with code 2 and prints `error: <message>`.
    """

"""The one exception type for errors a user can cause and fix."""


class WorkbenchError(Exception):
    """Bad data, bad config or a missing run: the message names the file and the fix.

    The CLI prints the message on one line and exits non-zero, without a traceback.
    """

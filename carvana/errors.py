"""The one exception type for errors a user can cause and fix."""


class WorkbenchError(Exception):
    """Bad data, bad config or a missing run: the message names the file and the fix.

    The CLI prints the message on one line and exits non-zero, without a traceback.
    """


def and_more(items: list) -> str:
    """` (and N more)` after naming the first of `items`, or nothing when it is the only one."""
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""

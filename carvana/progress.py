"""Progress bars that draw only on a terminal; in a log file or a pipe they print plain lines.

tqdm redraws its bar with carriage returns, which a log file keeps frame by frame. Off a terminal,
`progress_bar` writes one line when a stage starts, one every `LOG_INTERVAL_S` seconds, and one when
it ends. Every progress bar of the workbench comes from here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

__all__ = ["LOG_INTERVAL_S", "progress_bar"]

LOG_INTERVAL_S = 10.0
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class _LineWriter:
    """A file for tqdm that turns each redrawn frame into one line (blank and repeated frames dropped)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        for frame in text.replace("\n", "\r").split("\r"):
            frame = frame.rstrip()
            if frame and frame != self.last:
                self.stream.write(frame + "\n")
                self.last = frame

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(tqdm):
    """A tqdm whose postfix and description wait for the next line instead of printing one each
    (a training loop sets its loss every batch)."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        super().set_postfix_str(s, refresh=False)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        super().set_description(desc, refresh=False)

    def close(self) -> None:
        if not self.disable and self.last_print_n == self.n:  # the last line already says where it ended
            self.leave = False
        super().close()


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: float | None = None,
    desc: str | None = None,
    unit: str = "it",
    disable: bool = False,
    leave: bool = True,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar on stderr: drawn on a terminal, else logged as lines (see the module's docstring).

    Takes tqdm's arguments; `disable=True` shows nothing, `leave=False` clears the bar at its end
    (on a terminal only: a log keeps every stage's last line).
    """
    stream = sys.stderr
    if disable or _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave, file=stream, **kwargs)
    settings = {"mininterval": LOG_INTERVAL_S, "bar_format": LOG_FORMAT, "ascii": True, **kwargs}
    return _LogBar(
        iterable, total=total, desc=desc or "progress", unit=unit, leave=True, file=_LineWriter(stream), **settings
    )


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False

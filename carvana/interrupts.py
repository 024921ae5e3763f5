"""Ctrl-C for a command that starts worker processes: one line, exit 130, no worker tracebacks.

A terminal's Ctrl-C sends SIGINT to every process of its foreground group: the command and each worker it
started (joblib's loky processes, multiprocessing pools, Ray's local services, DataLoader workers). A worker
that sees it dies with its own traceback, often mid-import. `relay_interrupts()` blocks SIGINT in the main
thread, so every thread and process started afterwards inherits the block (a signal mask survives fork and exec)
and never sees the terminal's signal; the command stops its workers itself (pools terminate, joblib aborts, Ray
shuts down). The signal still reaches the command: the kernel hands it to a thread that does not block it, whose
C-level handler marks it for the main thread and writes its number to the wakeup pipe; a relay thread reading
that pipe sends the main thread SIGUSR1, which wakes a blocking call as SIGINT would, and the main thread runs
the SIGINT handler (KeyboardInterrupt by default). Where that KeyboardInterrupt is raised inside a finaliser
(Python prints "Exception ignored" and goes on), the `sys.unraisablehook` it sets delivers it to the main thread
again a moment later, so a Ctrl-C is never lost.

`quiet_optuna_interrupts()` drops Optuna's report of the trial a Ctrl-C ended (a traceback of the objective and
"failed with value None"): the command's one `interrupted` line says it.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator

__all__ = ["during_interrupt", "interrupts_deferred", "quiet_optuna_interrupts", "relay_interrupts"]

RELAY = signal.SIGUSR1  # how the relay thread wakes the main thread; no terminal sends it
QUIET_TRACKER = "ignore:resource_tracker:UserWarning"  # a warnings filter, as PYTHONWARNINGS takes it
REDELIVER_AFTER = 0.05  # seconds: a Ctrl-C lost in a finaliser is raised again this long after


def relay_interrupts() -> None:
    """Route SIGINT as the module docstring says. Call once, from the main thread, before any worker starts;
    a no-op where POSIX signal masks are missing."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return
    from multiprocessing import resource_tracker

    # Python 3.11's resource tracker lifts SIGINT's block in the thread that starts it (SIG_UNBLOCK, not the
    # previous mask): started now, before the block, it never starts later.
    resource_tracker.ensure_running()
    # joblib's own tracker (loky's, started later from this environment) removes the memmapping folder of a pool
    # that a Ctrl-C stopped mid-task and says so in a UserWarning after the command's `interrupted` line
    filters = [f for f in os.environ.get("PYTHONWARNINGS", "").split(",") if f and f != QUIET_TRACKER]
    os.environ["PYTHONWARNINGS"] = ",".join([*filters, QUIET_TRACKER])
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    signal.signal(RELAY, lambda signum, frame: None)  # only interrupts a blocking call; SIGINT's handler then runs
    main = threading.main_thread().ident
    # Started before the block, so the relay thread is one that the kernel may hand SIGINT to.
    threading.Thread(target=_relay, args=(read_end, main), name="sigint-relay", daemon=True).start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    sys.unraisablehook = _redeliver_interrupts(sys.unraisablehook)


def _redeliver_interrupts(previous):
    """An unraisablehook: a Ctrl-C whose KeyboardInterrupt was raised inside a finaliser or callback (Python
    prints "Exception ignored in" and goes on, so the command would finish as if never stopped) is delivered
    to the main thread again, to be raised in its next ordinary line; anything else goes to `previous`."""

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):  # once the hook has returned: raised in it, lost
            later = threading.Timer(REDELIVER_AFTER, _thread.interrupt_main, args=(signal.SIGINT,))
            later.daemon = True
            later.start()
        else:
            previous(unraisable)

    return hook


def _relay(read_end: int, main: int) -> None:
    while True:
        if signal.SIGINT in os.read(read_end, 64):
            signal.pthread_kill(main, RELAY)


def during_interrupt(error: BaseException) -> bool:
    """Whether `error` was raised while a KeyboardInterrupt unwound the stack (a library's cleanup failing
    under a Ctrl-C, e.g. Optuna's trial bookkeeping): then the Ctrl-C is what happened."""
    context = error.__context__
    while context is not None:
        if isinstance(context, KeyboardInterrupt):
            return True
        context = context.__context__
    return False


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A Ctrl-C during the block is raised when it ends: for starting a pool, whose workers, abandoned mid-start
    by an exiting parent, would each print a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


class _AfterInterrupt(logging.Filter):
    """Passes records until one carries a KeyboardInterrupt; drops that one and every later one."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.interrupted = True
        return not self.interrupted


def quiet_optuna_interrupts() -> None:
    """Install `_AfterInterrupt` on Optuna's log handlers (once): after a Ctrl-C ends a trial, Optuna's
    traceback and its "failed" lines are not printed (the trial is stored as failed, as before)."""
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _AfterInterrupt) for f in handler.filters):
            handler.addFilter(_AfterInterrupt())

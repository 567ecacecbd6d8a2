"""SIGHUP held from the start of a serving process until its handler is in.

SIGHUP asks chatd (and the gateway) to reload, but its default action ends
a process, and the handler is installed only once serving starts: by the
supervisor as its loop begins, by a single worker or the gateway when the
app starts, a second or more after the process began (imports, the
config, the providers opened). A SIGHUP in that window (``systemctl reload`` straight
after ``start`` in a script, a config tool that signals after each write)
ended the process. Blocked instead, it stays pending and is delivered the
moment ``release`` is called, just after the handler is installed: it
becomes a reload, which reads the newest file.

``hold`` is the first thing ``lakehouse.cli.main`` does; the interpreter's
start and that module's imports (~0.3 s) come before it and stay uncovered.
A blocked signal mask is inherited by threads and child processes: threads
started while it is held (the embedded stub) keep SIGHUP blocked, so the
kernel hands it to the main thread, where Python runs handlers; the
supervisor releases before it starts any worker.
"""

from __future__ import annotations

import signal

_SIGHUP = frozenset({signal.SIGHUP})


def hold() -> None:
    """Keep SIGHUP pending in this thread (and what it starts) from now."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGHUP)


def release() -> None:
    """Let SIGHUP through again: one that came while held arrives now, so
    call this once its handler is installed."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGHUP)

"""SIGHUP held, then released: in a process of its own, since the mask is
the process's (the test runner's must stay as it is)."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT

SCRIPT = """
import os, signal, threading
from lakehouse import reload_signal

heard = []
reload_signal.hold()
os.kill(os.getpid(), signal.SIGHUP)
# A thread started while held keeps it blocked, so it cannot take the
# signal (and its default action) from the main thread.
blocked = []
mask = lambda: blocked.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
thread = threading.Thread(target=mask)
thread.start()
thread.join()
print("pending", signal.SIGHUP in signal.sigpending())
print("thread holds", signal.SIGHUP in blocked[0])
signal.signal(signal.SIGHUP, lambda *_: heard.append(1))
print("heard before", len(heard))
reload_signal.release()
print("heard after", len(heard))
print("pending after", signal.SIGHUP in signal.sigpending())
"""


def test_a_held_sighup_waits_for_the_release_and_then_reaches_the_handler() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "pending True",
        "thread holds True",
        "heard before 0",
        "heard after 1",
        "pending after False",
    ]

"""One prober for a pool of workers.

N workers probing on their own would send N probes per interval to every
upstream. Instead the worker holding an exclusive ``flock`` on a file in
the pool's shared folder probes and writes the verdicts to a JSON file
there (replaced whole, so a reader never sees half of it); the others read
them. The kernel drops the lock with its holder, so when the probing
worker dies another takes over at its next turn.

Lock and verdicts belong to one generation of workers (``CHATD_GENERATION``,
which the supervisor raises at each SIGHUP roll): during a roll the old
workers drain on the old config, and a prober among them would probe the
old URLs; the new workers choose their own prober and follow only it.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
from collections.abc import Mapping
from typing import Any

# Set by lakehouse.supervisor for each worker it starts.
GENERATION = "CHATD_GENERATION"
LOCK_NAME = "probe.{}.lock"
VERDICTS_NAME = "probes.{}.json"

# provider name → {"ok": bool, "hosts": {host: bool}}
Verdicts = dict[str, dict[str, Any]]


def reset(folder: str) -> None:
    """Forget a previous run's verdicts (the pool's start-up calls this)."""
    for path in glob.glob(os.path.join(folder, VERDICTS_NAME.format("*"))):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


class ProbeShare:
    def __init__(self, folder: str, environ: Mapping[str, str] | None = None) -> None:
        self._folder = folder
        self._generation = (os.environ if environ is None else environ).get(GENERATION, "0")
        self._lock_fd: int | None = None

    def _path(self, name: str) -> str:
        return os.path.join(self._folder, name.format(self._generation))

    def lead(self) -> bool:
        """Whether this worker probes (taking the lock when it is free)."""
        if self._lock_fd is not None:
            return True
        fd = os.open(self._path(LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def publish(self, verdicts: Verdicts) -> None:
        path = self._path(VERDICTS_NAME)
        temp = f"{path}.{os.getpid()}"
        with open(temp, "w", encoding="utf-8") as out:
            json.dump(verdicts, out)
        os.replace(temp, path)

    def read(self) -> Verdicts | None:
        """The prober's last verdicts; None before its first."""
        try:
            with open(self._path(VERDICTS_NAME), encoding="utf-8") as src:
                data = json.load(src)
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def close(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

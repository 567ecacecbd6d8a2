"""The worker pool behind ``chatd --workers N``: N ``lakehouse.worker``
processes accepting on one listening socket this process holds.

Why not Hypercorn 0.18's runner: its parent ends the whole server when one
worker dies, stops every worker as soon as the first exits on SIGTERM, and
joins all old workers before starting new ones on SIGHUP. Why not gunicorn:
it has no maintained Hypercorn worker (h2c needs Hypercorn), and its HUP
stops old workers without waiting for the new ones to serve. Why not
instances of a systemd template unit (none is shipped): with SO_REUSEPORT
each owns an accept queue, and connections queued on one that stops are
reset, which one shared socket avoids; one ``.socket`` unit shared by the
instances would avoid that, but the pool must work where there is no
systemd (a container), and nothing there would drop a killed instance's
live gauges from the merged metrics.

What the pool promises:
- a worker that dies is replaced (same slot), the others keep serving;
  one that dies within ``STEADY`` seconds of its start is retried with a
  growing pause (a crash loop costs little CPU);
- SIGTERM/SIGINT: every worker drains for up to ``graceful_timeout``
  (each on its own; none is cut because another finished first);
- SIGHUP: workers are rolled one at a time: a new one is started, and
  only once it accepts is the old one told to drain. Connections arriving
  meanwhile wait in the shared socket's queue, never refused. New workers
  read the config file afresh, so this is also the pool's config reload.

Under systemd (``Type=notify``) this process speaks for the pool: READY=1
once every first worker serves, RELOADING=1 … READY=1 around a roll,
STOPPING=1 at SIGTERM. Workers are started without ``$NOTIFY_SOCKET``.

A little over 350 lines: one state machine (start, replace, roll, drain)
whose transitions read best together.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from lakehouse import probe_share, reload_signal, sd_notify
from lakehouse.metrics import forget_worker
from lakehouse.worker_limits import WORKER_COUNT, WORKER_INDEX

log = logging.getLogger("chatd.supervisor")

# Environment a worker reads (lakehouse.worker).
LISTEN_FD = "CHATD_LISTEN_FD"
READY_FD = "CHATD_READY_FD"
LIFELINE_FD = "CHATD_LIFELINE_FD"
APP_ENV = "CHATD_APP"

# A worker that dies within STEADY seconds of its start is restarted
# after this pause, doubled each time in a row, up to MAX_PAUSE: a broken
# config, or a crash on every start, must not spin a core. One that dies
# after serving longer is replaced at once, and the pause starts over.
FIRST_PAUSE = 0.5
MAX_PAUSE = 30.0
STEADY = 10.0
# Past graceful_timeout, how long a draining worker gets before SIGKILL.
KILL_MARGIN = 5.0


@dataclass(frozen=True)
class WorkerPlan:
    count: int
    app_path: str
    graceful_timeout: float
    # Seconds a new worker may take to start serving during a roll.
    start_timeout: float = 60.0


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes]
    ready_fd: int
    started: float
    ready: bool = False
    # The graceful timeout of the config it read (told when it serves).
    graceful_timeout: float | None = None
    # Told to drain (SIGTERM sent); no replacement when it exits.
    retiring: bool = False
    replaces: Worker | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class _Roll:
    """A SIGHUP in progress: the workers still to replace, in order."""

    pending: list[Worker] = field(default_factory=list)
    current: Worker | None = None  # the replacement being started
    active: bool = False
    # Another SIGHUP came meanwhile: workers already rolled may have read
    # the file before it changed, so roll them all again afterwards.
    again: bool = False


class Supervisor:
    def __init__(self, sock: socket.socket, plan: WorkerPlan) -> None:
        self.sock = sock
        self.plan = plan
        self.workers: list[Worker] = []
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        # Workers hold the read end: EOF there means this process is gone.
        self._lifeline_r, self._lifeline_w = os.pipe()
        self._signals: list[int] = []
        self._stopping = False
        self._stop_deadline = 0.0
        self._roll = _Roll()
        self._pause = FIRST_PAUSE
        self._respawn_at: dict[int, float] = {}
        self._served = False
        # Stopped because no worker could start (exit 1), not because asked.
        self._failed = False
        self._announced = False
        # Raised at each roll: workers of one generation share a prober.
        self._generation = 0

    # -- the loop -------------------------------------------------------

    def run(self) -> int:
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        previous = signal.set_wakeup_fd(self._wake_w)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        old = {sig: signal.signal(sig, self._note) for sig in handled}
        # A SIGHUP held while starting (lakehouse.reload_signal) goes unheard
        # (an ignored signal is discarded while pending): every worker starts
        # after it and reads the file as it is now. Released before any
        # worker starts, which would inherit the held mask.
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        reload_signal.release()
        signal.signal(signal.SIGHUP, self._note)
        try:
            for index in range(self.plan.count):
                self._spawn(index)
            while self.workers or not self._stopping:
                self._step()
            return 1 if self._failed else 0
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous)
            self._close()

    def _note(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _step(self) -> None:
        timeout = 1.0
        if self._respawn_at:
            timeout = max(0.0, min(timeout, min(self._respawn_at.values()) - time.monotonic()))
        for key, _ in self._selector.select(timeout):
            if key.fd == self._wake_r:
                _drain_pipe(self._wake_r)
            else:
                self._readied(key.fd)
        signals, self._signals = self._signals, []
        for signum in signals:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._stop()
            elif signum == signal.SIGHUP:
                self._start_roll()
        self._reap()
        self._advance_roll()
        self._respawn_due()
        if self._stopping and time.monotonic() > self._stop_deadline:
            for worker in self.workers:
                log.warning(
                    "worker outlived the graceful timeout; killed", extra={"pid": worker.pid}
                )
                worker.proc.kill()
            self._stop_deadline = float("inf")

    # -- workers --------------------------------------------------------

    def _spawn(self, index: int, replaces: Worker | None = None) -> Worker:
        ready_r, ready_w = os.pipe()
        fd = self.sock.fileno()
        env = {
            **{k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
            LISTEN_FD: str(fd),
            READY_FD: str(ready_w),
            LIFELINE_FD: str(self._lifeline_r),
            WORKER_INDEX: str(index),
            WORKER_COUNT: str(self.plan.count),
            probe_share.GENERATION: str(self._generation),
            APP_ENV: self.plan.app_path,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "lakehouse.worker"],
            env=env,
            pass_fds=(fd, ready_w, self._lifeline_r),
        )
        os.close(ready_w)
        worker = Worker(index, proc, ready_r, time.monotonic(), replaces=replaces)
        self._selector.register(ready_r, selectors.EVENT_READ)
        self.workers.append(worker)
        log.info("worker started", extra={"pid": proc.pid, "worker": index})
        return worker

    def _readied(self, fd: int) -> None:
        worker = next(w for w in self.workers if w.ready_fd == fd)
        # Its graceful timeout when serving; EOF (b"") if it died first
        # (_reap sees that).
        said = os.read(fd, 64)
        if said:
            worker.ready = True
            with contextlib.suppress(ValueError):
                worker.graceful_timeout = float(said)
            self._served = True
            log.info("worker serving", extra={"pid": worker.pid, "worker": worker.index})
            if not self._announced and sum(w.ready for w in self.workers) == self.plan.count:
                self._announced = True
                sd_notify.notify("READY=1")
        self._forget_fd(worker)

    def _forget_fd(self, worker: Worker) -> None:
        if worker.ready_fd >= 0:
            self._selector.unregister(worker.ready_fd)
            os.close(worker.ready_fd)
            worker.ready_fd = -1

    def _reap(self) -> None:
        for worker in [w for w in self.workers if w.proc.poll() is not None]:
            self.workers.remove(worker)
            self._forget_fd(worker)
            forget_worker(worker.pid)
            code = worker.proc.returncode
            if worker.retiring or self._stopping:
                log.info("worker exited", extra={"pid": worker.pid, "code": code})
                continue
            if worker is self._roll.current:
                log.error("reload abandoned: the new worker did not start", extra={"code": code})
                self._abandon_roll()
                continue
            log.error("worker died; replacing it", extra={"pid": worker.pid, "code": code})
            current = self._roll.current
            if current is not None and current.replaces is worker:
                continue  # its replacement is already starting
            if worker in self._roll.pending:
                self._roll.pending.remove(worker)  # the new one reads the new config
            if not worker.ready and not self._served:
                # Nothing ever served: a broken start, not a crash to ride out.
                log.error("worker failed to start; stopping")
                self._failed = True
                self._stop()
                continue
            if worker.ready and time.monotonic() - worker.started >= STEADY:
                self._pause = FIRST_PAUSE
                self._spawn(worker.index)
            else:
                self._respawn_at[worker.index] = time.monotonic() + self._pause
                self._pause = min(MAX_PAUSE, self._pause * 2)

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for index, when in list(self._respawn_at.items()):
            if when <= now and not self._stopping:
                del self._respawn_at[index]
                self._spawn(index)

    # -- SIGHUP: one worker at a time -------------------------------------

    def _start_roll(self) -> None:
        if self._stopping:
            return
        if self._roll.active:
            # Starting over now would replace the worker being started as
            # well as the one it replaces: one slot would keep two workers.
            log.info("reload asked for during a roll; rolling again after it")
            self._roll.again = True
            return
        log.info("rolling workers (SIGHUP)")
        sd_notify.notify(f"RELOADING=1\nMONOTONIC_USEC={sd_notify.monotonic_usec()}")
        self._generation += 1
        self._roll = _Roll(pending=self._serving(), active=True)

    def _serving(self) -> list[Worker]:
        return [w for w in self.workers if not w.retiring]

    def _abandon_roll(self) -> None:
        # The old workers serve on: the new generation has no members left.
        self._generation -= 1
        self._end_roll()

    def _end_roll(self) -> None:
        if self._roll.again:
            log.info("rolling workers again (SIGHUP during the roll)")
            self._generation += 1
            self._roll = _Roll(pending=self._serving(), active=True)
            self._advance_roll()
            return
        self._roll = _Roll()
        sd_notify.notify("READY=1")

    def _advance_roll(self) -> None:
        roll = self._roll
        if self._stopping:
            return
        current = roll.current
        if current is not None:
            if not current.ready:
                if time.monotonic() - current.started > self.plan.start_timeout:
                    log.error("reload abandoned: the new worker did not start in time")
                    self._retire(current)
                    self._abandon_roll()
                return
            if current.replaces is not None:
                self._retire(current.replaces)
            roll.current = None
        while roll.pending and roll.current is None:
            old = roll.pending.pop(0)
            if old in self.workers and not old.retiring:
                roll.current = self._spawn(old.index, replaces=old)
        if roll.active and roll.current is None:
            log.info("workers rolled")
            self._end_roll()

    def _retire(self, worker: Worker) -> None:
        worker.retiring = True
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)

    # -- SIGTERM ----------------------------------------------------------

    def _stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        sd_notify.notify("STOPPING=1")
        self._respawn_at.clear()
        self._roll = _Roll()
        graceful = max(
            [self.plan.graceful_timeout]
            + [w.graceful_timeout for w in self.workers if w.graceful_timeout is not None]
        )
        self._stop_deadline = time.monotonic() + graceful + KILL_MARGIN
        # Nothing will accept what queues here from now on: refuse it.
        self.sock.close()
        for worker in self.workers:
            self._retire(worker)
        log.info("draining workers", extra={"workers": len(self.workers)})

    def _close(self) -> None:
        for worker in self.workers:
            worker.proc.kill()
            worker.proc.wait()
        self.sock.close()
        self._selector.close()
        for fd in (self._wake_r, self._wake_w, self._lifeline_r, self._lifeline_w):
            os.close(fd)


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass

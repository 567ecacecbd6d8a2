"""Test helpers: ``chatd --workers N`` as a process, its workers, and the
traffic and scrapes tests run against it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from lakehouse.stubs import StubUpstream
from tests.support import ROOT
from tests.test_cli import clean_env, free_port


@dataclass
class Pool:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path
    metrics: Path

    def workers(self) -> set[int]:
        return children(self.proc.pid)


def children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return set()
    return {int(p) for p in text.split()}


def start_workers(
    tmp_path: Path, config_text: str, workers: int = 2, env: dict[str, str] | None = None
) -> Pool:
    """chatd with ``workers`` workers on a free port, once all serve; its
    metrics folder is under ``tmp_path``."""
    port = free_port()
    metrics = tmp_path / "metrics"
    config = tmp_path / "c.toml"
    config.write_text(config_text)
    log = tmp_path / "chatd.log"
    with log.open("wb") as out:
        # A file, not a pipe: a full pipe would stall the workers' logging.
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "lakehouse.cli", "--config", str(config)),
                *("--workers", str(workers), "--bind", f"127.0.0.1:{port}"),
                *("--set", f'chatd.server.metrics_dir="{metrics}"'),
            ],
            cwd=ROOT,
            env={**clean_env(), **(env or {})},
            stdout=out,
            stderr=out,
        )
    pool = Pool(proc, f"http://127.0.0.1:{port}", log, metrics)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        if served(pool.log) >= workers:
            return pool
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the workers did not start: " + log.read_text())


def served(log: Path) -> int:
    """Workers that reported serving, from the supervisor's log."""
    return log.read_text().count('"msg":"worker serving"')


async def until(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Poll a condition the test cannot await (another process's state)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - state in other processes
            await asyncio.sleep(0.05)


@pytest.fixture
def pools() -> Iterator[list[Pool]]:
    """Pools a test started; killed (workers too) if still running at the end."""
    started: list[Pool] = []
    yield started
    for pool in started:
        workers = pool.workers()
        if pool.proc.poll() is None:
            pool.proc.kill()
            pool.proc.wait(10)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def fresh_get(base: str, path: str) -> httpx.Response:
    """A GET on a new connection (so any worker may answer it)."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        return await client.get(path)


async def fresh_post(base: str, body: dict[str, object]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        return await client.post("/chat", json=body)


class PeakStub(StubUpstream):
    """A stub that also records the most chat calls it held at once."""

    now = 0
    peak = 0

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            return await super()._handle(request)
        finally:
            self.now -= 1

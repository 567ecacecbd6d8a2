"""One prober for a pool of workers."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from lakehouse import probe_share
from lakehouse.probe_share import ProbeShare
from lakehouse.stubs import Fault, StubUpstream
from tests.pool_support import PeakStub, Pool, fresh_get, fresh_post, served, start_workers, until
from tests.test_cli import GOOD


def test_one_leads_and_the_others_read_its_verdicts(tmp_path: Path) -> None:
    first, second = ProbeShare(str(tmp_path)), ProbeShare(str(tmp_path))
    assert second.read() is None
    assert first.lead() and first.lead()
    assert not second.lead()
    first.publish({"ollama": {"ok": False}})
    assert second.read() == {"ollama": {"ok": False}}
    first.close()  # as when the prober's process ends
    assert second.lead()
    second.close()
    probe_share.reset(str(tmp_path))  # a new pool starts with no verdicts
    assert second.read() is None


def test_each_generation_of_workers_has_its_own_prober(tmp_path: Path) -> None:
    old = ProbeShare(str(tmp_path), {probe_share.GENERATION: "0"})
    new = ProbeShare(str(tmp_path), {probe_share.GENERATION: "1"})
    assert old.lead() and new.lead()
    old.publish({"ollama": {"ok": False}})
    assert new.read() is None
    new.publish({"ollama": {"ok": True}})
    assert ProbeShare(str(tmp_path), {probe_share.GENERATION: "0"}).read() == {
        "ollama": {"ok": False}
    }
    old.close()
    new.close()
    probe_share.reset(str(tmp_path))
    assert new.read() is None and old.read() is None


class ProbeTimes(PeakStub):
    """Also records when each probe (GET /api/version) arrived."""

    probes: list[float]

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/api/version":
            self.probes = [*getattr(self, "probes", []), time.monotonic()]
        return await super()._handle(request)


@pytest.mark.anyio
async def test_two_workers_send_one_probe_per_interval(tmp_path: Path, pools: list[Pool]) -> None:
    stub = ProbeTimes("ollama")
    url = await stub.start()
    try:
        pool = await asyncio.to_thread(
            start_workers,
            tmp_path,
            f'[chatd]\nprobe_interval_secs = 0.5\n[chatd.providers.ollama]\nbase_url = "{url}"\n',
        )
        pools.append(pool)
        await until(lambda: len(getattr(stub, "probes", [])) >= 8)
    finally:
        await stub.stop()
    # One prober: probes at least an interval apart. Two would interleave,
    # every other gap at most half an interval.
    gaps = [b - a for a, b in zip(stub.probes, stub.probes[1:], strict=False)]
    assert min(gaps[:7]) >= 0.4, gaps


class GoingAway(ProbeTimes):
    """An upstream whose probes fail once ``leaving`` is set (its box is
    being retired), counting the failed probes."""

    leaving = False
    refused = 0

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/api/version" and self.leaving:
            self.refused += 1
            return web.Response(status=500)
        return await super()._handle(request)


def holders(port: int) -> set[int]:
    """Processes holding established connections accepted on ``port``."""
    shown = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", shown)}


@pytest.mark.anyio
async def test_after_a_reload_workers_follow_probes_of_their_own_config(
    tmp_path: Path, pools: list[Pool]
) -> None:
    """The operator moves Ollama to a new box and reloads. While the old
    workers drain long streams, one of them may still hold the prober's
    lock, probing the old box: its verdicts must not take the provider
    down on the new workers, which send to the new box."""
    old, new = GoingAway("ollama"), StubUpstream("ollama")
    old_url, new_url = await old.start(), await new.start()
    try:
        pool = await asyncio.to_thread(
            start_workers,
            tmp_path,
            "[chatd]\nprobe_interval_secs = 0.5\n[chatd.server]\ngraceful_timeout_secs = 60\n"
            f'[chatd.providers.ollama]\nbase_url = "{old_url}"\n',
        )
        pools.append(pool)
        first = pool.workers()
        port = int(pool.base.rsplit(":", 1)[1])
        # Long streams on both old workers, so whichever probes stays.
        old.fail_always(Fault(kind="stall", seconds=60, after=1))
        streams: list[asyncio.Task[None]] = []

        async def stream() -> None:
            async with (
                httpx.AsyncClient(base_url=pool.base, timeout=90) as own,
                own.stream("POST", "/chat", json={**GOOD, "stream": True}) as resp,
            ):
                async for _ in resp.aiter_lines():
                    pass

        while not first <= holders(port):
            assert len(streams) < 40, holders(port)
            streams.append(asyncio.create_task(stream()))
            opened = len(streams)
            await until(lambda n=opened: len(old.chats) >= n)
        old.leaving = True
        config = tmp_path / "c.toml"
        config.write_text(config.read_text().replace(old_url, new_url))
        pool.proc.send_signal(signal.SIGHUP)
        await until(lambda: served(pool.log) >= 4)
        assert first <= pool.workers()  # still draining
        # The old prober has failed the old box several times since.
        refused = old.refused
        await until(lambda: old.refused >= refused + 4)
        for _ in range(10):
            assert (await fresh_post(pool.base, GOOD)).status_code == 200
            listing = (await fresh_get(pool.base, "/chat/providers")).json()
            assert listing["providers"]["ollama"] is True
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    finally:
        await old.stop()
        await new.stop()

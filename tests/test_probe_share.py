"""One prober for a pool of workers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp import web

from lakehouse import probe_share
from lakehouse.probe_share import ProbeShare
from tests.pool_support import PeakStub, Pool, start_workers, until


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

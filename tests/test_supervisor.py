"""chatd --workers 2 as a supervised pool: a worker killed outright is
replaced while the other serves; SIGTERM drains every worker; SIGHUP rolls
them one at a time with the port accepting throughout."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from prometheus_client.parser import text_string_to_metric_families

from lakehouse import server
from lakehouse.stubs import Fault, StubUpstream
from tests.pool_support import Pool, fresh_get, fresh_post, served, start_workers, until
from tests.support import make_config
from tests.test_cli import GOOD

STREAM = {**GOOD, "stream": True}


def start_pool(tmp_path: Path, upstream: str) -> Pool:
    return start_workers(
        tmp_path,
        "[chatd]\nprobe_interval_secs = 0\n"
        "[chatd.server]\ngraceful_timeout_secs = 30\n"
        f'[chatd.providers.ollama]\nbase_url = "{upstream}"\n',
    )


@pytest.fixture
async def upstream() -> AsyncIterator[StubUpstream]:
    stub = StubUpstream("ollama")
    await stub.start()
    yield stub
    await stub.stop()


def requests_total(text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "chatd_requests":
            total += sum(s.value for s in family.samples if s.name == "chatd_requests_total")
    return total


# -- the relied-on Hypercorn behaviour ------------------------------------


@pytest.mark.anyio
async def test_hypercorn_awaits_the_shutdown_trigger_only_once_it_serves() -> None:
    """lakehouse.server reports a worker "serving" from inside its shutdown
    trigger; that is true only while Hypercorn 0.18 starts its listeners
    before awaiting the trigger. If it ever awaited it first, the request
    below would never be accepted."""

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] == "lifespan":
            message = await receive()  # type: ignore[operator]
            await send({"type": "lifespan.startup.complete"})  # type: ignore[operator]
            await receive()  # type: ignore[operator]
            await send({"type": "lifespan.shutdown.complete"})  # type: ignore[operator]
            assert message
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    sock = server.listening_socket("127.0.0.1:0", 16)
    port = sock.getsockname()[1]
    statuses: list[int] = []

    async def trigger() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            statuses.append((await client.get(f"http://127.0.0.1:{port}/")).status_code)

    h = HypercornConfig()
    h.bind = [f"fd://{sock.fileno()}"]
    await asyncio.wait_for(hypercorn_serve(app, h, shutdown_trigger=trigger), 30)  # type: ignore[arg-type]
    sock.detach()
    assert statuses == [204]


def test_listen_backlog_is_configurable_and_defaults_to_1024() -> None:
    assert make_config().chatd.server.backlog == 1024
    h = server.hypercorn_config(make_config(overrides={"chatd.server.backlog": 300}))
    assert h.backlog == 300
    with server.listening_socket("127.0.0.1:0", 1024) as sock:
        assert listen_queue(sock.getsockname()[1]) == 1024


def listen_queue(port: int) -> int:
    # For a listening socket, ss shows the accept queue's limit as Send-Q.
    shown = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(shown[2])


# -- the pool ---------------------------------------------------------------


@pytest.mark.anyio
async def test_a_killed_worker_costs_only_its_own_requests(
    tmp_path: Path, upstream: StubUpstream, pools: list[Pool]
) -> None:
    upstream.fail_always(Fault(kind="delay", seconds=0.2))
    pool = await asyncio.to_thread(start_pool, tmp_path, upstream.base_url)
    pools.append(pool)
    first = pool.workers()
    assert len(first) == 2
    assert listen_queue(int(pool.base.rsplit(":", 1)[1])) == 1024
    outcomes: list[tuple[float, bool]] = []
    scraped: list[float] = []
    running = True

    async def load() -> None:
        while running:
            started = time.monotonic()
            try:
                ok = (await fresh_post(pool.base, GOOD)).status_code == 200
            except httpx.HTTPError:
                ok = False
            outcomes.append((started, ok))

    scrape_failures: list[float] = []

    async def scrape() -> None:
        while running:
            started = time.monotonic()
            try:
                scraped.append(requests_total((await fresh_get(pool.base, "/metrics")).text))
            except httpx.HTTPError:
                scrape_failures.append(started)  # one the victim held
            await asyncio.sleep(0.1)

    clients = [asyncio.create_task(load()) for _ in range(6)]
    scraper = asyncio.create_task(scrape())
    await until(lambda: len(outcomes) >= 30)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    # A replacement starts, serves, and the survivor kept serving meanwhile.
    while served(pool.log) < 3:
        assert time.monotonic() - killed_at < 30, pool.log.read_text()
        await asyncio.sleep(0.05)
    replaced_at = time.monotonic()
    assert replaced_at - killed_at < 15
    await until(lambda: len([o for o in outcomes if o[0] > replaced_at]) >= 60)
    running = False
    await asyncio.gather(*clients, scraper)

    assert pool.proc.poll() is None
    now = pool.workers()
    assert len(now) == 2 and victim not in now and len(now & first) == 1
    failed = [started for started, ok in outcomes if not ok]
    # Only requests the victim held (at most one per client) failed, all
    # of them started before it died.
    assert len(failed) <= len(clients) and len(scrape_failures) <= 1
    assert all(started <= killed_at for started in failed + scrape_failures)
    assert sum(ok for started, ok in outcomes if started > killed_at) > 60
    # The victim's counts stay in the totals: no counter goes back.
    assert scraped == sorted(scraped)
    final = requests_total((await fresh_get(pool.base, "/metrics")).text)
    assert final == sum(ok for _, ok in outcomes)


@pytest.mark.anyio
async def test_sigterm_drains_every_worker(
    tmp_path: Path, upstream: StubUpstream, pools: list[Pool]
) -> None:
    pool = await asyncio.to_thread(start_pool, tmp_path, upstream.base_url)
    pools.append(pool)

    async def stream(client: httpx.AsyncClient, begun: asyncio.Event) -> list[dict[str, object]]:
        async with client.stream("POST", "/chat", json=STREAM) as resp:
            lines = []
            async for line in resp.aiter_lines():
                lines.append(json.loads(line))
                begun.set()
            return lines

    # Streams of different lengths (1 to 4.5 s) on their own connections,
    # however they fall, leave one worker done well before the other (or
    # idle): the one that finishes first must not cut the rest. (HTTP/1.1:
    # httpx fails every h2 stream on a graceful GOAWAY.)
    client = httpx.AsyncClient(base_url=pool.base, timeout=60)
    tasks = []
    for i in range(6):
        upstream.fail_next(Fault(kind="stall", seconds=1 + 0.7 * i, after=1))
        begun = asyncio.Event()
        tasks.append(asyncio.create_task(stream(client, begun)))
        await asyncio.wait_for(begun.wait(), 30)
    pool.proc.send_signal(signal.SIGTERM)
    answers = await asyncio.gather(*tasks)
    await client.aclose()
    for lines in answers:
        assert lines[-1].get("done") is True, lines
    assert await asyncio.to_thread(pool.proc.wait, 30) == 0
    with pytest.raises(httpx.ConnectError):
        await fresh_get(pool.base, "/health")


@pytest.mark.anyio
async def test_sighup_rolls_workers_with_the_port_accepting(
    tmp_path: Path, upstream: StubUpstream, pools: list[Pool]
) -> None:
    pool = await asyncio.to_thread(start_pool, tmp_path, upstream.base_url)
    pools.append(pool)
    first = pool.workers()
    upstream.fail_always(Fault(kind="stall", seconds=8, after=1))

    async def stream() -> dict[str, object]:
        async with (
            httpx.AsyncClient(base_url=pool.base, timeout=60) as client,
            client.stream("POST", "/chat", json=STREAM) as resp,
        ):
            last: dict[str, object] = {}
            async for line in resp.aiter_lines():
                last = json.loads(line)
            return last

    streams = [asyncio.create_task(stream()) for _ in range(6)]
    await until(lambda: len(upstream.chats) >= 6)
    latencies: list[float] = []
    pool.proc.send_signal(signal.SIGHUP)
    # New connections through the whole roll, until both old workers,
    # draining their streams, are gone.
    port = int(pool.base.rsplit(":", 1)[1])
    while first & pool.workers() or served(pool.log) < 4:
        # Connect, ask, read the answer to its end (the server closes).
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
        latencies.append(time.perf_counter() - started)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        await asyncio.sleep(0.02)
    finished = await asyncio.gather(*streams)
    assert all(last.get("done") is True for last in finished)
    assert len(pool.workers()) == 2 and not first & pool.workers()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert len(latencies) > 50
    assert p99 < 0.1, (p99, latencies[-5:])


@pytest.mark.anyio
async def test_workers_leave_when_the_supervisor_is_killed(
    tmp_path: Path, upstream: StubUpstream, pools: list[Pool]
) -> None:
    pool = await asyncio.to_thread(start_pool, tmp_path, upstream.base_url)
    pools.append(pool)
    workers = pool.workers()
    pool.proc.kill()
    pool.proc.wait(10)

    def gone(pid: int) -> bool:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
        return "\nState:\tZ" in status  # exited, not yet reaped by its new parent

    # Their lifeline pipe reads EOF: they drain (nothing in flight) and exit.
    await until(lambda: all(gone(pid) for pid in workers), timeout=30)
    with pytest.raises(httpx.ConnectError):
        await fresh_get(pool.base, "/health")


@pytest.mark.anyio
async def test_a_roll_onto_a_broken_config_is_abandoned(
    tmp_path: Path, upstream: StubUpstream, pools: list[Pool]
) -> None:
    pool = await asyncio.to_thread(start_pool, tmp_path, upstream.base_url)
    pools.append(pool)
    first = pool.workers()
    config = tmp_path / "c.toml"
    config.write_text(config.read_text() + "[chatd]\ntimeout_sec = 1\n")
    pool.proc.send_signal(signal.SIGHUP)
    await until(lambda: "reload abandoned" in pool.log.read_text())
    assert "chatd worker: config error:" in pool.log.read_text()
    # The old workers never stopped serving.
    assert pool.workers() == first
    assert (await fresh_post(pool.base, GOOD)).status_code == 200

"""/metrics, request IDs, Server-Timing, access logs and health probes,
through a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lakehouse.logs import JSONFormatter
from lakehouse.stubs import Fault, StubUpstream
from tests.pool_support import Pool, fresh_get, fresh_post, start_workers
from tests.support import eventually, make_config, provider_table, running_chatd
from tests.test_cli import start

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "secret prompt text"}]
GOOD = {"model": "qwen3.5:latest", "messages": HELLO}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scraped: dict[Any, float], name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def chat_requests(
    scraped: dict[Any, float], status: int, provider: str = "ollama", tier: str = ""
) -> float:
    """chatd_requests_total on /chat for one provider, tier and status."""
    labels = {"route": "chat", "provider": provider, "tier": tier, "status": str(status)}
    return value(scraped, "chatd_requests_total", **labels)


def server_timing(resp: httpx.Response) -> dict[str, str]:
    return dict(part.strip().split(";dur=") for part in resp.headers["server-timing"].split(","))


def access_lines(err: str) -> list[dict[str, Any]]:
    """The access log's lines in what chatd wrote to stderr."""
    return [json.loads(line) for line in err.splitlines() if '"chatd.access"' in line]


@contextlib.contextmanager
def access_logged() -> Iterator[None]:
    access = logging.getLogger("chatd.access")
    access.setLevel(logging.INFO)
    try:
        yield
    finally:
        access.setLevel(logging.NOTSET)


@contextlib.asynccontextmanager
async def chatd_on_a_stub(
    text: str = "", probe_interval: float = 0, **table: Any
) -> AsyncIterator[tuple[str, StubUpstream]]:
    """chatd on 127.0.0.1 (config ``text``) in front of one Ollama stub
    (``table``: more of its provider table); its base URL, and the stub."""
    stub = StubUpstream("ollama")
    url = await stub.start()
    overrides = {
        **provider_table("ollama", url, **table),
        "chatd.probe_interval_secs": probe_interval,
    }
    try:
        async with running_chatd(make_config(text, overrides=overrides)) as base:
            yield base, stub
    finally:
        await stub.stop()


@contextlib.contextmanager
def two_workers(tmp_path: Path, probe_interval: float) -> Iterator[tuple[Any, Any]]:
    """``chatd --workers 2`` in front of an Ollama stub on a thread of its
    own, its metrics under ``tmp_path / "m"``; the server and the stub."""
    from lakehouse.stubs import StubThread

    upstream = StubThread("ollama")
    url = upstream.start()
    path = tmp_path / "c.toml"
    path.write_text(
        f"[chatd]\nprobe_interval_secs = {probe_interval}\n"
        f'[chatd.server]\nmetrics_dir = "{tmp_path / "m"}"\n'
        f'[chatd.providers.ollama]\nbase_url = "{url}"\n'
    )
    server = start(["--config", str(path), "--workers", "2"])
    try:
        yield server, upstream
    finally:
        server.proc.terminate()
        server.proc.wait(30)
        upstream.stop()


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, StubUpstream]]:
    async with chatd_on_a_stub('[models]\nlocal_fast = "qwen3.5:latest"\n') as world:
        yield world


async def test_metrics_after_known_traffic(served: tuple[str, StubUpstream]) -> None:
    base, stub = served
    async with httpx.AsyncClient(base_url=base) as client:
        for _ in range(3):
            assert (await client.post("/chat", json=GOOD)).status_code == 200
        assert (
            await client.post("/v1/chat", json={**GOOD, "model": "local_fast"})
        ).status_code == 200
        assert (await client.post("/chat", json={"messages": HELLO})).status_code == 400
        # Retried once (the default), so it must fail twice to reach the caller.
        stub.fail_next(Fault(kind="status", status=500, message="runner crashed"), times=2)
        assert (await client.post("/chat", json=GOOD)).status_code == 502
        assert (await client.post("/chat", json={**GOOD, "model": "x:cloud"})).status_code == 404
        resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    scraped = samples(resp.text)
    assert chat_requests(scraped, 200) == 3
    assert chat_requests(scraped, 200, tier="local_fast") == 1
    assert chat_requests(scraped, 400, provider="") == 1
    assert chat_requests(scraped, 502) == 1
    assert chat_requests(scraped, 404, provider="") == 1
    # Two failed calls (the first try and its retry), one failed request.
    assert (
        value(scraped, "chatd_upstream_errors_total", provider="ollama", code="upstream_error") == 2
    )
    assert value(scraped, "chatd_retries_total", provider="ollama", code="upstream_error") == 1
    assert value(scraped, "chatd_provider_available", provider="ollama") == 1
    assert value(scraped, "chatd_provider_queue_depth", provider="ollama") == 0
    assert value(scraped, "chatd_provider_rejections_total", provider="ollama") == 0
    assert value(scraped, "chatd_upstream_duration_seconds_count", provider="ollama") == 5
    assert (
        value(scraped, "chatd_upstream_duration_seconds_bucket", provider="ollama", le="600.0") == 5
    )
    assert value(scraped, "chatd_overhead_seconds_count", route="chat") == 7
    # Sub-millisecond buckets, and every request in the last one.
    assert value(scraped, "chatd_overhead_seconds_bucket", route="chat", le="0.0001") <= 7
    assert value(scraped, "chatd_overhead_seconds_bucket", route="chat", le="+Inf") == 7
    tokens = [r.json for r in stub.received if r.path == "/api/chat"]
    assert len(tokens) == 6
    assert value(scraped, "chatd_tokens_total", provider="ollama", kind="prompt") > 0
    assert value(scraped, "chatd_tokens_total", provider="ollama", kind="completion") > 0
    assert value(scraped, "chatd_in_flight_requests") == 0
    # The caller's raw model name is never a label.
    assert "qwen3.5" not in resp.text and "x:cloud" not in resp.text


async def test_request_ids_and_server_timing(served: tuple[str, StubUpstream]) -> None:
    base, stub = served
    async with httpx.AsyncClient(base_url=base) as client:
        resp = await client.post("/chat", json=GOOD, headers={"X-Request-ID": "job-42.step-7"})
        assert resp.headers["x-request-id"] == "job-42.step-7"
        assert stub.received[-1].headers["x-request-id"] == "job-42.step-7"
        timing = server_timing(resp)
        assert set(timing) == {"upstream", "chatd"}
        assert float(timing["upstream"]) > 0 and float(timing["chatd"]) >= 0

        minted = (await client.post("/chat", json=GOOD)).headers["x-request-id"]
        assert len(minted) == 16 and stub.received[-1].headers["x-request-id"] == minted

        bad = await client.post("/chat", json=GOOD, headers={"X-Request-ID": "no spaces\tplease"})
        assert bad.headers["x-request-id"] != "no spaces\tplease"

        for resp in (
            await client.post("/chat", json={}),
            await client.get("/chat/providers"),
            await client.get("/nowhere"),
            await client.get("/health"),
        ):
            assert resp.headers["x-request-id"]
        resp = await client.get("/health", headers={"X-Request-ID": "abc"})
        assert resp.headers["x-request-id"] == "abc"


async def test_one_access_log_line_per_request(capfd: pytest.CaptureFixture[str]) -> None:
    with access_logged():
        async with chatd_on_a_stub() as (base, _), httpx.AsyncClient(base_url=base) as client:
            await client.post(
                "/chat",
                json=GOOD,
                headers={"X-Request-ID": "rid-1", "Authorization": "Bearer caller-secret"},
            )
            await client.post(
                "/chat", json={**GOOD, "model": "nope:cloud"}, headers={"X-Request-ID": "rid-2"}
            )
    err = capfd.readouterr().err
    lines = access_lines(err)
    assert len(lines) == 2, err
    ok, missing = lines
    assert (ok["level"], ok["msg"]) == ("info", "request")
    assert ok["ts"].endswith("Z")
    assert ok["request_id"] == "rid-1" and missing["request_id"] == "rid-2"
    assert (ok["route"], ok["model"], ok["provider"], ok["status"]) == (
        "/chat",
        "qwen3.5:latest",
        "ollama",
        200,
    )
    assert ok["upstream_ms"] > 0 and ok["overhead_ms"] >= 0
    assert ok["prompt_tokens"] > 0 and ok["completion_tokens"] > 0
    assert (missing["status"], missing["error"]) == (404, "provider_not_found")
    assert "secret prompt text" not in err and "caller-secret" not in err


def test_json_formatter_carries_extra_fields_and_the_request_id() -> None:
    from lakehouse import request_id

    record = logging.LogRecord(
        "chatd", logging.WARNING, __file__, 1, "probe failed %s", ("x",), None
    )
    record.provider = "ollama"
    token = request_id.current.set("rid-9")
    try:
        line = json.loads(JSONFormatter().format(record))
    finally:
        request_id.current.reset(token)
    assert line["msg"] == "probe failed x" and line["level"] == "warning"
    assert (line["provider"], line["request_id"]) == ("ollama", "rid-9")


async def test_in_flight_counts_the_requests_being_served() -> None:
    async with chatd_on_a_stub() as (base, stub), httpx.AsyncClient(base_url=base) as client:
        stub.fail_next(Fault(kind="delay", seconds=3))

        async def in_flight() -> float:
            scraped = samples((await client.get("/metrics")).text)
            return value(scraped, "chatd_in_flight_requests")

        held = asyncio.create_task(client.post("/chat", json=GOOD, timeout=30))
        await eventually(lambda: len(stub.chats) == 1)
        assert await in_flight() == 1
        assert (await held).status_code == 200
        assert await in_flight() == 0


async def test_probe_flips_availability() -> None:
    async with (
        chatd_on_a_stub(probe_interval=0.2) as (base, stub),
        httpx.AsyncClient(base_url=base) as client,
    ):

        async def listed() -> bool:
            return bool((await client.get("/chat/providers")).json()["providers"]["ollama"])

        async def not_listed() -> bool:
            return not await listed()

        assert await listed()
        stub.set_down(True)
        await eventually(not_listed, what="probe marks it down")
        assert not await listed()
        resp = await client.post("/chat", json=GOOD)
        assert (resp.status_code, resp.json()["error"]["code"]) == (503, "provider_unavailable")
        scraped = samples((await client.get("/metrics")).text)
        assert value(scraped, "chatd_provider_available", provider="ollama") == 0
        stub.set_down(False)
        await eventually(listed, what="probe marks it up")
        assert (await client.post("/chat", json=GOOD)).status_code == 200


def test_two_workers_merge_their_metrics(tmp_path: Path) -> None:
    with (
        two_workers(tmp_path, probe_interval=0) as (server, upstream),
        httpx.Client(base_url=server.base) as client,
    ):
        pids = set()
        for _ in range(40):
            # New connections, so both workers get some of the traffic.
            resp = httpx.post(server.base + "/chat", json=GOOD)
            assert resp.status_code == 200
        for _ in range(5):
            # Whichever worker answers the scrape reports all of them.
            scraped = samples(client.get("/metrics").text)
            assert chat_requests(scraped, 200) == 40
            assert value(scraped, "chatd_upstream_duration_seconds_count", provider="ollama") == 40
            assert value(scraped, "chatd_overhead_seconds_count", route="chat") == 40
            assert value(scraped, "chatd_tokens_total", provider="ollama", kind="completion") > 0
            assert value(scraped, "chatd_in_flight_requests") == 0
            assert value(scraped, "chatd_provider_available", provider="ollama") == 1
        pids = {f.name for f in (tmp_path / "m").iterdir()}
        # A request held upstream is in flight whichever worker serves it
        # and whichever answers the scrape (livesum over the workers).
        upstream.stub.fail_next(Fault(kind="delay", seconds=3))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(httpx.post, server.base + "/chat", json=GOOD, timeout=30)
            deadline = time.monotonic() + 30
            while len(upstream.stub.chats) < 41:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            for _ in range(5):
                scraped = samples(httpx.get(server.base + "/metrics").text)
                assert value(scraped, "chatd_in_flight_requests") == 1
            assert held.result().status_code == 200
        scraped = samples(client.get("/metrics").text)
        assert value(scraped, "chatd_in_flight_requests") == 0
    assert len({name.rsplit("_", 1)[-1] for name in pids if name.startswith("counter")}) == 2


async def wait_for(check: Any, what: str) -> None:
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_in_flight_gauge_follows_requests_being_served(
    served: tuple[str, StubUpstream],
) -> None:
    base, stub = served
    stub.fail_next(Fault(kind="delay", seconds=3), times=2)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def in_flight() -> float:
            return value(samples((await client.get("/metrics")).text), "chatd_in_flight_requests")

        held = [
            asyncio.create_task(client.post("/chat", json=GOOD)),
            asyncio.create_task(client.post("/v1/chat/completions", json={**GOOD, "stream": True})),
        ]

        async def both_upstream() -> bool:
            return len(stub.chats) >= 2

        await wait_for(both_upstream, "both requests to reach the upstream")
        assert await in_flight() == 2
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]

        async def drained() -> bool:
            return await in_flight() == 0

        await wait_for(drained, "the gauge to come back to 0")


async def test_waits_are_their_own_histogram_not_overhead(
    capfd: pytest.CaptureFixture[str],
) -> None:
    throttled = Fault(kind="status", status=429, message="slow down", retry_after="2")
    with access_logged():
        async with (
            chatd_on_a_stub() as (base, stub),
            httpx.AsyncClient(base_url=base, timeout=30) as client,
        ):
            stub.fail_next(throttled)
            plain = await client.post("/chat", json=GOOD)
            stub.fail_next(throttled)
            streamed = await client.post("/chat", json={**GOOD, "stream": True})
            scraped = samples((await client.get("/metrics")).text)
    assert (plain.status_code, streamed.status_code) == (200, 200)
    assert value(scraped, "chatd_wait_seconds_count", reason="retry_after") == 2
    assert value(scraped, "chatd_wait_seconds_sum", reason="retry_after") >= 3.9
    # The 4 s of Retry-After are waits, not chatd's own time.
    assert value(scraped, "chatd_overhead_seconds_count", route="chat") == 2
    assert value(scraped, "chatd_overhead_seconds_sum", route="chat") < 1.5
    timing = server_timing(plain)
    assert float(timing["wait"]) >= 1900 and float(timing["chatd"]) < 1000
    lines = access_lines(capfd.readouterr().err)
    assert [line["status"] for line in lines] == [200, 200]
    for line in lines:
        assert line["wait_ms"] >= 1900 and line["overhead_ms"] < 1000


async def test_queueing_for_a_slot_is_a_wait() -> None:
    async with (
        chatd_on_a_stub(max_concurrency=1) as (base, stub),
        httpx.AsyncClient(base_url=base, timeout=30) as client,
    ):
        stub.fail_next(Fault(kind="delay", seconds=1.5))
        first = asyncio.create_task(client.post("/chat", json=GOOD))

        async def upstream_busy() -> bool:
            return len(stub.chats) >= 1

        await wait_for(upstream_busy, "the first call to reach the upstream")
        second = await client.post("/chat", json=GOOD)
        assert ((await first).status_code, second.status_code) == (200, 200)
        scraped = samples((await client.get("/metrics")).text)
    assert value(scraped, "chatd_wait_seconds_count", reason="queue") == 1
    assert value(scraped, "chatd_wait_seconds_sum", reason="queue") > 0.5
    assert value(scraped, "chatd_overhead_seconds_sum", route="chat") < 1.0


async def test_a_down_provider_is_logged_once_and_probe_failures_only_at_debug() -> None:
    from tests.test_health import Records

    records = Records()
    logger = logging.getLogger("chatd")
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    try:
        async with (
            chatd_on_a_stub(probe_interval=0.05) as (base, stub),
            httpx.AsyncClient(base_url=base) as client,
        ):

            async def probes() -> int:
                return len([r for r in stub.received if r.path == "/api/version"])

            async def listed() -> bool:
                return bool((await client.get("/chat/providers")).json()["providers"]["ollama"])

            stub.set_down(True)
            seen = await probes()

            async def many_probes_failed() -> bool:
                return await probes() >= seen + 5 and not await listed()

            await wait_for(many_probes_failed, "five failed probes")
            stub.set_down(False)
            await wait_for(listed, "the provider to come back")
    finally:
        logger.removeHandler(records)
        logger.setLevel(logging.NOTSET)
    [down] = records.said("provider down")
    assert down.reason.startswith("probe ")  # type: ignore[attr-defined]
    [up] = records.said("provider up")
    assert up.reason == "probe succeeded"  # type: ignore[attr-defined]
    failed = records.said("probe failed")
    assert all(r.levelno == logging.DEBUG for r in failed)


async def test_access_line_of_a_failed_request_carries_the_upstreams_message(
    capfd: pytest.CaptureFixture[str],
) -> None:
    crashed = Fault(kind="status", status=500, message="model runner has crashed")
    with access_logged():
        async with chatd_on_a_stub() as (base, stub), httpx.AsyncClient(base_url=base) as client:
            stub.fail_next(crashed, times=2)
            assert (await client.post("/chat", json=GOOD)).status_code == 502
    [line] = access_lines(capfd.readouterr().err)
    assert (line["status"], line["error"]) == (502, "upstream_error")
    assert "model runner has crashed" in line["message"]


async def test_two_workers_every_family_is_the_whole_instance(
    tmp_path: Path, pools: list[Pool]
) -> None:
    """Traffic with rejections and a provider going down through 2 workers;
    then every one of 30 scrapes over fresh connections (any worker may
    answer each) shows the same series, equal to the traffic sent."""
    stubs = {name: StubUpstream("ollama") for name in ("ollama", "slow", "flaky")}
    urls = {name: await stub.start() for name, stub in stubs.items()}
    stubs["slow"].fail_always(Fault(kind="delay", seconds=2))
    tables = "".join(
        f'[chatd.providers.{name}]\nplugin = "ollama"\nbase_url = "{url}"\n'
        for name, url in urls.items()
    )
    # `slow` has two slots for the instance (one per worker), none waiting.
    tables = tables.replace(
        f'base_url = "{urls["slow"]}"\n',
        f'base_url = "{urls["slow"]}"\nmax_concurrency = 2\nmax_queue = 0\n',
    )
    pool = await asyncio.to_thread(
        start_workers,
        tmp_path,
        "[chatd]\nprobe_interval_secs = 0.5\nfailure_threshold = 2\ncooldown_secs = 600\n"
        "[chatd.retry]\nattempts = 0\n" + tables,
    )
    pools.append(pool)
    try:
        sent: Counter[tuple[str, int]] = Counter()
        codes: Counter[tuple[str, str]] = Counter()

        async def chat(provider: str) -> None:
            model = "qwen3.5:latest" if provider == "ollama" else f"{provider}/qwen3.5:latest"
            resp = await fresh_post(pool.base, {"model": model, "messages": HELLO})
            sent[provider, resp.status_code] += 1
            if resp.status_code != 200:
                codes[provider, resp.json()["error"]["code"]] += 1

        for _ in range(6):
            await asyncio.gather(*(chat("ollama") for _ in range(5)))
        await asyncio.gather(*(chat("slow") for _ in range(12)))
        stubs["flaky"].set_down(True)
        for _ in range(6):
            await chat("flaky")

        async def scrape() -> dict[Any, float]:
            return samples((await fresh_get(pool.base, "/metrics")).text)

        assert sent["ollama", 200] == 30
        assert codes["slow", "overloaded"] >= 8  # 12 at once, 2 slots
        # Wait for the prober's verdict and every worker's published share
        # (another worker's live state is up to a second old).
        async with asyncio.timeout(30):
            while True:
                now = await scrape()
                if (
                    value(now, "chatd_provider_available", provider="flaky") == 0
                    and value(now, "chatd_provider_rejections_total", provider="slow")
                    == codes["slow", "overloaded"]
                    and not any(
                        v for k, v in now.items() if k[0] == "chatd_provider_calls_in_flight"
                    )
                ):
                    break
                await asyncio.sleep(0.2)
        scrapes = [await scrape() for _ in range(30)]
    finally:
        for stub in stubs.values():
            await stub.stop()
    first = scrapes[0]
    for scraped in scrapes:
        assert scraped == first
    for (provider, status), count in sent.items():
        assert chat_requests(first, status, provider) == count
    requests = [k for k in first if k[0] == "chatd_requests_total"]
    assert sum(first[k] for k in requests) == sum(sent.values()) == 48
    for (provider, code), count in codes.items():
        # Upstream errors are failed upstream calls: a request refused before
        # any call (overloaded, provider_unavailable) made none.
        called = code not in ("overloaded", "provider_unavailable")
        expected = count if called else 0
        assert value(first, "chatd_upstream_errors_total", provider=provider, code=code) == expected
    assert (
        value(first, "chatd_provider_rejections_total", provider="slow")
        == codes["slow", "overloaded"]
    )
    assert value(first, "chatd_upstream_duration_seconds_count", provider="ollama") == 30
    assert value(first, "chatd_overhead_seconds_count", route="chat") == 48
    for provider, up in (("ollama", 1), ("slow", 1), ("flaky", 0)):
        assert value(first, "chatd_provider_available", provider=provider) == up
        assert value(first, "chatd_provider_calls_in_flight", provider=provider) == 0
        assert value(first, "chatd_provider_queue_depth", provider=provider) == 0
    assert value(first, "chatd_in_flight_requests") == 0
    # Both workers served (each wrote its own counter file).
    pids = {
        f.name.rsplit("_", 1)[-1] for f in pool.metrics.iterdir() if f.name.startswith("counter")
    }
    assert len(pids) == 2


def test_two_workers_log_a_provider_going_down_and_up_once(tmp_path: Path) -> None:
    def listed(base: str, up: bool) -> None:
        deadline = time.monotonic() + 30
        # Fresh connections, so both workers answer some of these.
        while any(
            httpx.get(base + "/chat/providers").json()["providers"]["ollama"] != up
            for _ in range(6)
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)

    with two_workers(tmp_path, probe_interval=0.1) as (server, upstream):
        upstream.stub.set_down(True)
        listed(server.base, False)
        time.sleep(1)  # ten more failed probes: none may log again
        upstream.stub.set_down(False)
        listed(server.base, True)
    assert server.proc.stderr is not None
    logged = [
        json.loads(line)
        for line in server.proc.stderr.read().decode().splitlines()
        if line.startswith("{")
    ]
    down = [line for line in logged if line["msg"] == "provider down"]
    up = [line for line in logged if line["msg"] == "provider up"]
    assert len(down) == 1 and down[0]["reason"].startswith("probe ")
    assert len(up) == 1 and up[0]["reason"] == "probe succeeded"
    assert not [line for line in logged if line["msg"] == "probe failed"]

"""Hypercorn's connections as chatd runs them: the keep-alive idle timer
through the real server on raw sockets, and coalesced writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypercorn.asyncio import tcp_server
from hypercorn.events import Closed, RawData

from lakehouse.callers.web import create_app
from lakehouse.config import Config
from lakehouse.connections import IdleWatch, corked
from lakehouse.server import bound_socket, serve, tune_connections
from lakehouse.stubs import Fault, StubUpstream
from tests.support import _wait_ready, make_config, provider_table, running_chatd

pytestmark = pytest.mark.anyio

BODY = b'{"model":"qwen3.5:latest","messages":[{"role":"user","content":"hi"}]}'
REQUEST = (
    b"POST /chat HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)
KEEP_ALIVE = 1.0


@pytest.fixture
async def stub() -> AsyncIterator[StubUpstream]:
    stub = StubUpstream("ollama")
    await stub.start()
    try:
        yield stub
    finally:
        await stub.stop()


def config_for(stub: StubUpstream) -> Config:
    return make_config(
        overrides={
            **provider_table("ollama", stub.base_url),
            "chatd.probe_interval_secs": 0,
            "chatd.server.keep_alive_secs": KEEP_ALIVE,
        }
    )


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One request on an open connection; the response's head and body."""
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


async def connect(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def test_idle_connection_closes_after_keep_alive(stub: StubUpstream) -> None:
    async with running_chatd(config_for(stub)) as base:
        reader, writer = await connect(base)
        for _ in range(3):
            assert b" 200 " in await exchange(reader, writer)
        idle_from = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        idle_for = time.monotonic() - idle_from
        writer.close()
        assert KEEP_ALIVE * 0.9 <= idle_for < KEEP_ALIVE * 1.6


async def test_each_request_restarts_the_idle_clock(stub: StubUpstream) -> None:
    async with running_chatd(config_for(stub)) as base:
        reader, writer = await connect(base)
        # Requests spaced at 2/3 of the keep-alive span keep the connection
        # open well past it.
        for _ in range(5):
            assert b" 200 " in await exchange(reader, writer)
            await asyncio.sleep(KEEP_ALIVE * 2 / 3)
        assert b" 200 " in await exchange(reader, writer)
        writer.close()


async def test_a_request_longer_than_keep_alive_is_not_cut(stub: StubUpstream) -> None:
    stub.fail_next(Fault(kind="delay", seconds=KEEP_ALIVE * 2.5))
    async with running_chatd(config_for(stub)) as base:
        reader, writer = await connect(base)
        answer = await asyncio.wait_for(exchange(reader, writer), 10)
        assert b" 200 " in answer and b'"content"' in answer
        writer.close()


async def test_shutdown_closes_idle_connections_at_once(stub: StubUpstream) -> None:
    config = make_config(
        overrides={
            **provider_table("ollama", stub.base_url),
            "chatd.probe_interval_secs": 0,
            "chatd.server.keep_alive_secs": 60,
        }
    )
    async with running_chatd(config) as base:
        reader, writer = await connect(base)
        assert b" 200 " in await exchange(reader, writer)
        stopping = time.monotonic()
    # running_chatd has stopped the server: the idle connection was closed
    # by it, long before its 60 s keep-alive.
    assert time.monotonic() - stopping < 5
    assert await asyncio.wait_for(reader.read(), 1) == b""
    writer.close()


async def test_shutdown_still_answers_a_new_connections_first_request(
    stub: StubUpstream,
) -> None:
    """A connection accepted just before a worker starts draining may have
    its request in flight; it gets answered rather than closed unanswered
    (what a rolling restart of workers depends on)."""
    config = config_for(stub)
    sock = bound_socket()
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(serve(create_app(config, environ={}), config, sock, stop.wait))
    try:
        await _wait_ready(f"http://127.0.0.1:{port}", task)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert b" 200 " in await exchange(reader, writer)  # serving
        fresh_reader, fresh_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.3)  # accepted, no request yet
        stop.set()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # idle: closed at once
        answer = await asyncio.wait_for(exchange(fresh_reader, fresh_writer), 5)
        assert b" 200 " in answer
        fresh_writer.close()
        writer.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        sock.detach()


async def test_no_task_is_left_per_request(stub: StubUpstream) -> None:
    async with running_chatd(config_for(stub)) as base:
        reader, writer = await connect(base)
        assert b" 200 " in await exchange(reader, writer)
        before = len(asyncio.all_tasks())
        for _ in range(200):
            assert b" 200 " in await exchange(reader, writer)
        assert len(asyncio.all_tasks()) <= before
        writer.close()


class FakeTransport:
    def __init__(self) -> None:
        self.backlog = 0

    def get_write_buffer_size(self) -> int:
        return self.backlog


class FakeWriter:
    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.writes: list[bytes] = []
        self.drains = 0
        self.broken = False

    def write(self, data: bytes) -> None:
        if self.broken:
            raise ConnectionResetError("peer gone")
        self.writes.append(data)

    async def drain(self) -> None:
        self.drains += 1

    def is_closing(self) -> bool:
        return False


class FakeProtocol:
    def __init__(self) -> None:
        self.handled: list[object] = []

    async def handle(self, event: object) -> None:
        self.handled.append(event)


class FakeServer:
    """What ``corked`` touches of Hypercorn's TCPServer."""

    def __init__(self, tasks: asyncio.TaskGroup) -> None:
        self.writer = FakeWriter()
        self.protocol = FakeProtocol()
        self.send_lock = asyncio.Lock()
        self._task_group = SimpleNamespace(_task_group=tasks)
        self.passed: list[object] = []


async def original_send(server: FakeServer, event: object) -> None:
    server.passed.append((event, list(server.writer.writes)))


def corked_send() -> Any:
    return corked(original_send, RawData, Closed)


async def test_one_turns_writes_go_out_as_one() -> None:
    send = corked_send()
    async with asyncio.TaskGroup() as tasks:
        server = FakeServer(tasks)
        await send(server, RawData(data=b"HTTP/1.1 200 OK\r\n\r\n"))
        await send(server, RawData(data=b"body"))
        await send(server, RawData(data=b""))
        assert server.writer.writes == []
        await asyncio.sleep(0)
        assert server.writer.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        await send(server, RawData(data=b"next"))
        await asyncio.sleep(0)
        assert server.writer.writes[1:] == [b"next"]
        assert server.writer.drains == 0


async def test_other_events_first_send_what_is_gathered() -> None:
    send = corked_send()
    async with asyncio.TaskGroup() as tasks:
        server = FakeServer(tasks)
        await send(server, RawData(data=b"last bytes"))
        closing = Closed()
        await send(server, closing)
        # Closing saw the bytes already written, in order.
        assert server.passed == [(closing, [b"last bytes"])]
        await asyncio.sleep(0)
        assert server.writer.writes == [b"last bytes"]


async def test_a_slow_peer_still_waits_in_drain() -> None:
    send = corked_send()
    async with asyncio.TaskGroup() as tasks:
        server = FakeServer(tasks)
        server.writer.transport.backlog = 1 << 20
        await send(server, RawData(data=b"chunk"))
        assert server.writer.writes == [b"chunk"]
        assert server.writer.drains == 1


async def test_a_failed_write_closes_the_connection() -> None:
    send = corked_send()
    async with asyncio.TaskGroup() as tasks:
        server = FakeServer(tasks)
        server.writer.broken = True
        await send(server, RawData(data=b"lost"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert [type(e) for e in server.protocol.handled] == [Closed]


def test_tuning_is_installed_once() -> None:
    tune_connections()
    send = tcp_server.TCPServer.protocol_send
    tune_connections()
    assert tcp_server.TCPServer.protocol_send is send
    assert getattr(send, "chatd_corked", False)
    assert tcp_server.AsyncioSingleTask is IdleWatch


async def test_a_response_goes_out_whole_with_one_date(stub: StubUpstream) -> None:
    async with running_chatd(config_for(stub)) as base:
        reader, writer = await connect(base)
        answer = await exchange(reader, writer)
        writer.close()
    head = answer.split(b"\r\n\r\n", 1)[0].lower().split(b"\r\n")
    assert head[0] == b"http/1.1 200 "
    assert sum(line.startswith(b"date: ") for line in head) == 1
    assert not any(line.startswith(b"server:") for line in head)
    assert answer.endswith(b"}")


async def test_a_client_gone_mid_stream_frees_its_connection(stub: StubUpstream) -> None:
    # The stream stalls after its first line; the client hangs up there.
    stub.fail_next(Fault(kind="stall", seconds=5, after=1))
    body = BODY[:-1] + b',"stream":true}'
    async with running_chatd(config_for(stub)) as base:
        await asyncio.sleep(0.1)
        baseline = len(asyncio.all_tasks())
        reader, writer = await connect(base)
        writer.write(REQUEST.replace(BODY, body).replace(b"%d" % len(BODY), b"%d" % len(body)))
        await reader.readuntil(b"\r\n\r\n")
        await reader.readuntil(b"}\n")  # the first NDJSON line
        writer.transport.abort()
        # Every task of that connection (its server, its watcher, the app)
        # ends well within the keep-alive span.
        for _ in range(40):
            if len(asyncio.all_tasks()) <= baseline:
                break
            await asyncio.sleep(0.02)
        assert len(asyncio.all_tasks()) <= baseline


class FinishedGroup:
    def create_task(self, coro: Any) -> None:
        raise RuntimeError("TaskGroup is finished")


async def test_a_failed_write_on_a_connection_being_wound_up_is_dropped(
    recwarn: pytest.WarningsRecorder,
) -> None:
    send = corked_send()
    async with asyncio.TaskGroup() as tasks:
        server = FakeServer(tasks)
    server._task_group = SimpleNamespace(_task_group=FinishedGroup())
    server.writer.broken = True
    await send(server, RawData(data=b"late"))
    await asyncio.sleep(0)  # the flush ran, raised nothing, left no coroutine behind
    assert server.protocol.handled == []
    assert not [w for w in recwarn if "never awaited" in str(w.message)]

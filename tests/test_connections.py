"""Hypercorn's connections as chatd runs them: keep-alive and shutdown
through the real server on raw sockets (on the stack the run tests), and
``TunedTCPServer``'s coalesced writes on a real connection."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypercorn.asyncio import run as hypercorn_run
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.events import Closed, RawData, Updated

from lakehouse.callers.web import create_app
from lakehouse.config import Config
from lakehouse.connections import TunedTCPServer, server_for
from lakehouse.server import ServerConfig, bound_socket, serve, tune_connections
from lakehouse.stubs import Fault, StubUpstream
from tests.support import (
    TUNED,
    _wait_ready,
    eventually,
    make_config,
    one_connection,
    provider_table,
    running_chatd,
)

pytestmark = [pytest.mark.anyio, pytest.mark.stacks]

BODY = b'{"model":"qwen3.5:latest","messages":[{"role":"user","content":"hi"}]}'
REQUEST = (
    b"POST /chat HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)
KEEP_ALIVE = 1.0
# For the test that keeps a connection open by its requests alone: a span
# long enough that a loaded machine never stretches a gap past it.
LONG_KEEP_ALIVE = 4.0


@pytest.fixture
async def stub() -> AsyncIterator[StubUpstream]:
    stub = StubUpstream("ollama")
    await stub.start()
    try:
        yield stub
    finally:
        await stub.stop()


def config_for(stub: StubUpstream, **server: Any) -> Config:
    """chatd in front of ``stub``; ``server``: [chatd.server] keys to set."""
    overrides = {
        **provider_table("ollama", stub.base_url),
        "chatd.probe_interval_secs": 0,
        "chatd.server.keep_alive_secs": KEEP_ALIVE,
    }
    overrides.update({f"chatd.server.{key}": value for key, value in server.items()})
    return make_config(overrides=overrides)


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
        assert await asyncio.wait_for(reader.read(), 30) == b""
        idle_for = time.monotonic() - idle_from
        writer.close()
        # Not before the keep-alive span (less the time the answer took to
        # reach us); the upper bound is wait_for's.
        assert idle_for >= KEEP_ALIVE * 0.9


async def test_each_request_restarts_the_idle_clock(stub: StubUpstream) -> None:
    async with running_chatd(config_for(stub, keep_alive_secs=LONG_KEEP_ALIVE)) as base:
        reader, writer = await connect(base)
        # Requests 1 s apart keep the connection open past the span: 3 s of
        # slack per gap.
        opened = time.monotonic()
        while time.monotonic() - opened < LONG_KEEP_ALIVE * 1.5:
            assert b" 200 " in await exchange(reader, writer)
            await asyncio.sleep(1.0)
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
    async with running_chatd(config_for(stub, keep_alive_secs=60)) as base:
        reader, writer = await connect(base)
        assert b" 200 " in await exchange(reader, writer)
        stopping = time.monotonic()
    # running_chatd has stopped the server: the idle connection was closed
    # by it, long before its 60 s keep-alive.
    assert time.monotonic() - stopping < 5
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


@pytest.mark.skipif(
    not TUNED, reason="the first-request grace is TunedTCPServer's; stock Hypercorn closes at once"
)
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


@contextlib.asynccontextmanager
async def tuned_connection() -> AsyncIterator[
    tuple[TunedTCPServer, asyncio.StreamReader, asyncio.StreamWriter]
]:
    config = ServerConfig()
    config.keep_alive_timeout = 60
    async with one_connection(TunedTCPServer, config) as (server, reader, writer):
        assert isinstance(server, TunedTCPServer)
        yield server, reader, writer


def spy_on_writes(server: TunedTCPServer) -> list[bytes]:
    """The real writer's write(), recording what each call wrote."""
    writes: list[bytes] = []
    write = server.writer.write

    def recording(data: bytes) -> None:
        writes.append(bytes(data))
        write(data)

    server.writer.write = recording  # type: ignore[method-assign]
    return writes


async def test_one_turns_writes_go_out_as_one() -> None:
    async with tuned_connection() as (server, reader, _):
        writes = spy_on_writes(server)
        await server.protocol_send(RawData(data=b"HTTP/1.1 200 OK\r\n\r\n"))
        await server.protocol_send(RawData(data=b"body"))
        await server.protocol_send(RawData(data=b""))
        assert writes == []
        assert await reader.readexactly(23) == b"HTTP/1.1 200 OK\r\n\r\nbody"
        assert writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        await server.protocol_send(RawData(data=b"next"))
        assert await reader.readexactly(4) == b"next"
        assert writes[1:] == [b"next"]


async def test_busy_and_idle_updates_do_not_split_a_turns_writes() -> None:
    # HTTP/2 says "busy" and "idle" per stream, between the frames of the
    # streams around it; the turn's frames still go out in one write.
    async with tuned_connection() as (server, reader, _):
        writes = spy_on_writes(server)
        await server.protocol_send(RawData(data=b"first "))
        await server.protocol_send(Updated(idle=True))
        await server.protocol_send(RawData(data=b"second "))
        await server.protocol_send(Updated(idle=False))
        await server.protocol_send(RawData(data=b"third"))
        assert writes == []
        assert await reader.readexactly(18) == b"first second third"
        assert writes == [b"first second third"]


async def test_only_a_change_between_busy_and_idle_reaches_the_keep_alive_watcher() -> None:
    # HTTP/2 says "busy" for each new stream and as each stream but the
    # last closes: repeats that would move the keep-alive mark for nothing.
    async with tuned_connection() as (server, _, _):
        seen: list[str] = []
        watch = server.idle_task
        stop, restart = watch.stop, watch.restart

        async def stopping() -> None:
            seen.append("busy")
            await stop()

        async def restarting(*args: Any) -> None:
            seen.append("idle")
            await restart(*args)

        watch.stop, watch.restart = stopping, restarting  # type: ignore[method-assign]
        for idle in (False, False, False, True, True, False, True):
            await server.protocol_send(Updated(idle=idle))
        assert seen == ["busy", "idle", "busy", "idle"]


async def test_closing_first_sends_what_is_gathered() -> None:
    async with tuned_connection() as (server, reader, _):
        await server.protocol_send(RawData(data=b"last bytes"))
        await server.protocol_send(Closed())
        # The bytes went out before the close: the peer reads them, then EOF.
        assert await asyncio.wait_for(reader.read(), 5) == b"last bytes"


async def test_a_slow_peer_still_waits_in_drain() -> None:
    async with tuned_connection() as (server, reader, _):
        chunk = b"x" * (1 << 20)

        async def send_a_lot() -> None:
            for _ in range(32):
                await server.protocol_send(RawData(data=chunk))

        sending = asyncio.create_task(send_a_lot())
        # The peer reads nothing: the sender must end up waiting in drain()
        # with the transport's buffer full, rather than buffering 32 MiB.
        for _ in range(500):
            if server.writer.transport.get_write_buffer_size():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert not sending.done()
        assert server.writer.transport.get_write_buffer_size() < 32 * len(chunk)
        got = 0
        while got < 32 * len(chunk):
            got += len(await asyncio.wait_for(reader.read(1 << 20), 10))
        await asyncio.wait_for(sending, 10)


async def test_a_failed_write_closes_the_connection() -> None:
    async with tuned_connection() as (server, reader, _):
        handled: list[object] = []
        told = asyncio.Event()
        handle = server.protocol.handle

        async def recording(event: Any) -> None:
            handled.append(event)
            told.set()
            await handle(event)

        server.protocol.handle = recording  # type: ignore[method-assign]
        server.writer.write_eof()  # any write now raises RuntimeError
        await server.protocol_send(RawData(data=b"lost"))
        # The flush failed: as on a failed write in Hypercorn, the protocol
        # hears that the connection is closed.
        await asyncio.wait_for(told.wait(), 5)
        assert [type(e) for e in handled] == [Closed]
        assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_a_failed_write_on_a_connection_being_wound_up_is_dropped(
    recwarn: pytest.WarningsRecorder,
) -> None:
    async with tuned_connection() as (server, _, _):
        running = server._task_group
        finished = TaskGroup(asyncio.get_running_loop())
        async with finished:
            pass
        server._task_group = finished
        server.writer.write_eof()
        await server.protocol_send(RawData(data=b"late"))
        await asyncio.sleep(0)  # the flush ran, raised nothing, left no coroutine behind
        await asyncio.sleep(0)
        server._task_group = running
        await server.protocol_send(Closed())
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_tuning_is_installed_once() -> None:
    assert tune_connections()
    assert tune_connections()
    assert hypercorn_run.TCPServer is server_for  # type: ignore[attr-defined]


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
    stub.fail_next(Fault(kind="stall", seconds=30, after=1))
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
        # ends, long before the stall would.
        await eventually(lambda: len(asyncio.all_tasks()) <= baseline, 15, "tasks ended")


def tuned_servers() -> int:
    return sum(type(o) is TunedTCPServer for o in gc.get_objects())


async def test_a_closed_connection_is_freed_without_the_collector(stub: StubUpstream) -> None:
    # (gc_pacing leaves full collections rare while calls are in flight.)
    async with running_chatd(config_for(stub, tuned=True)) as base:
        # The readiness check's connection: gone, however it goes.
        await eventually(lambda: gc.collect() >= 0 and tuned_servers() == 0, 15, "a quiet start")
        gc.disable()
        try:
            reader, writer = await connect(base)
            assert b" 200 " in await exchange(reader, writer)
            assert tuned_servers() == 1
            writer.close()
            await eventually(lambda: tuned_servers() == 0, 15, "the connection's objects freed")
        finally:
            gc.enable()


def watchers() -> int:
    return sum(
        t.get_coro().__qualname__ == "IdleWatch._watch"  # type: ignore[union-attr]
        for t in asyncio.all_tasks()
    )


@pytest.mark.parametrize("tuned", [True, False])
async def test_the_switch_picks_the_connections(stub: StubUpstream, tuned: bool) -> None:
    async with running_chatd(config_for(stub, tuned=tuned)) as base:
        reader, writer = await connect(base)
        answer = await exchange(reader, writer)
        assert b" 200 " in answer
        # Tuned: chatd's keep-alive watcher runs; stock: Hypercorn's own.
        assert watchers() == (1 if tuned else 0)
        writer.close()

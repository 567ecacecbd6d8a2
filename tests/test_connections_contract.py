"""The contract ``lakehouse.connections`` holds Hypercorn to, checked
against the real installed Hypercorn (no fakes of it): what the stock
``TCPServer`` does that ``TunedTCPServer`` and ``IdleWatch`` rely on.

A failure here after bumping Hypercorn means the tuned connections may no
longer behave like the stock ones: see UPGRADING.md before touching
``CHECKED_VERSIONS``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import h11
import pytest
from hypercorn.asyncio import run as hypercorn_run
from hypercorn.asyncio import tcp_server
from hypercorn.asyncio.worker_context import EventWrapper, WorkerContext
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData, Updated

from lakehouse import connections
from lakehouse.server import ServerConfig, tune_connections
from tests.support import one_connection

pytestmark = pytest.mark.anyio


class IdleCalls:
    """Records what a TCPServer asks of its ``idle_task``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def restart(self, task_group: Any, action: Any) -> None:
        self.calls.append(("restart", task_group, action))

    async def stop(self) -> None:
        self.calls.append(("stop",))


class RecordingServer(tcp_server.TCPServer):
    """The stock TCPServer, recording the events its protocol sends it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.events: list[Event] = []

    async def protocol_send(self, event: Event) -> None:
        self.events.append(event)
        await super().protocol_send(event)


async def hello(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hi"})


def watch_idle(server: tcp_server.TCPServer) -> None:
    server.idle_task = IdleCalls()  # type: ignore[assignment]


def stock() -> HypercornConfig:
    h = HypercornConfig()
    h.keep_alive_timeout = 60
    return h


GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def test_the_installed_hypercorn_keeps_the_contract() -> None:
    assert connections.contract_problems() == []


def test_another_version_is_refused_loudly(caplog: pytest.LogCaptureFixture) -> None:
    problems = connections.contract_problems("0.19.0")
    assert problems == ["Hypercorn 0.19.0 is not a version the contract tests passed on"]
    with caplog.at_level(logging.WARNING, "chatd.server"):
        assert tune_connections() is True
        assert not caplog.records  # the installed one is fine: nothing said
        assert tune_connections("0.19.0") is False
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "Hypercorn 0.19.0" in message and "stock" in message and "UPGRADING.md" in message


def test_hypercorn_builds_each_connection_from_its_module_name() -> None:
    # worker_serve calls the name TCPServer in hypercorn.asyncio.run with the
    # seven arguments server_for passes on (exercised end to end by
    # tests/test_connections.py::test_the_switch_picks_the_connections).
    source = inspect.getsource(hypercorn_run.worker_serve)
    assert "await TCPServer(app, loop, config, context, lifespan_state, reader, writer)" in source
    params = tuple(inspect.signature(tcp_server.TCPServer.__init__).parameters)[1:]
    assert params == connections.SERVER_PARAMETERS


async def test_a_connection_starts_idle_then_each_request_stops_and_restarts_the_timer() -> None:
    async with one_connection(RecordingServer, stock(), hello, watch_idle) as (server, reader, w):
        idle: IdleCalls = server.idle_task
        assert idle.calls == [("restart", server._task_group, server._idle_timeout)]
        # The task group IdleWatch reaches into on shutdown.
        assert isinstance(server._task_group._task_group, asyncio.TaskGroup)
        w.write(GET)
        await reader.readuntil(b"hi")
        for _ in range(100):
            if len(idle.calls) == 3:
                break
            await asyncio.sleep(0.01)
        assert [c[0] for c in idle.calls] == ["restart", "stop", "restart"]
        assert idle.calls[2][1:] == (server._task_group, server._idle_timeout)
        # The protocol says busy, writes the answer, says idle: in that order.
        kinds = [type(e) for e in server.events]
        assert kinds[0] is Updated and not server.events[0].idle  # type: ignore[attr-defined]
        assert kinds[-1] is Updated and server.events[-1].idle  # type: ignore[attr-defined]
        assert set(kinds[1:-1]) == {RawData}
    # Closing ends with the timer stopped.
    assert idle.calls[-1] == ("stop",)


async def test_raw_data_is_written_under_the_send_lock() -> None:
    async with one_connection(tcp_server.TCPServer, stock()) as (server, reader, _):
        assert isinstance(server.send_lock, asyncio.Lock)
        await server.send_lock.acquire()
        sending = asyncio.create_task(server.protocol_send(RawData(data=b"ab")))
        await asyncio.sleep(0.05)
        assert not sending.done()
        server.send_lock.release()
        await asyncio.wait_for(sending, 5)
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"ab"


async def test_a_closed_event_closes_the_connection() -> None:
    async with one_connection(tcp_server.TCPServer, stock()) as (server, reader, _):
        await server.protocol_send(Closed())
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert server.writer.is_closing()


async def test_initiate_server_close_closes_the_connection() -> None:
    async with one_connection(tcp_server.TCPServer, stock()) as (server, reader, _):
        assert inspect.iscoroutinefunction(server._initiate_server_close)
        await server._initiate_server_close()
        assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_the_stock_idle_timeout_waits_for_shutdown_or_keep_alive() -> None:
    # IdleWatch does what _idle_timeout does: wait on context.terminated
    # for config.keep_alive_timeout, then _initiate_server_close.
    source = inspect.getsource(tcp_server.TCPServer._idle_timeout)
    assert "self.context.terminated.wait()" in source
    assert "self.config.keep_alive_timeout" in source
    assert "self._initiate_server_close()" in source
    h = stock()
    h.keep_alive_timeout = 0.2
    async with one_connection(tcp_server.TCPServer, h) as (server, reader, _):
        assert isinstance(server.context, WorkerContext)
        assert isinstance(server.context.terminated, EventWrapper)
        assert not server.context.terminated.is_set()
        assert await asyncio.wait_for(reader.read(), 10) == b""


async def test_the_writer_exposes_what_coalescing_reads() -> None:
    async with one_connection(tcp_server.TCPServer, stock()) as (server, _, _):
        assert server.writer.transport.get_write_buffer_size() == 0
        assert server.writer.is_closing() is False
        assert inspect.iscoroutinefunction(server.protocol.handle)


def test_response_headers_carry_the_date_unless_told_not_to() -> None:
    h = HypercornConfig()
    assert [name for name, _ in h.response_headers("h11")][:1] == [b"date"]
    h.include_date_header = False
    h.include_server_header = False
    assert h.response_headers("h11") == []
    tuned = ServerConfig()
    tuned.include_server_header = False
    assert [name for name, _ in tuned.response_headers("h2")] == [b"date"]


async def test_responses_take_their_headers_from_the_config() -> None:
    async with one_connection(tcp_server.TCPServer, ServerConfig(), hello) as (_, reader, w):
        w.write(GET)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "t")]))
    conn.receive_data(head)
    response = conn.next_event()
    assert isinstance(response, h11.Response)
    assert sum(name == b"date" for name, _ in response.headers) == 1

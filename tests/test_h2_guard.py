"""The HTTP/2 abuse budget: contract tests against the installed Hypercorn
and h2 (a server protocol driven in memory, frame by frame), then the
attacks through the real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import hypercorn.protocol as hypercorn_protocols
import pytest
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, RawData
from hypercorn.protocol.h2 import H2Protocol

from lakehouse.connections import H2_GUARD_NEEDS, installed_h2
from lakehouse.h2_guard import RESET_BURST, ResetBudget
from lakehouse.server import ServerConfig, install_guards
from lakehouse.server import tune_h2 as server_tune_h2
from lakehouse.smoke import start_chatd
from lakehouse.stubs import Fault
from tests.h2_client import RawH2
from tests.stub_world import MODELS, World, stub_world
from tests.support import module_fixtures
from tests.test_cli import clean_env

# The attacks run on both stacks: the guard is a fix, in front of the tuned
# and the stock H2Protocol alike.
pytestmark = [pytest.mark.anyio, pytest.mark.stacks]

HELLO = [{"role": "user", "content": "hello"}]
REFUSED = int(h2.errors.ErrorCodes.REFUSED_STREAM)
CALM = int(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)


def guarded() -> type:
    assert install_guards()
    choice = installed_h2()
    assert choice is not None, "hypercorn.protocol.H2Protocol is not chatd's choice"
    protocol = choice.pick(HypercornConfig())
    assert getattr(protocol, "chatd_guarded", False), "the guard is not installed"
    return protocol


class Apps:
    """ASGI apps that answer at once, or hold their stream until released
    (ignoring the caller's leaving, as work that has not stopped yet)."""

    def __init__(self) -> None:
        self.started = 0
        self.release = asyncio.Event()
        self.sent = 0
        self.tasks: list[asyncio.Task[Any]] = []

    def _start(self) -> None:
        self.started += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)

    async def hold(self, scope: Any, receive: Any, send: Any) -> None:
        self._start()
        await self.release.wait()

    async def answer(self, scope: Any, receive: Any, send: Any) -> None:
        self._start()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 100, "more_body": True})
        self.sent += 1
        await self.release.wait()
        await send({"type": "http.response.body", "body": b"end"})


class Wire:
    """A server-side protocol of the installed Hypercorn and an h2 client,
    connected in memory."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.closed = False
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.events: list[Any] = []

    async def receive(self, event: Any) -> None:
        if isinstance(event, RawData):
            self.events.extend(self.client.receive_data(event.data))
        elif isinstance(event, Closed):
            self.closed = True

    @property
    def resets(self) -> dict[int, int]:
        resets = [e for e in self.events if isinstance(e, h2.events.StreamReset)]
        return {e.stream_id: int(e.error_code) for e in resets}

    @property
    def goaway(self) -> int | None:
        ended = [e for e in self.events if isinstance(e, h2.events.ConnectionTerminated)]
        return int(ended[0].error_code) if ended else None

    async def feed(self) -> None:
        await self.protocol.handle(RawData(self.client.data_to_send()))
        for _ in range(3):
            await asyncio.sleep(0)

    def open(self) -> int:
        sid = self.client.get_next_available_stream_id()
        headers = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                   (b":authority", b"x")]  # fmt: skip
        self.client.send_headers(sid, headers, end_stream=True)
        return sid


@contextlib.asynccontextmanager
async def wire(protocol_class: type, app: Any, apps: Apps, limit: int = 4) -> AsyncIterator[Wire]:
    config = HypercornConfig()
    config.h2_max_concurrent_streams = limit
    async with TaskGroup(asyncio.get_running_loop()) as group:
        holder: list[Wire] = []

        async def send(event: Any) -> None:
            await holder[0].receive(event)

        protocol = protocol_class(
            ASGIWrapper(app), config, WorkerContext(None), group, {}, False,
            ("127.0.0.1", 1), ("127.0.0.1", 2), send,
        )  # fmt: skip
        holder.append(Wire(protocol))
        w = holder[0]
        w.client.initiate_connection()
        await protocol.initiate()
        await w.feed()
        try:
            yield w
        finally:
            apps.release.set()
            await protocol.handle(Closed())
            for _ in range(3):
                await asyncio.sleep(0)
            for task in apps.tasks:
                task.cancel()  # stuck on stock Hypercorn


# -- the contract: what the guard relies on in the installed Hypercorn -----


def test_hypercorn_builds_each_h2_connection_from_the_guarded_class() -> None:
    protocol = guarded()
    assert all(hasattr(H2Protocol, name) for name in H2_GUARD_NEEDS)
    assert issubclass(protocol, H2Protocol)
    # ProtocolWrapper looks the class up by this module-level name.
    wrapper = hypercorn_protocols.ProtocolWrapper(
        ASGIWrapper(Apps().hold), HypercornConfig(), WorkerContext(None), None, {}, False,  # type: ignore[arg-type]
        None, None, None, "h2",  # type: ignore[arg-type]
    )  # fmt: skip
    assert type(wrapper.protocol) is protocol


def test_the_tuned_h2_protocol_gets_the_guard_too() -> None:
    assert server_tune_h2()
    choice = installed_h2()
    assert choice is not None
    tuned = choice.pick(ServerConfig())
    assert getattr(tuned, "chatd_guarded", False) and tuned is not choice.stock
    assert "TunedH2Protocol" in [c.__name__ for c in tuned.__mro__]


def test_an_unchecked_hypercorn_serves_without_the_guards_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="chatd.server"):
        assert install_guards("0.19.0") is False
    assert any(
        "abuse guard" in r.getMessage() and "Hypercorn 0.19.0" in r.getMessage()
        for r in caplog.records
    )
    install_guards()  # back to the installed version's


async def test_stock_hypercorn_lets_reset_streams_run_unbounded() -> None:
    # The hole the guard closes: reset streams do not count against
    # h2_max_concurrent_streams, so their work piles up past it.
    apps = Apps()
    async with wire(H2Protocol, apps.hold, apps, limit=4) as w:
        for _ in range(10):
            w.client.reset_stream(w.open(), h2.errors.ErrorCodes.CANCEL)
        await w.feed()
        assert apps.started == 10


async def test_reset_streams_whose_work_runs_still_count_and_new_ones_are_refused() -> None:
    apps = Apps()
    async with wire(guarded(), apps.hold, apps, limit=4) as w:
        held = [w.open() for _ in range(4)]
        for sid in held:
            w.client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        await w.feed()
        extra = [w.open() for _ in range(3)]
        await w.feed()
        assert apps.started == 4  # no work started for the refused ones
        assert {sid: w.resets.get(sid) for sid in extra} == dict.fromkeys(extra, REFUSED)
        assert w.protocol.running == 4 and not w.closed
    # Once the held work ends, the budget is back.
    assert w.protocol.running == 0


async def test_a_connection_resetting_far_faster_than_it_completes_gets_calm() -> None:
    apps = Apps()
    async with wire(guarded(), apps.hold, apps, limit=8) as w:
        for _ in range(RESET_BURST + 50):
            w.client.reset_stream(w.open(), h2.errors.ErrorCodes.CANCEL)
        await w.feed()
        assert w.goaway == CALM and w.closed
        assert apps.started <= 8


async def test_completed_requests_refill_the_budget() -> None:
    budget = ResetBudget(clock=lambda: 0.0)
    for _ in range(RESET_BURST):
        assert budget.spend()
    assert not budget.spend()
    budget.refund()
    budget.refund()
    assert budget.spend()


async def test_a_closed_connection_releases_every_streams_last_send() -> None:
    # Stock Hypercorn leaves the final send waiting on a buffer nobody
    # drains once the connection has closed; the guard releases it.
    for protocol_class, released in ((H2Protocol, False), (guarded(), True)):
        apps = Apps()
        ended = asyncio.Event()

        async def app(
            scope: Any, receive: Any, send: Any, apps: Apps = apps, ended: asyncio.Event = ended
        ) -> None:
            await apps.answer(scope, receive, send)
            ended.set()

        async with wire(protocol_class, app, apps, limit=4) as w:
            w.open()
            await w.feed()
            assert apps.sent == 1
            await w.protocol.handle(Closed())
            apps.release.set()  # the app now sends the rest of its body
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), 1.0)
            assert ended.is_set() is released, protocol_class


# -- the attacks, through the real server ----------------------------------


OVERRIDES = {
    "chatd.timeout_secs": 60,
    "chatd.server.h2_max_concurrent_streams": 16,
}
anyio_backend, world = module_fixtures(lambda: stub_world(OVERRIDES))


async def until_true(check: Any, within: float) -> None:
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - the state is the server's, seen from outside
            await asyncio.sleep(0.02)


async def test_rapid_reset_of_hanging_posts_is_bounded_and_spares_other_callers(
    world: World,
) -> None:
    stub = world.stubs["openrouter"]
    stub.received.clear()
    stub.fail_always(Fault(kind="delay", seconds=120))
    ok = world.stubs["ollama"]
    body = json.dumps({"model": MODELS["openrouter"], "messages": HELLO}).encode()
    attacker = await RawH2.connect(world.base)
    try:
        async with httpx.AsyncClient(base_url=world.base, http1=False, http2=True) as other:
            for _ in range(6):  # 1,200 x (POST, RST_STREAM), or until sent away
                await asyncio.sleep(0.05)  # the server's answers are read meanwhile
                if attacker.closed.is_set() or attacker.goaway is not None:
                    break
                for _ in range(200):
                    sid = attacker.start("POST", "/chat", body, flush=False)
                    attacker.reset(sid, flush=False)
                attacker.flush()
                ask = {"model": MODELS["ollama"], "messages": HELLO}
                resp = await other.post("/chat", json=ask)
                assert resp.status_code == 200
        assert attacker.goaway is not None and int(attacker.goaway.error_code) == CALM
        # At most the connection's budget ever reached the upstream.
        assert len(stub.chats) <= 16 * 6
        assert ok.chats

        async def nothing_in_flight() -> bool:
            return stub.in_flight == 0

        await until_true(nothing_in_flight, within=1.5)
    finally:
        stub.clear_faults()
        await attacker.close()


async def test_rapid_reset_of_health_checks_ends_in_goaway_not_a_traceback(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    attacker = await RawH2.connect(world.base)
    try:
        for _ in range(20):  # 20,000 x (GET /health, RST_STREAM), or until sent away
            for _ in range(1000):
                attacker.reset(attacker.start("GET", "/health", flush=False), flush=False)
            attacker.flush()
            await asyncio.sleep(0.01)
            if attacker.closed.is_set() or attacker.goaway is not None:
                break
        await asyncio.wait_for(attacker.closed.wait(), 10)
        assert attacker.goaway is not None and int(attacker.goaway.error_code) == CALM
    finally:
        await attacker.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text and "TooManyStreamsError" not in caplog.text
    async with httpx.AsyncClient(base_url=world.base, http1=False, http2=True) as client:
        assert (await client.get("/health")).status_code == 200


# Six PRIORITY frames for idle streams, then a request on one of them (as
# Hypercorn hands them to the priority library's tree): removing that
# stream, once its response is sent, looped forever and hung the worker.
LOOPING_PRIORITIES = [
    (15, 21, 86, False),
    (21, 33, 125, False),
    (41, 21, 188, False),
    (33, 21, 62, True),
    (7, 33, 256, True),
    (41, 7, 101, True),
]


@pytest.mark.parametrize("tuned", ["true", "false"])
def test_priority_frames_cannot_hang_the_worker(tuned: str) -> None:
    # A chatd process of its own: without the guard its loop never comes back.
    base, proc = start_chatd(["--dev", "--set", f"chatd.server.tuned={tuned}"], clean_env())
    try:
        port = int(base.rsplit(":", 1)[1])
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        for sid, parent, weight, exclusive in LOOPING_PRIORITIES:
            client.prioritize(sid, weight=weight, depends_on=parent, exclusive=exclusive)
        request = [
            (":method", "GET"),
            (":path", "/health"),
            (":scheme", "http"),
            (":authority", "x"),
        ]
        client.send_headers(41, request, end_stream=True)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(client.data_to_send())
            ended = False
            while not ended:
                data = sock.recv(65536)
                assert data, "the connection closed before the answer"
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        assert dict(event.headers)[b":status"] == b"200"
                    ended = ended or isinstance(event, h2.events.StreamEnded)
            # The worker still serves everyone else.
            with urllib.request.urlopen(base + "/health", timeout=10) as other:
                assert other.status == 200
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:  # a hung loop handles no SIGTERM
            proc.kill()
            proc.wait(15)

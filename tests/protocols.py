"""What the HTTP/1.1 and HTTP/2 tuning tests (and test_server's version
checks) share: the protocol Hypercorn builds for a connection of a config,
whether it is chatd's tuned one, Hypercorn's own put back, a tuning that
must refuse, recording the calls of a library method, and a test app's
lifespan answers."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import hypercorn.protocol as hypercorn_protocol
import pytest
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig

from lakehouse.server import ServerConfig


def built(name: str, config: HypercornConfig) -> Any:
    """The ``name`` protocol (``H11Protocol``, ``H2Protocol``) Hypercorn
    builds for a connection of ``config``, looked up where Hypercorn does."""
    return getattr(hypercorn_protocol, name)(
        None, config, WorkerContext(None), None, None, False, None, None, None
    )


def tuned_by(class_name: str, protocol: Any) -> bool:
    """Whether ``protocol`` (chatd's fixes in front or not) is the tuned one."""
    return class_name in [c.__name__ for c in type(protocol).__mro__]


async def lifespan(receive: Any, send: Any) -> None:
    """A test app's answers to Hypercorn's lifespan start-up and shutdown."""
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


def stock_in_place(monkeypatch: pytest.MonkeyPatch, name: str, stock: type) -> None:
    """Hypercorn's own ``name`` protocol put back where ``ProtocolWrapper``
    looks it up when a connection starts, which chatd's tuning relies on."""
    assert name in hypercorn_protocol.ProtocolWrapper.__init__.__code__.co_names
    monkeypatch.setattr(hypercorn_protocol, name, stock)


def picked_per_config(name: str, tuned_class: str, stock: type) -> Any:
    """Checks that a tuned server's connections get chatd's subclass of
    Hypercorn's ``stock`` protocol and a stock server's Hypercorn's own, as
    the TCPServer is chosen; returns a tuned one."""
    tuned = built(name, ServerConfig())
    assert isinstance(tuned, stock) and tuned_by(tuned_class, tuned)
    assert not tuned_by(tuned_class, built(name, HypercornConfig()))
    return tuned


def refused_tuning(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    name: str,
    stock: type,
    tune: Callable[[], bool],
) -> str:
    """Runs ``tune``, which must refuse, with Hypercorn's own ``name``
    protocol in place; checks that it stays, and returns the one WARNING."""
    monkeypatch.setattr(hypercorn_protocol, name, stock)
    with caplog.at_level("WARNING", logger="chatd.server"):
        assert tune() is False
    assert getattr(hypercorn_protocol, name) is stock
    [record] = [r for r in caplog.records if r.name == "chatd.server"]
    assert record.levelname == "WARNING"
    return record.getMessage()


def recording(
    monkeypatch: pytest.MonkeyPatch, owner: type, name: str, record: Callable[..., object]
) -> None:
    """``owner.name`` (a method, async or not) calling ``record`` with its
    arguments first."""
    original = getattr(owner, name)

    async def recorded(self: Any, *args: Any, **kwargs: Any) -> Any:
        record(*args, **kwargs)
        return await original(self, *args, **kwargs)

    def recorded_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
        record(*args, **kwargs)
        return original(self, *args, **kwargs)

    async_method = inspect.iscoroutinefunction(original)
    monkeypatch.setattr(owner, name, recorded if async_method else recorded_sync)

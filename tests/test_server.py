"""Hypercorn's configuration as chatd sets it."""

from __future__ import annotations

import asyncio
import email.utils
import functools
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import hypercorn.protocol.h2 as hypercorn_h2
import hypercorn.protocol.h11 as hypercorn_h11
import pytest
from hypercorn.config import Config as HypercornConfig

from lakehouse import server
from tests.protocols import built, refused_tuning
from tests.support import make_config


def test_date_header_is_made_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    h = server.hypercorn_config(make_config())
    now = [1_800_000_000.2]
    monkeypatch.setattr(server.time, "time", lambda: now[0])
    first = h.response_headers("h11")
    assert [name for name, _ in first] == [b"date"]  # no Server header
    assert email.utils.parsedate_to_datetime(first[0][1].decode()).timestamp() == 1_800_000_000
    now[0] += 0.5
    again = h.response_headers("h11")
    assert again == first and again is not first
    again.append((b"x", b"y"))  # callers get their own list
    assert h.response_headers("h11") == first
    now[0] += 1
    later = h.response_headers("h11")
    assert email.utils.parsedate_to_datetime(later[0][1].decode()).timestamp() == 1_800_000_001
    assert h.response_headers("h2") == later
    assert later[0][1] == b"Fri, 15 Jan 2027 08:00:01 GMT"


def test_server_settings_come_from_the_config() -> None:
    config = make_config(
        overrides={"chatd.server.keep_alive_secs": 9, "chatd.server.keep_alive_max_requests": 7}
    )
    h = server.hypercorn_config(config, bind="127.0.0.1:1")
    assert h.bind == ["127.0.0.1:1"]
    assert h.keep_alive_timeout == 9
    assert h.keep_alive_max_requests == 7
    assert h.include_server_header is False


def test_the_stock_stack_is_hypercorn_as_shipped() -> None:
    tuned = server.hypercorn_config(make_config(overrides={"chatd.server.tuned": True}))
    assert isinstance(tuned, server.ServerConfig) and tuned.chatd_tuned
    stock = server.hypercorn_config(make_config(overrides={"chatd.server.tuned": False}))
    # Hypercorn's config as shipped, plus the read timeout chatd's
    # slow-client fix reads (both stacks).
    assert type(stock) is server.StockConfig and not isinstance(stock, server.ServerConfig)
    assert server.StockConfig.__bases__ == (HypercornConfig,)
    assert set(vars(server.StockConfig)) - set(vars(object)) <= {
        "chatd_read_timeout",
        "__module__",
        "__doc__",
        "__dict__",
        "__weakref__",
    }
    assert stock.chatd_read_timeout == tuned.chatd_read_timeout
    assert not getattr(stock, "chatd_tuned", False)
    # Hypercorn's own Date header, made per response.
    assert [name for name, _ in stock.response_headers("h11")] == [b"date"]
    assert stock.keep_alive_timeout == tuned.keep_alive_timeout


@pytest.mark.anyio
async def test_a_lifeline_at_eof_stops_the_worker_once_and_is_let_go() -> None:
    """EOF on the supervisor's pipe stays readable: a reader left on it
    would be called on every turn of the loop, spinning a core for the
    whole drain (up to graceful_timeout_secs) after the supervisor died."""
    read_end, write_end = os.pipe()
    stops: list[None] = []
    loop = asyncio.get_running_loop()
    try:
        server.watch_lifeline(read_end, lambda: stops.append(None))
        os.close(write_end)
        for _ in range(50):
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert stops == [None]
        assert not loop.remove_reader(read_end)  # no longer watched
    finally:
        os.close(read_end)


def test_the_default_metrics_folder_is_fresh_and_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers trust what is in the folder (metrics summed, probe verdicts
    followed): under a shared /tmp, a folder another user made first at a
    name they could guess must not be the one used."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted = tmp_path / f"chatd-metrics-{os.getpid()}"
    planted.mkdir(mode=0o777)
    (planted / "probes.json").write_text('{"ollama": {"ok": false}}')
    path, owned = server.metrics_folder(None)
    assert owned and Path(path).parent == tmp_path and Path(path) != planted
    assert os.listdir(path) == []
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    other, _ = server.metrics_folder(None)
    assert other != path


def test_a_configured_metrics_folder_is_emptied_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "counter_1.db").write_bytes(b"x")
    assert server.metrics_folder(str(folder)) == (str(folder), False)
    assert os.listdir(folder) == []


def test_the_listen_backlog_takes_a_burst_of_connections() -> None:
    # Hypercorn's default of 100 drops SYNs of a proxy's cold pool.
    assert server.hypercorn_config(make_config()).backlog == 1024
    config = make_config(overrides={"chatd.server.backlog": 2048})
    assert server.hypercorn_config(config).backlog == 2048


@pytest.mark.parametrize(
    ("tune", "name", "versions", "named"),
    [
        (server.tune_h11, "H11Protocol", ("0.19.0", None), "Hypercorn 0.19.0"),
        (server.tune_h11, "H11Protocol", (None, "0.17.0"), "h11 0.17.0"),
        (server.tune_h2, "H2Protocol", ("0.19.0", None), "Hypercorn 0.19.0"),
        (server.tune_h2, "H2Protocol", (None, "5.0.0"), "h2 5.0.0"),
    ],
)
def test_an_unchecked_version_serves_that_protocol_stock_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tune: Callable[..., bool],
    name: str,
    versions: tuple[str | None, str | None],
    named: str,
) -> None:
    stock = {"H11Protocol": hypercorn_h11.H11Protocol, "H2Protocol": hypercorn_h2.H2Protocol}[name]
    warning = refused_tuning(monkeypatch, caplog, name, stock, functools.partial(tune, *versions))
    assert type(built(name, server.ServerConfig())) is stock
    assert named in warning and f"stock {name}" in warning

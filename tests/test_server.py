"""Hypercorn's configuration as chatd sets it."""

from __future__ import annotations

import email.utils

import pytest

from lakehouse import server
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


def test_the_listen_backlog_takes_a_burst_of_connections() -> None:
    # Hypercorn's default of 100 drops SYNs of a proxy's cold pool.
    assert server.hypercorn_config(make_config()).backlog == 1024
    config = make_config(overrides={"chatd.server.backlog": 2048})
    assert server.hypercorn_config(config).backlog == 2048

"""The Go gateway's [gateway] form: every <service>_url route driven to a
service of its own on a real socket, and the start-up checks of the form."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from lakehouse import config as configuration
from lakehouse.errors import ConfigError
from lakehouse.gateway.app import routes_from
from lakehouse.gateway.legacy import PREFIXES
from tests.gateway.test_app import free_port, running_gateway
from tests.support import ROOT

pytestmark = pytest.mark.anyio

FIXTURE = ROOT / "tests" / "fixtures" / "go_lakehouse.toml"
SERVICES = [service for service, _ in PREFIXES]

# Caller's path → (the service it reaches, the path that service sees).
ROUTED = [
    ("/v1/storage/get/bucket/a.parquet", "storaged", "/storage/get/bucket/a.parquet"),
    ("/v1/storage/", "storaged", "/storage/"),
    ("/v1/catalog/datasets/workers_500k", "catalogd", "/catalog/datasets/workers_500k"),
    ("/v1/ingest", "ingestd", "/ingest"),
    ("/v1/sql", "queryd", "/sql"),
    ("/v1/vectors/index/docs/search", "vectord", "/vectors/index/docs/search"),
    ("/v1/embed", "embedd", "/embed"),
    ("/v1/pathway/traces/42", "pathwayd", "/pathway/traces/42"),
    ("/v1/matrix/retrieve", "matrixd", "/matrix/retrieve"),
    ("/v1/observer/ops", "observerd", "/observer/ops"),
    ("/v1/chat", "chatd", "/chat"),
    ("/v1/chat/providers", "chatd", "/chat/providers"),
    ("/v1/chat/completions", "chatd", "/chat/completions"),
    # Percent-encoding passes through as the caller sent it.
    ("/v1/catalog/name%20with%20space", "catalogd", "/catalog/name%20with%20space"),
]
# Not in the Go gateway's table: a prefix only counts at a segment boundary.
UNROUTED = ["/v1/chatty", "/v1/storagex/a", "/v1/sqlx", "/v1/models", "/storage/a", "/v1", "/"]


@contextlib.asynccontextmanager
async def services() -> AsyncIterator[dict[str, str]]:
    """One echoing server per backing service; yields the config keys."""
    runners: list[web.AppRunner] = []
    urls: dict[str, str] = {}

    def echo(name: str) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            return web.json_response(
                {
                    "service": name,
                    "method": request.method,
                    "path": request.raw_path.partition("?")[0],
                    "query": request.rel_url.raw_query_string,
                    "body": body.decode(),
                }
            )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    try:
        for name in SERVICES:
            runner = web.AppRunner(echo(name), shutdown_timeout=0.1)
            runners.append(runner)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            urls[f"{name}_url"] = f"http://{host}:{port}"
        yield urls
    finally:
        for runner in runners:
            await runner.cleanup()


def fixture_with(urls: dict[str, str], tmp_path: Path) -> Path:
    """The reference file with its [gateway] URLs pointing at ``urls``."""
    lines = []
    for line in FIXTURE.read_text().splitlines():
        key = line.partition(" = ")[0]
        lines.append(f'{key} = "{urls[key]}"' if key in urls and line.startswith(key) else line)
    path = tmp_path / "lakehouse.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_every_go_gateway_route_reaches_its_service(tmp_path: Path) -> None:
    async with services() as urls:
        path = fixture_with(urls, tmp_path)
        # Only the [gateway] table's URLs changed; the services' own tables
        # still say 3211…, so the test proves the gateway read its own keys.
        config = configuration.load(path, {"chatd.server.graceful_timeout_secs": 1})
        async with running_gateway(config) as base, httpx.AsyncClient(base_url=base) as client:
            for sent, service, seen in ROUTED:
                resp = await client.post(sent + "?limit=5", content=b"payload")
                assert resp.status_code == 200, (sent, resp.text)
                got = resp.json()
                assert (got["service"], got["path"]) == (service, seen), sent
                assert (got["method"], got["query"], got["body"]) == ("POST", "limit=5", "payload")
            for sent in UNROUTED:
                resp = await client.get(sent)
                assert resp.status_code == 404, sent
                assert resp.json()["error"]["code"] == "not_found"


def test_the_table_is_the_go_gateways() -> None:
    config = configuration.load(FIXTURE)
    table = {route.prefix: route.upstream for route in routes_from(config)}
    assert table == {
        "/v1/storage": "http://127.0.0.1:3211",
        "/v1/catalog": "http://127.0.0.1:3212",
        "/v1/ingest": "http://127.0.0.1:3213",
        "/v1/sql": "http://127.0.0.1:3214",
        "/v1/vectors": "http://127.0.0.1:3215",
        "/v1/embed": "http://127.0.0.1:3216",
        "/v1/pathway": "http://127.0.0.1:3217",
        "/v1/matrix": "http://127.0.0.1:3218",
        "/v1/observer": "http://127.0.0.1:3219",
        "/v1/chat": "http://127.0.0.1:3220",
    }


def test_every_service_url_is_required() -> None:
    text = FIXTURE.read_text().replace('embedd_url = "http://127.0.0.1:3216"\n', "", 1)
    config = configuration.parse(text, source="x.toml")
    with pytest.raises(ConfigError, match=r"`gateway.embedd_url` missing"):
        routes_from(config)


def gateway_cli(path: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "LAKEHOUSE_CONFIG"}
    return subprocess.Popen(
        [sys.executable, "-m", "lakehouse.cli", "gateway", "--config", str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        (
            'queryd_url = "http://127.0.0.1:3214"',
            'queryd_url = "127.0.0.1:3214"',
            "`gateway.queryd_url` = '127.0.0.1:3214': needs an http(s) scheme and a host",
        ),
        (
            'chatd_url = "http://127.0.0.1:3220"',
            'chatd_url = "http://"',
            "`gateway.chatd_url` = 'http://': needs an http(s) scheme and a host",
        ),
        ('observerd_url = "http://127.0.0.1:3219"\n', "", "`gateway.observerd_url` missing"),
        (
            'bind = "127.0.0.1:3110"\n',
            'bind = "127.0.0.1:3110"\nroutes = { "/v1/models" = "http://127.0.0.1:3220" }\n',
            "`gateway.routes` and the Go gateway's `gateway.storaged_url` are both set",
        ),
    ],
)
def test_a_bad_go_gateway_table_stops_start_up_naming_the_key(
    tmp_path: Path, old: str, new: str, needle: str
) -> None:
    text = FIXTURE.read_text()
    assert old in text
    path = tmp_path / "lakehouse.toml"
    path.write_text(text.replace(old, new, 1))
    proc = gateway_cli(path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chatd gateway: config error: "), err
    assert needle in lines[0]


def test_the_gateway_starts_on_the_reference_file_and_logs_each_legacy_key() -> None:
    port = free_port()
    proc = gateway_cli(FIXTURE, "--bind", f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            assert time.monotonic() < deadline, "the gateway did not come up"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    logged = [json.loads(line)["msg"] for line in err.splitlines() if line.startswith("{")]
    assert [msg for msg in logged if msg.startswith("legacy key")] == [
        f'legacy key `gateway.{service}_url` read as `gateway.routes."{prefix}"`'
        for service, prefix in PREFIXES
    ]


def test_the_readme_says_what_each_legacy_key_becomes() -> None:
    from tests.test_legacy_config import migration_rows

    rows = migration_rows()
    for service, prefix in PREFIXES:
        row = [row for row in rows if row.startswith(f"| `gateway.{service}_url` |")]
        assert len(row) == 1, service
        assert f'`gateway.routes."{prefix}"`' in row[0]

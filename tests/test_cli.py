"""bin/chatd as a process: config checks, --dev, h2, SIGTERM grace, workers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from lakehouse.smoke import start_chatd
from lakehouse.stubs import Fault, StubUpstream
from tests.support import ROOT, config_error, eventually

GOOD = {"model": "qwen3.5:latest", "messages": [{"role": "user", "content": "hi"}]}
KEY_VARS = ("OLLAMA_CLOUD_KEY", "OPENROUTER_API_KEY", "OPENCODE_API_KEY", "KIMI_API_KEY")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    env.pop("LAKEHOUSE_CONFIG", None)
    env.update(extra)
    return env


def chatd(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``chatd *args`` run to its end, with no provider key in its
    environment but those in ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "lakehouse.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=clean_env(**env),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_check_shipped_config_without_keys_registers_only_ollama() -> None:
    done = chatd("--check")
    assert done.returncode == 0, done.stderr
    assert "providers: ollama" in done.stdout


def test_check_with_a_key_registers_that_provider() -> None:
    done = chatd("--check", OPENROUTER_API_KEY="sk-or-v1-" + "x" * 30)
    assert done.returncode == 0, done.stderr
    assert "providers: ollama, openrouter" in done.stdout
    assert "sk-or-v1-" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[chatd]\ntimeout_sec = 1\n", "unknown key `chatd.timeout_sec`"),
        (
            '[chatd.providers.ollama]\nbase_url = "localhost:11434"\n',
            "`chatd.providers.ollama.base_url`",
        ),
        ("[chatd.providers.mystery]\n", "provider `mystery`: plugin `mystery` not found"),
        (
            '[chatd.providers.ollama]\noptions = { num_ctx = "big" }\n',
            "`chatd.providers.ollama.options.num_ctx`",
        ),
    ],
)
def test_bad_config_stops_startup_with_one_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    line = config_error(chatd("--config", str(path)))
    assert needle in line
    assert line.startswith("chatd: config error:")


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], base: str) -> None:
        self.proc = proc
        self.base = base


def start(args: list[str], env: dict[str, str] | None = None) -> Server:
    base, proc = start_chatd(args, env or clean_env(), cwd=str(ROOT), stdout=subprocess.PIPE)
    return Server(proc, base)


@pytest.fixture
def dev_server() -> Iterator[Server]:
    # Nothing listens on the configured Ollama port in a test run, so --dev
    # must bring up its embedded stub.
    unused = free_port()
    server = start(
        ["--dev", "--set", f'chatd.providers.ollama.base_url="http://127.0.0.1:{unused}"']
    )
    yield server
    server.proc.terminate()
    server.proc.wait(30)


def test_dev_mode_answers_over_http2_out_of_the_box(dev_server: Server) -> None:
    with httpx.Client(http1=False, http2=True, base_url=dev_server.base) as client:
        resp = client.post("/chat", json=GOOD)
    assert resp.http_version == "HTTP/2"
    assert resp.status_code == 200
    body = resp.json()
    assert body["provider"] == "ollama"
    assert body["content"] and body["completion_tokens"] > 0
    assert httpx.get(dev_server.base + "/chat/providers").json() == {"providers": {"ollama": True}}


def test_smoke_against_a_running_dev_server(dev_server: Server) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lakehouse.smoke", dev_server.base],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "6/6 PASS"


def test_smoke_reports_failures_and_exits_nonzero(dev_server: Server) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lakehouse.smoke", dev_server.base, "--expect", "ollama,kimi"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert "1. FAIL" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "5/6 PASS"


def test_smoke_starts_its_own_dev_server() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lakehouse.smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6/6 PASS" in done.stdout


@pytest.fixture
async def stub() -> AsyncIterator[tuple[StubUpstream, str]]:
    upstream = StubUpstream("ollama")
    url = await upstream.start()
    yield upstream, url
    await upstream.stop()


@pytest.mark.anyio
async def test_sigterm_lets_in_flight_requests_finish(
    tmp_path: Path, stub: tuple[StubUpstream, str]
) -> None:
    upstream, url = stub
    upstream.fail_next(Fault(kind="delay", seconds=1.5))
    path = tmp_path / "c.toml"
    path.write_text(
        f'[chatd]\nprobe_interval_secs = 0\n[chatd.providers.ollama]\nbase_url = "{url}"\n'
    )
    server = await asyncio.to_thread(start, ["--config", str(path)])
    try:
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            pending = asyncio.create_task(client.post("/chat", json=GOOD))
            await eventually(lambda: len(upstream.chats) == 1, what="the request upstream")
            server.proc.send_signal(signal.SIGTERM)
            resp = await pending
        assert resp.status_code == 200
        assert resp.json()["content"]
        code = await asyncio.to_thread(server.proc.wait, 30)
        assert code == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


@pytest.mark.anyio
async def test_two_workers_serve(tmp_path: Path, stub: tuple[StubUpstream, str]) -> None:
    upstream, url = stub
    path = tmp_path / "c.toml"
    path.write_text(
        f'[chatd]\nprobe_interval_secs = 0\n[chatd.providers.ollama]\nbase_url = "{url}"\n'
    )
    server = await asyncio.to_thread(start, ["--config", str(path), "--workers", "2"])
    try:
        async with httpx.AsyncClient(base_url=server.base) as client:
            answers = await asyncio.gather(*(client.post("/chat", json=GOOD) for _ in range(20)))
        assert all(r.status_code == 200 for r in answers)
        assert len([r for r in upstream.received if r.path == "/api/chat"]) == 20
    finally:
        server.proc.terminate()
        await asyncio.to_thread(server.proc.wait, 30)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--set", "chatd.auth.enabled=true"], "--set chatd.auth.enabled: `chatd.auth.enabled`"),
        (
            ["--set", 'chatd.auth.tokens_file="/tmp/chatd-missing-tokens"'],
            "--set chatd.auth.tokens_file: `chatd.auth.tokens_file`",
        ),
        (["--set", 'chatd.bind="nonsense"'], "--set chatd.bind: `chatd.bind` = 'nonsense'"),
        (["--bind", "nonsense"], "--bind: `chatd.bind` = 'nonsense'"),
        (
            ["--set", 'chatd.timeout_secs="soon"'],
            "--set chatd.timeout_secs: Expected `float`, got `str`",
        ),
    ],
)
@pytest.mark.parametrize("check", [True, False])
def test_every_start_up_failure_is_one_line_blaming_its_source(
    flags: list[str], needle: str, check: bool
) -> None:
    done = chatd(*(["--check"] if check else []), *flags)
    assert config_error(done).startswith("chatd: config error: " + needle)
    assert "config ok" not in done.stdout and "serving" not in done.stderr


def listening_socket() -> socket.socket:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


@pytest.mark.parametrize(
    "command",
    [["--workers", "1"], ["--workers", "2"], ["gateway"], ["gateway", "--workers", "2"]],
)
def test_a_port_in_use_is_one_line_and_exit_2(command: list[str]) -> None:
    with listening_socket() as taken:
        done = chatd(*command, "--bind", f"127.0.0.1:{taken.getsockname()[1]}")
    line = config_error(done)
    assert "cannot listen on 127.0.0.1:" in line and "already in use" in line
    assert "serving" not in done.stderr


def test_gateway_check_checks_without_serving(tmp_path: Path) -> None:
    done = chatd("gateway", "--check")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("config ok:") and "/v1/chat →" in done.stdout
    bad = chatd("gateway", "--check", "--set", 'gateway.bind="nowhere"')
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "chatd gateway: config error: --set gateway.bind: `gateway.bind` = 'nowhere': "
        "expected HOST:PORT, e.g. 127.0.0.1:3220"
    )


def test_help_names_the_gateway_and_every_option() -> None:
    done = chatd("--help")
    assert done.returncode == 0
    assert "chatd gateway" in done.stdout
    version_line = next(line for line in done.stdout.splitlines() if line.startswith("  --version"))
    assert "version" in version_line.replace("--version", "")


def test_tls_check_names_a_bad_certificate_and_warns_of_an_expired_one(tmp_path: Path) -> None:
    from tests.test_startup import make_certificate

    cert, key = make_certificate(tmp_path, starts="20190101000000Z", ends="20200101000000Z")
    tls = ["--set", f'chatd.server.keyfile="{key}"']
    expired = chatd("--check", *tls, "--set", f'chatd.server.certfile="{cert}"')
    assert expired.returncode == 0, expired.stderr
    assert f"the certificate '{cert}' expired" in expired.stderr
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for check in (["--check"], []):
        done = chatd(*check, *tls, "--set", f'chatd.server.certfile="{garbage}"')
        assert str(garbage) in config_error(done)


def test_with_a_certificate_the_banner_says_https_and_h2(tmp_path: Path) -> None:
    from tests.test_startup import valid_certificate

    cert, key = valid_certificate(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "lakehouse.cli", "--bind", f"127.0.0.1:{port}",
            "--set", f'chatd.server.certfile="{cert}"', "--set", f'chatd.server.keyfile="{key}"',
        ],
        cwd=ROOT, env=clean_env(), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        assert banner.startswith(f"chatd serving on https://127.0.0.1:{port} (HTTP/1.1, and h2")
        deadline = time.monotonic() + 30
        while True:
            try:
                with httpx.Client(http2=True, verify=False) as client:
                    resp = client.get(f"https://127.0.0.1:{port}/ready")
                if resp.status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        assert resp.http_version == "HTTP/2"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_every_log_line_is_json_through_shutdown(tmp_path: Path, workers: str) -> None:
    import json
    import select

    server = start(["--workers", workers, "--set", "chatd.probe_interval_secs=0"])
    assert server.proc.stderr is not None
    # Every worker ready (only one answered /ready) before the SIGTERM.
    fd = server.proc.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while seen.count(b'"chatd ready"') < int(workers):
            assert time.monotonic() < deadline, seen
            if select.select([fd], [], [], 1)[0]:
                seen += os.read(fd, 65536)
    finally:
        server.proc.terminate()
    assert server.proc.wait(30) == 0
    rest = server.proc.stderr.read()
    banner, *lines = (seen + rest).decode().strip().splitlines()
    assert banner.startswith("chatd serving on http://")
    logged = [json.loads(line) for line in lines]
    running = [line for line in logged if line["msg"].startswith("Running on")]
    assert running and running[0]["logger"] == "chatd.server"
    stopped = [line for line in logged if line["msg"].startswith("chatd stopped")]
    # Each worker's app says it stopped (at least the first, should a
    # supervisor cut the others' shutdown short).
    assert 1 <= len(stopped) <= int(workers)

"""systemd's notify protocol, against a datagram socket the test owns: the
module alone, and a real chatd (and gateway) process started as systemd
would start it, with $NOTIFY_SOCKET set."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lakehouse import sd_notify
from tests.support import ROOT
from tests.test_cli import free_port

FIXTURE = ROOT / "tests" / "fixtures" / "go_lakehouse.toml"
# Generous: a loaded 2-core CI starts Python processes slowly.
WAIT = 60.0


@contextlib.contextmanager
def notify_socket(tmp_path: Path, abstract: bool) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and the $NOTIFY_SOCKET value naming it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"chatd-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        value = "@" + name
    else:
        value = str(tmp_path / "notify.sock")
        sock.bind(value)
    sock.settimeout(WAIT)
    try:
        yield sock, value
    finally:
        sock.close()


def states(sock: socket.socket) -> dict[str, str]:
    """The next datagram, as its KEY=value lines."""
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines() if line)


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_sends_one_datagram(tmp_path: Path, abstract: bool) -> None:
    with notify_socket(tmp_path, abstract) as (sock, value):
        assert sd_notify.notify("READY=1\nSTATUS=serving", {"NOTIFY_SOCKET": value})
        assert states(sock) == {"READY": "1", "STATUS": "serving"}


@pytest.mark.parametrize("value", ["", "vsock:2:1234", "relative/path"])
def test_notify_without_a_usable_socket_sends_nothing(value: str) -> None:
    assert sd_notify.notify("READY=1", {"NOTIFY_SOCKET": value}) is False


def test_a_socket_that_is_gone_is_not_an_error(tmp_path: Path) -> None:
    assert sd_notify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False


def start(args: list[str], notify: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "LAKEHOUSE_CONFIG"}
    env["NOTIFY_SOCKET"] = notify
    return subprocess.Popen(
        [sys.executable, "-m", "lakehouse.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


def chatd_args(port: int, *extra: str) -> list[str]:
    """chatd on ``port`` with the Go lakehouse's file, as the unit starts it."""
    bind = ["--config", str(FIXTURE), "--bind", f"127.0.0.1:{port}"]
    return [*bind, *extra, "--set", "chatd.probe_interval_secs=0"]


def check_ready(sock: socket.socket, port: int) -> None:
    assert states(sock) == {"READY": "1"}
    # READY=1 means the port accepts now, not after a retry.
    assert accepts(port)


def check_stopping(sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
    terminate(proc)
    assert states(sock) == {"STOPPING": "1"}


def stop(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM unless the test sent it (a second one during the graceful
    stop would kill at once), then what the process logged."""
    if proc.returncode is None and not getattr(proc, "terminated", False):
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=WAIT)
    return err.decode()


def terminate(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.terminated = True  # type: ignore[attr-defined]


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_chatd_says_ready_once_it_accepts_reloading_on_sighup_stopping_on_sigterm(
    tmp_path: Path, abstract: bool
) -> None:
    port = free_port()
    with notify_socket(tmp_path, abstract) as (sock, value):
        proc = start(chatd_args(port), value)
        try:
            check_ready(sock, port)

            proc.send_signal(signal.SIGHUP)
            reloading = states(sock)
            assert reloading["RELOADING"] == "1"
            assert int(reloading["MONOTONIC_USEC"]) > 0
            assert states(sock) == {"READY": "1"}
            assert proc.poll() is None
            check_stopping(sock, proc)
        finally:
            err = stop(proc)
    assert proc.returncode == 0, err
    assert "config reloaded" in err


def test_the_gateway_says_ready_and_stopping(tmp_path: Path) -> None:
    port = free_port()
    with notify_socket(tmp_path, abstract=False) as (sock, value):
        proc = start(["gateway", "--config", str(FIXTURE), "--bind", f"127.0.0.1:{port}"], value)
        try:
            check_ready(sock, port)
            check_stopping(sock, proc)
        finally:
            err = stop(proc)
    assert proc.returncode == 0, err


def test_without_notify_socket_the_app_is_not_wrapped() -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        pass

    saved = os.environ.pop("NOTIFY_SOCKET", None)
    try:
        assert sd_notify.announcing(app) is app
    finally:
        if saved is not None:
            os.environ["NOTIFY_SOCKET"] = saved


def test_with_workers_the_supervisor_speaks_for_the_pool(tmp_path: Path) -> None:
    port = free_port()
    with notify_socket(tmp_path, abstract=False) as (sock, value):
        proc = start(chatd_args(port, "--workers", "2"), value)
        try:
            # Once, when both workers serve; the workers themselves say nothing.
            check_ready(sock, port)
            proc.send_signal(signal.SIGHUP)
            assert states(sock)["RELOADING"] == "1"
            # READY=1 again once both workers have been replaced.
            assert states(sock) == {"READY": "1"}
            check_stopping(sock, proc)
            sock.settimeout(1)
            with pytest.raises(TimeoutError):
                sock.recv(4096)
        finally:
            err = stop(proc)
    assert proc.returncode == 0, err
    assert err.count('"msg":"worker serving"') == 4


# A stand-in for the built-in ``ollama`` plugin whose import waits for a
# file named ``go`` beside it: it holds chatd's start-up (config checked,
# nothing serving, no SIGHUP handler yet) for as long as the test needs.
HELD_OLLAMA = """
import time
from pathlib import Path

from lakehouse.loader import BUILTIN_DIR, import_plugin_file

go = Path(__file__).with_name("go")
while not go.exists():
    time.sleep(0.01)
PLUGIN = import_plugin_file(BUILTIN_DIR / "ollama.py").PLUGIN
"""


def blocked_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigBlk line")


def wait_until_sighup_is_held(proc: subprocess.Popen[bytes]) -> None:
    bit = 1 << (signal.SIGHUP - 1)
    deadline = time.monotonic() + WAIT
    while not blocked_signals(proc.pid) & bit:
        assert proc.poll() is None, "chatd ended while starting"
        assert time.monotonic() < deadline, "chatd never held SIGHUP while starting"
        time.sleep(0.01)


@contextlib.contextmanager
def sighup_while_starting(
    tmp_path: Path, *workers: str
) -> Iterator[tuple[socket.socket, subprocess.Popen[bytes], list[str]]]:
    """chatd sent a SIGHUP while held in its start-up, then let go on and
    seen READY; stopped on the way out, its log put in the list."""
    log: list[str] = []
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "ollama.py").write_text(HELD_OLLAMA)
    port = free_port()
    args = chatd_args(port, *workers, "--set", f'chatd.plugin_dirs=["{plugins}"]')
    with notify_socket(tmp_path, abstract=False) as (sock, value):
        proc = start(args, value)
        try:
            # SIGHUP's default action would end it here.
            wait_until_sighup_is_held(proc)
            proc.send_signal(signal.SIGHUP)
            (plugins / "go").touch()
            check_ready(sock, port)
            yield sock, proc, log
            check_stopping(sock, proc)
        finally:
            log.append(stop(proc))


def test_a_sighup_while_chatd_starts_waits_and_becomes_a_reload(tmp_path: Path) -> None:
    with sighup_while_starting(tmp_path) as (sock, proc, log):
        # Honoured once the handler is in: the file as it is now is read.
        assert states(sock)["RELOADING"] == "1"
        assert states(sock) == {"READY": "1"}
        assert proc.poll() is None
    assert proc.returncode == 0, log
    assert "config reloaded" in log[0]


def test_a_sighup_while_a_pool_starts_leaves_it_starting(tmp_path: Path) -> None:
    with sighup_while_starting(tmp_path, "--workers", "2") as (sock, proc, log):
        # No roll for it (the workers started after it), and the next
        # SIGHUP rolls as ever.
        proc.send_signal(signal.SIGHUP)
        assert states(sock)["RELOADING"] == "1"
        assert states(sock) == {"READY": "1"}
    err = log[0]
    assert proc.returncode == 0, err
    assert err.count("rolling workers (SIGHUP)") == 1
    assert err.count('"msg":"worker serving"') == 4


def test_one_worker_says_stopping_at_sigterm_while_requests_drain(tmp_path: Path) -> None:
    # An upstream that takes the request and never answers: the caller's
    # request stays in flight until the test lets it go.
    upstream = socket.create_server(("127.0.0.1", 0))
    upstream.settimeout(WAIT)
    url = f"http://127.0.0.1:{upstream.getsockname()[1]}"
    port = free_port()
    args = chatd_args(
        port, "--set", f"chatd.ollama_url={url}", "--set", "chatd.server.graceful_timeout_secs=600"
    )
    answers: list[int] = []
    with upstream, notify_socket(tmp_path, abstract=False) as (sock, value):
        proc = start(args, value)
        try:
            check_ready(sock, port)
            caller = threading.Thread(target=lambda: answers.append(ask(port)))
            caller.start()
            held, _ = upstream.accept()
            with held:
                terminate(proc)
                # At the signal, with the request still in flight (it could
                # only have ended by the upstream, which holds it).
                assert states(sock) == {"STOPPING": "1"}
                assert caller.is_alive() and not answers
                upstream.close()  # so a retry finds nobody either
            # The upstream gone, the caller is answered and chatd exits.
            caller.join(WAIT)
        finally:
            err = stop(proc)
    assert answers == [502], err
    assert proc.returncode == 0, err


def ask(port: int) -> int:
    body = json.dumps({"model": "llama3", "messages": [{"role": "user", "content": "hi"}]})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request("POST", "/chat", body, {"Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()

"""StubThread (a stub on its own loop, for sync callers) and ``python -m lakehouse.stubs``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from lakehouse.stubs import Fault, StubThread


def fetch(url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_thread_serves_until_stopped() -> None:
    thread = StubThread("ollama")
    url = thread.start()
    assert url == thread.base_url and url.startswith("http://127.0.0.1:")
    try:
        status, body = fetch(
            url + "/api/chat",
            {
                "model": "qwen3.5:latest",
                "messages": [{"role": "user", "content": "Say hello."}],
                "stream": False,
                "think": False,
            },
        )
        assert status == 200 and body["message"]["content"].startswith("Hello from the stub")
        assert body["prompt_eval_count"] > 0 and body["eval_count"] > 0
        # Faults and records are reachable from the owning thread.
        thread.stub.fail_next(Fault(kind="status", status=503))
        assert fetch(url + "/api/chat", {"model": "qwen3", "messages": []})[0] == 503
        assert [r.path for r in thread.stub.received] == ["/api/chat", "/api/chat"]
        with pytest.raises(RuntimeError):
            thread.start()
    finally:
        thread.stop()
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    thread.stop()  # stopping twice is harmless


def test_thread_context_manager_and_options() -> None:
    with StubThread("kimi", key="k", require_user_agent="KimiCLI/") as thread:
        assert thread.base_url.endswith("/coding/v1")
        assert fetch(thread.base_url + "/models")[0] == 401


def test_thread_start_failure_is_raised_in_the_caller() -> None:
    with StubThread("ollama") as first:
        port = int(first.base_url.rsplit(":", 1)[1])
        with pytest.raises(OSError):
            StubThread("ollama").start(port=port)
    with pytest.raises(ValueError):
        StubThread("nope")


def test_module_runs_in_the_foreground() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lakehouse.stubs",
            "--flavour",
            "openrouter",
            "--port",
            "0",
            "--key",
            "k",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/api/v1")
        status, body = fetch(url + "/models")
        assert status == 200 and body["data"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0

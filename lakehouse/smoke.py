"""``bin/chatd-smoke [URL]``: six acceptance checks of chatd's contract
(listed in ``checks``; the routes and errors are the README's).

Against a running chatd with only the local default provider. Without a
URL it starts ``chatd --dev`` on a free port (provider keys removed from
its environment) and stops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from lakehouse import config as configuration

Check = tuple[str, Callable[[], str | None]]


def call(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def checks(base: str, expected: list[str], model: str) -> list[Check]:
    hello = [{"role": "user", "content": "Say hello."}]

    def listing() -> str | None:
        status, body = call(base, "GET", "/chat/providers")
        names = list((body or {}).get("providers", {}))
        if status != 200 or names != sorted(expected):
            return f"status {status}, providers {names}, expected {sorted(expected)}"
        if not all(body["providers"].values()):
            return f"not all available: {body['providers']}"
        return None

    def bare() -> str | None:
        status, body = call(base, "POST", "/chat", {"model": model, "messages": hello})
        if status != 200:
            return f"status {status}: {body}"
        if body["provider"] not in expected:
            return f"went to {body['provider']}"
        if not body["content"] or body["prompt_tokens"] <= 0 or body["completion_tokens"] <= 0:
            return f"no content or token counts: {body}"
        if not isinstance(body.get("latency_ms"), int) or body["latency_ms"] < 0:
            return f"no latency: {body}"
        return None

    def prefixed() -> str | None:
        status, body = call(base, "POST", "/chat", {"model": f"ollama/{model}", "messages": hello})
        if status != 200 or body["model"] != model or body["provider"] != "ollama":
            return f"status {status}: {body}"
        return None

    def cloud() -> str | None:
        status, body = call(base, "POST", "/chat", {"model": f"{model}:cloud", "messages": hello})
        return None if status == 404 else f"status {status}: {body}"

    def unknown() -> str | None:
        status, body = call(base, "POST", "/chat", {"model": f"unknown/{model}", "messages": hello})
        if status != 502 or f"unknown/{model}" not in body["error"]["message"]:
            return f"status {status}: {body}"
        return None

    def missing() -> str | None:
        status, body = call(base, "POST", "/chat", {"messages": hello})
        return (
            None
            if status == 400 and body["error"]["code"] == "bad_request"
            else f"status {status}: {body}"
        )

    return [
        ("providers listing shows exactly the registered providers", listing),
        (f"bare model {model} goes to the default with content, tokens, latency", bare),
        (f"ollama/{model} reaches the upstream with the prefix stripped", prefixed),
        (f"{model}:cloud without ollama_cloud registered → 404", cloud),
        (f"unknown/{model} falls to the default unchanged → upstream error → 502", unknown),
        ("missing model → 400", missing),
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_dev() -> tuple[str, subprocess.Popen[bytes]]:
    config = configuration.load(configuration.default_config_path())
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {p.key_env for p in config.chatd.providers.values()}
    }
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakehouse.cli", "--dev", "--bind", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise SystemExit(f"chatd --dev exited with {proc.returncode}:\n{err}")
        try:
            if call(base, "GET", "/ready")[0] == 200:
                return base, proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("chatd --dev did not become ready in 30s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatd-smoke")
    parser.add_argument("url", nargs="?", help="a running chatd (default: start a dev one)")
    parser.add_argument(
        "--model", default="qwen3.5:latest", help="a model the default upstream has"
    )
    parser.add_argument(
        "--expect", default="ollama", help="comma-separated providers the listing must show"
    )
    args = parser.parse_args(argv)
    proc = None
    base = args.url.rstrip("/") if args.url else None
    if base is None:
        base, proc = start_dev()
    try:
        results = []
        for i, (name, check) in enumerate(checks(base, args.expect.split(","), args.model), 1):
            try:
                problem = check()
            except (OSError, KeyError, TypeError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            results.append(problem is None)
            print(
                f"{i}. {'PASS' if problem is None else 'FAIL'}  {name}"
                + ("" if problem is None else f"\n     {problem}")
            )
        print(f"{sum(results)}/{len(results)} PASS")
        return 0 if all(results) else 1
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())

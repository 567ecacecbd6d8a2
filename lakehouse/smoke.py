"""``bin/chatd-smoke [URL]``: six acceptance checks of routing and errors, against any chatd.

Without a URL it starts ``chatd --dev`` on a free port (provider keys
removed from its environment) and stops it afterwards. Against a running
instance each check judges what that instance serves: the providers it
lists (or ``--expect``), and whether ``ollama_cloud`` is registered for the
``:cloud`` check. Each line says what it checked. ``--token`` (or
``$CHATD_TOKEN``) is sent as a bearer token, for instances with auth on.
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
from collections.abc import Callable, Mapping
from typing import Any

from lakehouse import config as configuration

# A check: what it checks (said on its line), and the check itself.
Check = tuple[Callable[[], str], Callable[[], str | None]]
TOKEN_ENV = "CHATD_TOKEN"


class Instance:
    """The chatd under test, called with the caller's bearer token."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._providers: dict[str, bool] | None = None

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers=self._headers
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def providers(self) -> dict[str, bool]:
        """The instance's listing, read once."""
        if self._providers is None:
            status, body = self.call("GET", "/chat/providers")
            if status != 200:
                raise ValueError(f"GET /chat/providers: status {status}: {body}")
            self._providers = dict(body["providers"])
        return self._providers


def call(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return Instance(base, None).call(method, path, body)


def checks(
    chatd: Instance, expected: list[str] | None, model: str, cloud_model: str
) -> list[Check]:
    hello = [{"role": "user", "content": "Say hello."}]

    def served() -> list[str]:
        return sorted(expected) if expected is not None else sorted(chatd.providers())

    def listing_says() -> str:
        if expected is not None:
            return f"providers listing shows exactly {', '.join(sorted(expected))} (--expect)"
        return "providers listing is sorted, has the default, every provider available"

    def listing() -> str | None:
        names = list(chatd.providers())
        if expected is not None and names != sorted(expected):
            return f"providers {names}, expected {sorted(expected)}"
        if names != sorted(names) or "ollama" not in names:
            return f"providers {names}: not sorted, or no `ollama`"
        if not all(chatd.providers().values()):
            return f"not all available: {chatd.providers()}"
        return None

    def bare() -> str | None:
        status, body = chatd.call("POST", "/chat", {"model": model, "messages": hello})
        if status != 200:
            return f"status {status}: {body}"
        if body["provider"] not in served():
            return f"went to {body['provider']}, not one of {served()}"
        if not body["content"] or body["prompt_tokens"] <= 0 or body["completion_tokens"] <= 0:
            return f"no content or token counts: {body}"
        if not isinstance(body.get("latency_ms"), int) or body["latency_ms"] < 0:
            return f"no latency: {body}"
        return None

    def prefixed() -> str | None:
        body_in = {"model": f"ollama/{model}", "messages": hello}
        status, body = chatd.call("POST", "/chat", body_in)
        if status != 200 or body["model"] != model or body["provider"] != "ollama":
            return f"status {status}: {body}"
        return None

    def cloud_registered() -> bool:
        return "ollama_cloud" in chatd.providers()

    def cloud_says() -> str:
        if cloud_registered():
            return f"{cloud_model}:cloud reaches ollama_cloud (registered) with the suffix stripped"
        return f"{cloud_model}:cloud with ollama_cloud not registered → 404"

    def cloud() -> str | None:
        body_in = {"model": f"{cloud_model}:cloud", "messages": hello}
        status, body = chatd.call("POST", "/chat", body_in)
        if not cloud_registered():
            return None if status == 404 else f"status {status}: {body}"
        if status != 200 or body["provider"] != "ollama_cloud":
            return f"status {status}: {body}"
        if body["model"].lower().endswith(":cloud"):
            return f"the upstream answered for {body['model']!r}: suffix not stripped"
        return None

    def unknown() -> str | None:
        body_in = {"model": f"unknown/{model}", "messages": hello}
        status, body = chatd.call("POST", "/chat", body_in)
        if status != 502 or f"unknown/{model}" not in body["error"]["message"]:
            return f"status {status}: {body}"
        return None

    def missing() -> str | None:
        status, body = chatd.call("POST", "/chat", {"messages": hello})
        return (
            None
            if status == 400 and body["error"]["code"] == "bad_request"
            else f"status {status}: {body}"
        )

    return [
        (listing_says, listing),
        (lambda: f"bare model {model} goes to a listed provider with content and usage", bare),
        (lambda: f"ollama/{model} reaches ollama with the prefix stripped", prefixed),
        (cloud_says, cloud),
        (lambda: f"unknown/{model} falls to the default unchanged → upstream error → 502", unknown),
        (lambda: "missing model → 400", missing),
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_chatd(
    args: list[str],
    env: Mapping[str, str],
    *,
    cwd: str | None = None,
    stdout: int = subprocess.DEVNULL,
) -> tuple[str, subprocess.Popen[bytes]]:
    """chatd run with ``args`` on a free loopback port, returned once
    ``/ready`` answers 200; RuntimeError (with its stderr) when it exits
    first or is not ready within 30 s."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakehouse.cli", *args, "--bind", f"127.0.0.1:{port}"],
        cwd=cwd,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"chatd {' '.join(args)} exited with {proc.returncode}:\n{err}")
        try:
            if call(base, "GET", "/ready")[0] == 200:
                return base, proc
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"chatd {' '.join(args)} did not become ready in 30s")


def start_dev() -> tuple[str, subprocess.Popen[bytes]]:
    config = configuration.load(configuration.default_config_path())
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {p.key_env for p in config.chatd.providers.values()}
    }
    try:
        return start_chatd(["--dev"], env)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatd-smoke", description=__doc__.split("\n")[0])
    parser.add_argument("url", nargs="?", help="a running chatd (default: start a dev one)")
    parser.add_argument(
        "--model", default="qwen3.5:latest", help="a model the default (ollama) upstream has"
    )
    parser.add_argument(
        "--cloud-model",
        help="the model sent as <it>:cloud when ollama_cloud is registered (default: --model)",
    )
    parser.add_argument(
        "--expect",
        help="comma-separated providers the listing must show exactly "
        "(default: judge the listing the instance serves)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"bearer token for an instance with auth on (default: ${TOKEN_ENV})",
    )
    args = parser.parse_args(argv)
    proc = None
    base = args.url.rstrip("/") if args.url else None
    if base is None:
        base, proc = start_dev()
    expected = args.expect.split(",") if args.expect else None
    chatd = Instance(base, args.token)
    try:
        results = []
        for i, (says, check) in enumerate(
            checks(chatd, expected, args.model, args.cloud_model or args.model), 1
        ):
            try:
                problem = check()
                name = says()
            except (OSError, KeyError, TypeError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                name = f"check {i}"
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

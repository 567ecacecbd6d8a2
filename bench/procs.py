"""The bench's processes and the machine: paths, pinning, /proc readings,
starting and stopping the stubs and chatd, and the load generators' install."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
STUB = BENCH / "stub.py"
WRK_SCRIPT = BENCH / "wrk_report.lua"
MODEL = "qwen3.5:latest"
SLOW_PROVIDER = "slow"  # a second Ollama provider pointed at the delayed stub
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
# Provider concurrency in the bench config: room for the largest stream row.
STREAM_LIMIT = 4096


def chat_body(model: str = MODEL) -> str:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}]}, separators=(",", ":")
    )


# --------------------------------------------------------------------------- processes


def pinned(cpu: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu is not None else argv


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def rss_kb(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def tree_pids(pid: int) -> list[int]:
    """A process and its descendants (a pool's supervisor and its workers)."""
    out = [pid]
    for each in out:
        with contextlib.suppress(OSError), open(f"/proc/{each}/task/{each}/children") as f:
            out.extend(int(child) for child in f.read().split())
    return out


def tree_ticks(pid: int) -> int:
    total = 0
    for each in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += cpu_ticks(each)
    return total


def tree_rss_kb(pid: int, key: str = "VmRSS") -> int:
    """Summed over the process tree; for VmHWM an upper bound of the tree's
    peak (each process's own peak, not necessarily at the same moment)."""
    total = 0
    for each in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += rss_kb(each, key)
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None, grace: float = 5) -> str:
    """SIGTERM, then SIGKILL after ``grace`` seconds; says how it went."""
    if proc is None or proc.poll() is not None:
        return "already exited"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return f"still running {grace:g} s after SIGTERM, killed"
    return f"exited {proc.returncode} {time.monotonic() - t0:.2f} s after SIGTERM"


def start_stub(
    cpu: str | None, delay_ms: float, log: Path, extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[str], int]:
    argv = [sys.executable, str(STUB), "--port", "0", "--delay-ms", str(delay_ms), *extra]
    proc = subprocess.Popen(
        pinned(cpu, argv), stdout=subprocess.PIPE, stderr=log.open("w"), text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        stop(proc)
        raise SystemExit(f"bench: stub did not start: {line!r}; see {log}")
    return proc, int(line.split()[1])


def http(method: str, url: str, body: str | None = None) -> tuple[int, bytes]:
    data = body.encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def write_config(
    path: Path, port: int, stub_port: int, slow_port: int | None,
    tick_ports: dict[str, int] | None = None, gateway_port: int = 0,
) -> None:  # fmt: skip
    text = (
        "[gateway]\n"
        f'bind = "127.0.0.1:{gateway_port}"\n'
        f'routes = {{ "/v1/chat" = "http://127.0.0.1:{port}" }}\n'
        "[chatd]\n"
        f'bind = "127.0.0.1:{port}"\n'
        # Features on, as in production: an access line per request,
        # metrics, request IDs, health probes.
        'log_level = "info"\n'
        "[chatd.providers.ollama]\n"
        f'base_url = "http://127.0.0.1:{stub_port}"\n'
        # Raised from the defaults (256 + 512 queued), which refuse a
        # 1,000-stream row with 503s by design.
        f"max_concurrency = {STREAM_LIMIT}\n"
    )
    if slow_port is not None:
        text += (
            f"[chatd.providers.{SLOW_PROVIDER}]\n"
            'plugin = "ollama"\n'
            f'base_url = "http://127.0.0.1:{slow_port}"\n'
        )
    for name, tick_port in (tick_ports or {}).items():
        text += (
            f"[chatd.providers.{name}]\n"
            'plugin = "ollama"\n'
            f'base_url = "http://127.0.0.1:{tick_port}"\n'
            f"max_concurrency = {STREAM_LIMIT}\n"
        )
    path.write_text(text)


def start_chatd(
    cpu: str | None, config: Path, port: int, log: Path, *extra: str, workers: int = 1
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "lakehouse.cli", "--config", str(config),
        "--bind", f"127.0.0.1:{port}", "--workers", str(workers), *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(
        pinned(cpu, argv), cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    return serving(proc, port, log, "chatd")


def start_gateway(cpu: str | None, config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``bin/chatd gateway`` in front of chatd; a fresh one has a cold pool."""
    argv = [
        sys.executable, "-m", "lakehouse.cli", "gateway", "--config", str(config),
        "--bind", f"127.0.0.1:{port}",
    ]  # fmt: skip
    proc = subprocess.Popen(
        pinned(cpu, argv), cwd=ROOT, stdout=log.open("a"), stderr=subprocess.STDOUT
    )
    return serving(proc, port, log, "the gateway")


def ensure_tools(install: bool) -> list[str]:
    """The load generators still missing; with ``install``, apt-get them first."""
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if not missing or not install:
        return missing
    packages = {"wrk": "wrk", "h2load": "nghttp2-client"}
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "-n", "apt-get"]
    print(f"bench: installing {', '.join(missing)} with apt-get...", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = {"stdout": subprocess.DEVNULL, "env": env, "check": True}
    subprocess.run([*apt, "update", "-qq"], **quiet)  # type: ignore[call-overload]
    subprocess.run(
        [*apt, "install", "-y", "-qq", *(packages[t] for t in missing)],
        **quiet,  # type: ignore[call-overload]
    )
    still = [tool for tool in missing if shutil.which(tool) is None]
    if still:
        raise SystemExit(f"bench: could not install {', '.join(still)}")
    return []


def serving(
    proc: subprocess.Popen[bytes], port: int, log: Path, what: str
) -> subprocess.Popen[bytes]:
    """``proc`` once its ``/health`` answers 200; stopped and reported (with
    its log) if it exits or stays silent for 60 s."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: {what} exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError):
            if http("GET", f"http://127.0.0.1:{port}/health")[0] == 200:
                return proc
        time.sleep(0.1)
    stop(proc)
    raise SystemExit(f"bench: {what} did not answer /health within 60 s:\n{log.read_text()}")

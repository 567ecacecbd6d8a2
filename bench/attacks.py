"""Replays the attacks of issue 11 against one chatd worker and reports the targets.

    .venv/bin/python bench/attacks.py            # the issue's sizes (~2 min)
    .venv/bin/python bench/attacks.py --quick    # smaller, ~30 s
    .venv/bin/python bench/attacks.py --tls      # also 3 rounds of 1,000 TLS connections

Three processes: chatd (one worker, ``python -m lakehouse.cli``), an upstream
(``attacks.py upstream``: Ollama's ``/api/chat``, answering at once unless the
prompt is ``hang``, then never) and a normal caller (``attacks.py caller``:
sequential ``POST /chat`` over HTTP/1.1 keep-alive to the same provider, its
latencies as JSON). This process is the attacker:

1. rapid reset: N x (POST /chat that hangs upstream, then RST_STREAM) on one
   h2c connection; targets: the other caller 0 errors, p99 < 50 ms; nothing in
   flight upstream 1 s after;
2. light rapid reset: 20,000 x (GET /health + RST_STREAM); target: GOAWAY or a
   closed connection, no traceback in chatd's log;
3. dribblers: 500 connections sending a head a byte a second and 200 that
   declare a 100-byte body and send one; targets: the other caller's
   p99 < 20 ms, every dribbler closed after ``read_timeout_secs``;
4. (``--tls``) 3 rounds of 1,000 TLS connections (half stalled after their
   ClientHello, half complete); target: RSS back within +10 MB of the baseline.

RSS is chatd's VmRSS; target after 1-3: within +20 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HELLO = [{"role": "user", "content": "hi"}]
REPLY = (
    b'{"model":"m","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant",'
    b'"content":"hello"},"done":true,"done_reason":"stop","prompt_eval_count":1,"eval_count":1}'
)


# -- the upstream and the normal caller, each its own process ---------------


async def upstream() -> None:
    from aiohttp import web

    in_flight = 0

    async def chat(request: web.Request) -> web.Response:
        nonlocal in_flight
        in_flight += 1
        try:
            body = await request.json()
            if body["messages"][0]["content"] == "hang":
                await asyncio.sleep(3600)  # cancelled when chatd closes the connection
            return web.Response(body=REPLY, content_type="application/json")
        finally:
            in_flight -= 1

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"in_flight": in_flight})

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    app.router.add_get("/api/version", lambda r: web.json_response({"version": "0"}))
    app.router.add_get("/in_flight", count)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


async def caller(base: str, seconds: float) -> None:
    import httpx

    latencies: list[float] = []
    errors = 0
    body = {"model": "qwen3.5:latest", "messages": HELLO}
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            started = time.perf_counter()
            try:
                status = (await client.post("/chat", json=body)).status_code
            except httpx.HTTPError:
                status = 0
            latencies.append((time.perf_counter() - started) * 1000)
            errors += status != 200
            await asyncio.sleep(0.01)
    print(json.dumps({"latencies": latencies, "errors": errors}), flush=True)


# -- the attacker --------------------------------------------------------


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def spawn(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )


class Caller:
    """The normal caller, running while an attack does."""

    def __init__(self, base: str, seconds: float) -> None:
        self.proc = spawn("caller", base, str(seconds))

    def result(self) -> dict[str, Any]:
        out, _ = self.proc.communicate(timeout=600)
        data = json.loads(out)
        lat = sorted(data["latencies"])
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
        return {
            "requests": len(lat),
            "errors": data["errors"],
            "p50_ms": round(statistics.median(lat), 2) if lat else None,
            "p99_ms": round(p99, 2),
        }


async def in_flight(upstream_port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", upstream_port)
    writer.write(b"GET /in_flight HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    return int(json.loads(data.split(b"\r\n\r\n", 1)[1])["in_flight"])


async def rapid_reset(base: str, upstream_port: int, count: int, chatd: int) -> dict[str, Any]:
    from tests.h2_client import RawH2

    before = rss_mb(chatd)
    other = Caller(base, 4.0)
    await asyncio.sleep(1.0)  # the caller's baseline
    hang = [{"role": "user", "content": "hang"}]
    body = json.dumps({"model": "qwen3.5:latest", "messages": hang})
    attacker = await RawH2.connect(base)
    started = time.monotonic()
    sent = 0
    data = body.encode()
    while sent < count and attacker.goaway is None and not attacker.closed.is_set():
        if attacker.conn.outbound_flow_control_window < len(data):
            attacker.flush()
            await asyncio.sleep(0.001)  # for the server's WINDOW_UPDATE
            continue
        attacker.reset(attacker.start("POST", "/chat", data, flush=False), flush=False)
        sent += 1
        if sent % 100 == 0:
            attacker.flush()
            await asyncio.sleep(0)
    attacker.flush()
    took = time.monotonic() - started
    await asyncio.sleep(1.0)
    left = await in_flight(upstream_port)
    goaway = attacker.goaway.error_code.name if attacker.goaway is not None else None
    await attacker.close()
    return {
        "streams_sent": sent,
        "sent_in_s": round(took, 3),
        "goaway": goaway,
        "other_caller": other.result(),
        "upstream_in_flight_1s_after": left,
        "rss_delta_mb": round(rss_mb(chatd) - before, 1),
    }


async def health_reset(base: str, count: int, chatd: int) -> dict[str, Any]:
    from tests.h2_client import RawH2

    before = rss_mb(chatd)
    attacker = await RawH2.connect(base)
    started = time.monotonic()
    sent = 0
    while sent < count and attacker.goaway is None and not attacker.closed.is_set():
        for _ in range(min(1000, count - sent)):
            attacker.reset(attacker.start("GET", "/health", flush=False), flush=False)
            sent += 1
        attacker.flush()
        await asyncio.sleep(0.001)
    await asyncio.wait_for(attacker.closed.wait(), 30)
    goaway = attacker.goaway.error_code.name if attacker.goaway is not None else None
    await attacker.close()
    return {
        "streams_sent": sent,
        "sent_in_s": round(time.monotonic() - started, 3),
        "goaway": goaway,
        "rss_delta_mb": round(rss_mb(chatd) - before, 1),
    }


async def dribble(
    writer: asyncio.StreamWriter,
    reader: asyncio.StreamReader,
    head: bytes,
    drip: bytes,
    seconds: float,
) -> tuple[float, bytes]:
    """Send ``head``, then ``drip`` a byte a second (then nothing) for up to
    ``seconds``; when the server closed, and what it said."""
    started = time.monotonic()
    writer.write(head)
    got = b""
    with contextlib.suppress(ConnectionError):
        for second in range(int(seconds)):
            try:
                got = await asyncio.wait_for(reader.read(200), 1.0)
                break  # answered, or closed
            except TimeoutError:
                if second < len(drip):
                    writer.write(drip[second : second + 1])
    writer.close()
    return time.monotonic() - started, got[:12]


async def dribblers(
    base: str, heads: int, bodies: int, seconds: float, chatd: int
) -> dict[str, Any]:
    host, port = base.removeprefix("http://").split(":")
    before = rss_mb(chatd)
    other = Caller(base, seconds)
    conns = [await asyncio.open_connection(host, int(port)) for _ in range(heads + bodies)]
    head_drip = b"POST /chat HTTP/1.1\r\nhost: x\r\n" + b"x-pad: " + b"a" * 4000
    body_head = b"POST /chat HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n"
    # Heads a byte a second; bodies of Content-Length 100 stopped after a byte.
    jobs = [
        dribble(w, r, b"P", head_drip[1:], seconds)
        if i < heads
        else dribble(w, r, body_head + b"{", b"", seconds)
        for i, (r, w) in enumerate(conns)
    ]
    results = await asyncio.gather(*jobs)
    closed_at = sorted(t for t, _ in results)
    timed_out = sum(got.startswith(b"HTTP/1.1 408") for _, got in results)
    return {
        "connections": len(results),
        "answered_408": timed_out,
        "closed_after_s": {
            "min": round(closed_at[0], 1),
            "median": round(statistics.median(closed_at), 1),
            "max": round(closed_at[-1], 1),
        },
        "other_caller": other.result(),
        "rss_delta_mb": round(rss_mb(chatd) - before, 1),
    }


def client_hello() -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


async def tls_rounds(
    port: int, chatd: int, rounds: int, per_round: int, stalled_share: float = 0.5
) -> dict[str, Any]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    hello = client_hello()
    await asyncio.sleep(1)
    baseline = rss_mb(chatd)
    after: list[float] = []
    for _ in range(rounds):
        stalled = []
        n_stalled = round(per_round * stalled_share)
        for _ in range(n_stalled):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(hello)  # and nothing more
            stalled.append(writer)
        for _ in range(per_round - n_stalled):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            await reader.read()
            writer.close()
        for writer in stalled:
            writer.close()
        await asyncio.sleep(3)  # every connection closed on both sides
        after.append(round(rss_mb(chatd), 1))
    return {
        "baseline_mb": round(baseline, 1),
        "after_each_round_mb": after,
        "delta_mb": round(after[-1] - baseline, 1),
    }


def start_chatd(
    port: int,
    upstream_port: int,
    *sets: str,
    env: dict[str, str] | None = None,
    probe: str | None = None,
) -> subprocess.Popen[bytes]:
    folder = Path(tempfile.mkdtemp(prefix="chatd-attacks-"))
    config = folder / "chatd.toml"
    config.write_text(
        f'[chatd]\nbind = "127.0.0.1:{port}"\nprobe_interval_secs = 0\n'
        f'[chatd.providers.ollama]\nbase_url = "http://127.0.0.1:{upstream_port}"\n'
    )
    argv = [sys.executable, "-m", "lakehouse.cli", "--config", str(config)]
    if probe is not None:
        argv[1:3] = [__file__, "chatd-with-probe", probe]
    for item in sets:
        argv += ["--set", item]
    log = (folder / "chatd.log").open("wb")
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    proc.log_path = folder / "chatd.log"  # type: ignore[attr-defined]
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"chatd did not start; see {folder / 'chatd.log'}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed(folder: Path) -> tuple[str, str]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def stop(proc: subprocess.Popen[Any]) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return round(time.monotonic() - started, 2)


async def attack(args: argparse.Namespace) -> dict[str, Any]:
    up = spawn("upstream")
    try:
        return await attack_through(args, up)
    finally:
        stop(up)


async def attack_through(args: argparse.Namespace, up: subprocess.Popen[str]) -> dict[str, Any]:
    assert up.stdout is not None
    upstream_port = int(up.stdout.readline().split()[1])
    port = free_port()
    timeout = 5 if args.quick else 30
    chatd = start_chatd(port, upstream_port, f"chatd.server.read_timeout_secs={timeout}")
    base = f"http://127.0.0.1:{port}"
    report: dict[str, Any] = {}
    if args.tls_only:
        stop(chatd)
        return await tls_report(args, upstream_port, report)
    try:
        await asyncio.sleep(1)
        report["rss_start_mb"] = round(rss_mb(chatd.pid), 1)
        report["rapid_reset"] = await rapid_reset(
            base, upstream_port, 300 if args.quick else 1000, chatd.pid
        )
        report["health_reset"] = await health_reset(base, 5000 if args.quick else 20000, chatd.pid)
        seconds = timeout * 2 if args.quick else 60
        report["dribblers"] = await dribblers(
            base, 100 if args.quick else 500, 40 if args.quick else 200, seconds, chatd.pid
        )
        report["rss_end_mb"] = round(rss_mb(chatd.pid), 1)
    finally:
        report["sigterm_exit_s"] = stop(chatd)
        with open(chatd.log_path) as f:  # type: ignore[attr-defined]  # noqa: ASYNC230
            report["tracebacks_in_log"] = f.read().count("Traceback")
        report["log"] = str(chatd.log_path)  # type: ignore[attr-defined]
    if args.tls:
        return await tls_report(args, upstream_port, report)
    return report


async def tls_report(
    args: argparse.Namespace, upstream_port: int, report: dict[str, Any]
) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="chatd-tls-"))
    cert, key = self_signed(folder)
    port = free_port()
    env = dict(item.split("=", 1) for item in args.tls_env)
    probe = str(folder / "probe.jsonl")
    tls = start_chatd(
        port, upstream_port, f"chatd.server.certfile={json.dumps(cert)}",
        f"chatd.server.keyfile={json.dumps(key)}", env=env, probe=probe,
    )  # fmt: skip
    try:
        per_round = 200 if args.quick else 1000
        rounds = await tls_rounds(port, tls.pid, args.tls_rounds, per_round, args.tls_stalled)
        report["tls"] = {"env": env, "stalled_share": args.tls_stalled, **rounds}
        tls.send_signal(signal.SIGUSR1)
        await asyncio.sleep(2)
        with open(probe) as f:  # noqa: ASYNC230
            report["tls"]["probe"] = [json.loads(line) for line in f]
    finally:
        stop(tls)
    return report


def chatd_with_probe(report: str, argv: list[str]) -> int:
    """chatd, answering SIGUSR1 by collecting garbage, trimming the C heap
    and appending RSS before and after each to ``report``: what it gives
    back is retention, what stays is a leak."""
    import ctypes
    import gc

    from lakehouse.cli import main as chatd_main

    libc = ctypes.CDLL("libc.so.6")

    def probe(signum: int, frame: Any) -> None:
        pid = os.getpid()
        line = {"rss_mb": round(rss_mb(pid), 1), "objects": len(gc.get_objects())}
        line["gc_collected"] = gc.collect()
        line["rss_after_gc_mb"] = round(rss_mb(pid), 1)
        libc.malloc_trim(0)
        line["rss_after_trim_mb"] = round(rss_mb(pid), 1)
        with open(report, "a") as f:
            f.write(json.dumps(line) + "\n")

    signal.signal(signal.SIGUSR1, probe)
    return chatd_main(argv)


def main() -> None:
    if sys.argv[1:2] == ["chatd-with-probe"]:
        sys.exit(chatd_with_probe(sys.argv[2], sys.argv[3:]))
    if sys.argv[1:2] == ["upstream"]:
        asyncio.run(upstream())
        return
    if sys.argv[1:2] == ["caller"]:
        asyncio.run(caller(sys.argv[2], float(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--tls-only", action="store_true")
    parser.add_argument("--tls-rounds", type=int, default=3)
    parser.add_argument("--tls-stalled", type=float, default=0.5, help="share stalled after hello")
    parser.add_argument(
        "--tls-env", action="append", default=[], help="KEY=VALUE in the TLS chatd's environment"
    )
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(json.dumps(asyncio.run(attack(args)), indent=2))


if __name__ == "__main__":
    main()

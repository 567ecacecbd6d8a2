"""The chatd benchmark (run it as ``bench/run``; see bench/README.md).

chatd serves with one worker pinned to CPU 0; the stub upstreams and the load
generators (wrk for HTTP/1.1 keep-alive, h2load for h2c with prior knowledge)
share CPU 1. Every row runs once per round and the rows are interleaved round
by round, so a noisy neighbour hits them all alike; each figure is the median
over the rounds, with min..max.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
STUB = BENCH / "stub.py"
STREAMS = BENCH / "streams.py"
WRK_SCRIPT = BENCH / "wrk_report.lua"
MODEL = "qwen3.5:latest"
SLOW_PROVIDER = "slow"  # a second Ollama provider pointed at the delayed stub
# Stream rows whose chunks come at another pace than the fast stub's get a
# stub of their own, behind an Ollama provider named "tick<ms>".
TICK_PROVIDER = "tick"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# Budget (native route, HTTP/1.1, one worker), from the performance issue.
BUDGET_CPU_MS = 0.35
BUDGET_ADDED_P50_MS = 0.3
BUDGET_DELAY_RPS = 1240
BUDGET_IDLE_RSS_MB = 60
BUDGET_PEAK_RSS_MB = 100
# Budget of the h2c and streaming issue (#18).
BUDGET_H2_CPU_RATIO = 1.05  # h2c CPU/request vs HTTP/1.1 at c=16
BUDGET_CHUNK_RATIO = 3.0  # chatd CPU per chunk vs the producer's (the stub's)
BUDGET_H2_CHUNK_RATIO = 1.1  # h2c CPU per chunk vs HTTP/1.1
BUDGET_ADDED_CHUNK_P99_MS = 5.0  # at the largest stream row
BUDGET_STREAM_RSS_KB = 20.0  # RSS per open stream at the largest stream row
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
    cpu: str | None, config: Path, port: int, log: Path, workers: int = 1
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "lakehouse.cli", "--config", str(config),
        "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
    ]  # fmt: skip
    proc = subprocess.Popen(
        pinned(cpu, argv), cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: chatd exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError):
            if http("GET", f"http://127.0.0.1:{port}/health")[0] == 200:
                return proc
        time.sleep(0.1)
    stop(proc)
    raise SystemExit(f"bench: chatd did not answer /health within 60 s:\n{log.read_text()}")


def start_gateway(
    cpu: str | None, config: Path, port: int, log: Path
) -> subprocess.Popen[bytes]:
    """``bin/chatd gateway`` in front of chatd; a fresh one has a cold pool."""
    argv = [
        sys.executable, "-m", "lakehouse.cli", "gateway", "--config", str(config),
        "--bind", f"127.0.0.1:{port}",
    ]  # fmt: skip
    proc = subprocess.Popen(
        pinned(cpu, argv), cwd=ROOT, stdout=log.open("a"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: gateway exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError):
            if http("GET", f"http://127.0.0.1:{port}/health")[0] == 200:
                return proc
        time.sleep(0.1)
    stop(proc)
    raise SystemExit(f"bench: the gateway did not answer /health within 60 s:\n{log.read_text()}")


# The burst the gateway must carry: this many h2 streams at once on one connection.
BURST = 200


def burst_ms(url: str, cpu: str | None, tmp: Path) -> tuple[float, int]:
    """Slowest of ``BURST`` concurrent h2 streams (ms), and the errors."""
    body = tmp / "burst-body.json"
    body.write_text(chat_body())
    log = tmp / "burst.log"
    log.unlink(missing_ok=True)
    argv = [
        "h2load", "-t1", "-c1", f"-m{BURST}", f"-n{BURST}", "-d", str(body),
        "-H", "content-type: application/json", f"--log-file={log}", url,
    ]  # fmt: skip
    out = subprocess.run(pinned(cpu, argv), capture_output=True, text=True, timeout=120)
    req = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out.stdout)
    if out.returncode != 0 or not req:
        raise SystemExit(f"bench: h2load burst failed ({out.returncode}):\n{out.stdout}")
    durations = [int(line.split("\t")[2]) for line in log.read_text().splitlines() if line]
    return max(durations, default=0) / 1000, BURST - int(req.group(2))


@dataclass
class Burst:
    """One round of the gateway burst: direct, through a fresh gateway, again warm."""

    direct_ms: float
    cold_ms: float
    warm_ms: float
    errors: int


def gateway_bursts(
    rounds: int, chatd_url: str, config: Path, cpu: str | None, load_cpu: str | None,
    tmp: Path, log: Path,
) -> list[Burst]:  # fmt: skip
    out = []
    for _ in range(rounds):
        port = free_port()
        gateway = start_gateway(cpu, config, port, log)
        try:
            cold, e1 = burst_ms(f"http://127.0.0.1:{port}/v1/chat", load_cpu, tmp)
            warm, e2 = burst_ms(f"http://127.0.0.1:{port}/v1/chat", load_cpu, tmp)
            direct, e3 = burst_ms(f"{chatd_url}/chat", load_cpu, tmp)
        finally:
            stop(gateway)
        out.append(Burst(direct, cold, warm, e1 + e2 + e3))
        print(
            f"  burst of {BURST} h2 streams: direct {direct:.0f} ms, gateway cold "
            f"{cold:.0f} ms, warm {warm:.0f} ms, errors {e1 + e2 + e3}",
            file=sys.stderr,
            flush=True,
        )
    return out


def ensure_tools() -> None:
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if not missing:
        return
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


# --------------------------------------------------------------------------- load


@dataclass
class Sample:
    """One run of one row."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    chatd_cpu_ms: float | None  # per request
    stub_cpu_ms: float | None  # per request
    peak_rss_mb: float | None


@dataclass
class Row:
    key: str
    label: str
    tool: str  # "wrk" or "h2load"
    url: str
    conc: int
    body: str
    stub: str  # which stub serves it: "fast" or "slow"
    via_chatd: bool
    h2_conns: int = 0
    h2_streams: int = 0
    # The measured process a proxied row goes through: chatd, or the floor.
    proxy: str = "chatd"
    samples: list[Sample] = field(default_factory=list)


def h2_split(conc: int) -> tuple[int, int]:
    """Connections x streams for an h2c row of total concurrency ``conc``: about
    √conc of each (1x1, 4x4, 8x8), as a multiplexing client pool would."""
    conns = max(1, round(conc**0.5))
    while conc % conns:
        conns -= 1
    return conns, conc // conns


def run_wrk(row: Row, duration: float, cpu: str | None) -> tuple[float, float, float, int, int]:
    env = {**os.environ, "BENCH_METHOD": "POST", "BENCH_BODY": row.body}
    argv = [
        "wrk", "-t1", f"-c{row.conc}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
        "-s", str(WRK_SCRIPT), row.url,
    ]  # fmt: skip
    out = subprocess.run(
        pinned(cpu, argv), env=env, capture_output=True, text=True, timeout=duration + 60
    )
    match = re.search(r"^BENCH_JSON (.*)$", out.stdout, re.M)
    if out.returncode != 0 or not match:
        raise SystemExit(f"bench: wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    r = json.loads(match.group(1))
    errors = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
    rps = r["requests"] / (r["duration_us"] / 1e6)
    return rps, r["p50_us"] / 1000, r["p99_us"] / 1000, r["requests"], errors


def run_h2load(
    row: Row, duration: float, cpu: str | None, tmp: Path
) -> tuple[float, float, float, int, int]:
    body = tmp / "h2-body.json"
    body.write_text(row.body)
    log = tmp / "h2load.log"
    log.unlink(missing_ok=True)  # h2load appends to it
    argv = [
        "h2load", "-t1", f"-c{row.h2_conns}", f"-m{row.h2_streams}",
        f"-D{max(1, round(duration))}", "-d", str(body),
        "-H", "content-type: application/json", f"--log-file={log}", row.url,
    ]  # fmt: skip
    out = subprocess.run(pinned(cpu, argv), capture_output=True, text=True, timeout=duration + 60)
    text = out.stdout
    fin = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", text)
    req = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        text,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if out.returncode != 0 or not (fin and req and codes):
        raise SystemExit(f"bench: h2load failed ({out.returncode}):\n{text}\n{out.stderr}")
    durations = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line)
    done = int(req.group(3))
    errors = int(req.group(5)) + int(req.group(6)) + int(req.group(7))
    errors += int(codes.group(2)) + int(codes.group(3)) + int(codes.group(4))
    return (
        float(fin.group(2)),
        percentile(durations, 50) / 1000,
        percentile(durations, 99) / 1000,
        done,
        errors,
    )


def percentile(sorted_values: list[int], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return float(sorted_values[index])


@contextlib.contextmanager
def rss_sampler(pid: int | None, every: float = 0.05) -> Iterator[list[int]]:
    """Samples a process tree's VmRSS while the block runs; yields [max kB]."""
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):
                peak[0] = max(peak[0], tree_rss_kb(pid))
            done.wait(every)

    thread = threading.Thread(target=sample, daemon=True) if pid else None
    if thread:
        thread.start()
    try:
        yield peak
    finally:
        done.set()
        if thread:
            thread.join()


def run_row(
    row: Row, duration: float, load_cpu: str | None, proxy_pids: dict[str, int],
    stub_pids: dict[str, int], tmp: Path,
) -> Sample:  # fmt: skip
    chatd_pid = proxy_pids[row.proxy]
    stub_pid = stub_pids[row.stub]
    chatd0 = tree_ticks(chatd_pid)
    stub0 = cpu_ticks(stub_pid)
    with rss_sampler(chatd_pid if row.via_chatd else None) as peak:
        if row.tool == "wrk":
            rps, p50, p99, requests, errors = run_wrk(row, duration, load_cpu)
        else:
            rps, p50, p99, requests, errors = run_h2load(row, duration, load_cpu, tmp)
    chatd_ms = (tree_ticks(chatd_pid) - chatd0) * 1000 / CLK_TCK
    stub_ms = (cpu_ticks(stub_pid) - stub0) * 1000 / CLK_TCK
    served = max(requests, 1)
    return Sample(
        rps=rps,
        p50_ms=p50,
        p99_ms=p99,
        requests=requests,
        errors=errors,
        chatd_cpu_ms=chatd_ms / served if row.via_chatd else None,
        stub_cpu_ms=stub_ms / served,
        peak_rss_mb=peak[0] / 1024 if row.via_chatd else None,
    )


@dataclass
class StreamSample:
    """One run of one stream row."""

    streams: int  # streams completed
    chunks: int  # stamped chunks received
    errors: int
    elapsed_s: float
    lat_p50_ms: float  # stamp-to-arrival time of each chunk
    lat_p99_ms: float
    ttfc_p99_ms: float  # request sent to first chunk
    chatd_us: float | None  # CPU per chunk
    stub_us: float  # the producer's CPU per chunk
    peak_rss_mb: float | None


@dataclass
class StreamRow:
    key: str
    label: str
    url: str
    streams: int
    tick_ms: float
    body: str
    stub: str
    via_chatd: bool
    h2: bool = False
    samples: list[StreamSample] = field(default_factory=list)


def stream_body(model: str = MODEL) -> str:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True},
        separators=(",", ":"),
    )


def run_stream_row(
    row: StreamRow, duration: float, load_cpu: str | None, chatd_pid: int,
    stub_pids: dict[str, int],
) -> StreamSample:  # fmt: skip
    stub_pid = stub_pids[row.stub]
    chatd0, stub0 = cpu_ticks(chatd_pid), cpu_ticks(stub_pid)
    argv = [
        sys.executable, str(STREAMS), "--url", row.url, "--streams", str(row.streams),
        "--duration", f"{duration:g}", "--body", row.body, "--stagger-ms", f"{row.tick_ms:g}",
        *(["--h2"] if row.h2 else []),
    ]  # fmt: skip
    with rss_sampler(chatd_pid if row.via_chatd else None) as peak:
        out = subprocess.run(
            pinned(load_cpu, argv), capture_output=True, text=True, timeout=duration + 120
        )
    chatd_ms = (cpu_ticks(chatd_pid) - chatd0) * 1000 / CLK_TCK
    stub_ms = (cpu_ticks(stub_pid) - stub0) * 1000 / CLK_TCK
    match = re.search(r"^STREAMS_JSON (.*)$", out.stdout, re.M)
    if out.returncode != 0 or not match:
        why = f"{out.stdout}\n{out.stderr}"
        raise SystemExit(f"bench: streams.py failed ({out.returncode}):\n{why}")
    r = json.loads(match.group(1))
    chunks = max(int(r["chunks"]), 1)
    return StreamSample(
        streams=r["streams"],
        chunks=r["chunks"],
        errors=r["errors"],
        elapsed_s=r["elapsed_s"],
        lat_p50_ms=r["lat_p50_ms"],
        lat_p99_ms=r["lat_p99_ms"],
        ttfc_p99_ms=r["ttfc_p99_ms"],
        chatd_us=chatd_ms * 1000 / chunks if row.via_chatd else None,
        stub_us=stub_ms * 1000 / chunks,
        peak_rss_mb=peak[0] / 1024 if row.via_chatd else None,
    )


# --------------------------------------------------------------------------- report


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt(values: Sequence[float | None], digits: int, thousands: bool = False) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    spec = f",.{digits}f" if thousands else f".{digits}f"
    if len(vals) == 1:
        return format(vals[0], spec)
    return f"{format(med(vals), spec)} ({format(min(vals), spec)}..{format(max(vals), spec)})"


HEADER = (
    "| row | conc | req/s | p50 ms | p99 ms | chatd CPU ms/req | stub CPU ms/req "
    "| chatd peak RSS MB | errors |"
)


def table(rows: list[Row], skipped: list[str]) -> str:
    lines = [HEADER, "|" + "---|" * 9]
    for row in rows:
        s = row.samples
        lines.append(
            f"| {row.label} | {row.conc} | {fmt([x.rps for x in s], 0, True)} "
            f"| {fmt([x.p50_ms for x in s], 2)} | {fmt([x.p99_ms for x in s], 2)} "
            f"| {fmt([x.chatd_cpu_ms for x in s], 3)} | {fmt([x.stub_cpu_ms for x in s], 3)} "
            f"| {fmt([x.peak_rss_mb for x in s], 1)} | {sum(x.errors for x in s)} |"
        )
    lines.extend(f"| {label} | — | not available | | | | | | |" for label in skipped)
    return "\n".join(lines)


STREAM_HEADER = (
    "| stream row | streams | chunk every | chunks/s | chatd CPU µs/chunk | stub CPU µs/chunk "
    "| chatd ÷ stub | chunk delay p50 ms | p99 ms | added p99 ms | first chunk p99 ms "
    "| RSS KB/open stream | errors |"
)


def stream_direct(rows: list[StreamRow], row: StreamRow) -> StreamRow | None:
    return next(
        (r for r in rows if not r.via_chatd and r.streams == row.streams and r.samples), None
    )


def added_chunk_p99(rows: list[StreamRow], row: StreamRow) -> list[float]:
    """chatd's chunk delay p99 minus the direct row's, per round."""
    direct = stream_direct(rows, row)
    if not direct or not row.via_chatd:
        return []
    return [s.lat_p99_ms - d.lat_p99_ms for s, d in zip(row.samples, direct.samples, strict=False)]


def rss_per_stream(row: StreamRow, idle_mb: float) -> list[float]:
    """KB of RSS per open stream: the row's peak over chatd's idle RSS."""
    return [
        (s.peak_rss_mb - idle_mb) * 1024 / row.streams
        for s in row.samples
        if s.peak_rss_mb is not None
    ]


def stream_table(rows: list[StreamRow], idle_mb: float) -> str:
    lines = [STREAM_HEADER, "|" + "---|" * 13]
    for row in rows:
        s = row.samples
        ratio = [x.chatd_us / x.stub_us for x in s if x.chatd_us is not None and x.stub_us]
        lines.append(
            f"| {row.label} | {row.streams:,} | {row.tick_ms:g} ms "
            f"| {fmt([x.chunks / x.elapsed_s for x in s], 0, True)} "
            f"| {fmt([x.chatd_us for x in s], 1)} | {fmt([x.stub_us for x in s], 1)} "
            f"| {fmt(ratio, 2)} | {fmt([x.lat_p50_ms for x in s], 2)} "
            f"| {fmt([x.lat_p99_ms for x in s], 2)} | {fmt(added_chunk_p99(rows, row), 2)} "
            f"| {fmt([x.ttfc_p99_ms for x in s], 1)} | {fmt(rss_per_stream(row, idle_mb), 1)} "
            f"| {sum(x.errors for x in s)} |"
        )
    return "\n".join(lines)


def find(rows: list[Row], key: str) -> Row | None:
    return next((r for r in rows if r.key == key and r.samples), None)


def added_p50(rows: list[Row], key: str) -> list[float]:
    """chatd p50 minus direct p50 at c=1, per round (same round, adjacent runs)."""
    direct, chatd = find(rows, "direct/c1"), find(rows, key)
    if not direct or not chatd:
        return []
    return [c.p50_ms - d.p50_ms for c, d in zip(chatd.samples, direct.samples, strict=False)]


def budget(
    rows: list[Row], idle_mb: float, peak_mb: float, srows: Sequence[StreamRow] = (),
    stream_idle_mb: float = 0.0,
) -> list[tuple[str, str, str]]:  # fmt: skip
    """(line, measured, PASS/FAIL/n/a) for each budget item."""
    out: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    native = find(rows, "chat-h1/c16")
    cpu = [s.chatd_cpu_ms for s in native.samples if s.chatd_cpu_ms] if native else []
    out.append((
        f"CPU/request ≤ {BUDGET_CPU_MS} ms (native /chat, HTTP/1.1, c=16)",
        f"{fmt(cpu, 3)} ms" if cpu else "—",
        verdict(med(cpu) <= BUDGET_CPU_MS if cpu else None),
    ))  # fmt: skip
    added = added_p50(rows, "chat-h1/c1")
    out.append((
        f"added p50 at c=1 ≤ {BUDGET_ADDED_P50_MS} ms (chatd /chat - direct, same round)",
        f"{fmt(added, 3)} ms" if added else "—",
        verdict(med(added) <= BUDGET_ADDED_P50_MS if added else None),
    ))  # fmt: skip
    slow = find(rows, "chat-h1-delay/c64")
    rps = [s.rps for s in slow.samples] if slow else []
    out.append((
        f"50 ms upstream at c=64 ≥ {BUDGET_DELAY_RPS:,} req/s (ideal 1,280)",
        f"{fmt(rps, 0, True)} req/s" if rps else "—",
        verdict(med(rps) >= BUDGET_DELAY_RPS if rps else None),
    ))  # fmt: skip
    out.append((
        f"idle RSS ≤ {BUDGET_IDLE_RSS_MB} MB",
        f"{idle_mb:.1f} MB",
        verdict(idle_mb <= BUDGET_IDLE_RSS_MB),
    ))  # fmt: skip
    out.append((
        f"peak RSS ≤ {BUDGET_PEAK_RSS_MB} MB (VmHWM over the whole bench, request rows)",
        f"{peak_mb:.1f} MB",
        verdict(peak_mb <= BUDGET_PEAK_RSS_MB),
    ))  # fmt: skip
    for conc in (16, 64):
        h1, h2 = find(rows, f"chat-h1/c{conc}"), find(rows, f"chat-h2/c{conc}")
        if not h1 or not h2:
            continue
        a, b = med([s.rps for s in h2.samples]), med([s.rps for s in h1.samples])
        out.append((
            f"h2c multiplexed ≥ HTTP/1.1 at c={conc} (median req/s)",
            f"{a:,.0f} vs {b:,.0f} req/s",
            verdict(a >= b),
        ))  # fmt: skip
    out.extend(h2_budget(rows, list(srows), stream_idle_mb))
    errors = sum(s.errors for r in rows for s in r.samples)
    errors += sum(s.errors for r in srows for s in r.samples)
    out.append(("0 errors (all rows)", str(errors), verdict(errors == 0)))
    return out


def verdict_of(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def h2_budget(
    rows: list[Row], srows: list[StreamRow], idle_mb: float
) -> list[tuple[str, str, str]]:
    """The budget lines of issue #18: h2c as cheap as HTTP/1.1, streaming at
    a few times the producer's own cost."""
    out: list[tuple[str, str, str]] = []
    h1 = find(rows, "chat-h1/c16")
    for key in ("chat-h2x1/c16", "chat-h2/c16"):
        h2 = find(rows, key)
        if not h1 or not h2:
            continue
        ratio = [
            b.chatd_cpu_ms / a.chatd_cpu_ms
            for a, b in zip(h1.samples, h2.samples, strict=False)
            if a.chatd_cpu_ms and b.chatd_cpu_ms
        ]
        out.append((
            f"h2c CPU/request ≤ {BUDGET_H2_CPU_RATIO}x HTTP/1.1 at c=16 "
            f"({h2.label.split('(')[-1].rstrip(')')}; ratio per round)",
            f"{fmt(ratio, 2)}x" if ratio else "—",
            verdict_of(med(ratio) <= BUDGET_H2_CPU_RATIO if ratio else None),
        ))  # fmt: skip
    for row in srows:
        if not row.via_chatd:
            continue
        ratio = [x.chatd_us / x.stub_us for x in row.samples if x.chatd_us and x.stub_us]
        out.append((
            f"CPU per chunk ≤ {BUDGET_CHUNK_RATIO:g}x the producer's: {row.label}, "
            f"{row.streams:,} streams",
            f"{fmt(ratio, 2)}x" if ratio else "—",
            verdict_of(med(ratio) <= BUDGET_CHUNK_RATIO if ratio else None),
        ))  # fmt: skip
    levels = sorted({r.streams for r in srows})
    for n in levels:
        h1s = next((r for r in srows if r.key == f"snative-h1/s{n}" and r.samples), None)
        h2s = next((r for r in srows if r.key == f"snative-h2/s{n}" and r.samples), None)
        if not h1s or not h2s:
            continue
        ratio = [
            b.chatd_us / a.chatd_us
            for a, b in zip(h1s.samples, h2s.samples, strict=False)
            if a.chatd_us and b.chatd_us
        ]
        out.append((
            f"h2c CPU per chunk ≤ {BUDGET_H2_CHUNK_RATIO:g}x HTTP/1.1 (native, {n:,} streams)",
            f"{fmt(ratio, 2)}x" if ratio else "—",
            verdict_of(med(ratio) <= BUDGET_H2_CHUNK_RATIO if ratio else None),
        ))  # fmt: skip
    if levels:
        top = levels[-1]
        for row in srows:
            if row.streams != top or not row.via_chatd:
                continue
            added = added_chunk_p99(srows, row)
            out.append((
                f"added chunk delay p99 ≤ {BUDGET_ADDED_CHUNK_P99_MS:g} ms at {top:,} "
                f"streams: {row.label}",
                f"{fmt(added, 2)} ms" if added else "—",
                verdict_of(med(added) <= BUDGET_ADDED_CHUNK_P99_MS if added else None),
            ))  # fmt: skip
        for row in srows:
            if row.streams != top or not row.via_chatd:
                continue
            kb = rss_per_stream(row, idle_mb)
            out.append((
                f"RSS per open stream ≤ {BUDGET_STREAM_RSS_KB:g} KB at {top:,} streams: "
                f"{row.label}",
                f"{fmt(kb, 1)} KB" if kb else "—",
                verdict_of(med(kb) <= BUDGET_STREAM_RSS_KB if kb else None),
            ))  # fmt: skip
    return out


def git_commit() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return commit + (" (with uncommitted changes)" if git("status", "--porcelain") else "")


def versions() -> str:
    names = ["chatd", "uvloop", "hypercorn", "aiohttp", "msgspec", "starlette", "h11", "h2"]
    parts = [f"Python {platform.python_version()}"]
    for name in names:
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} (missing)")
    for tool, flag in (("wrk", "-v"), ("h2load", "--version")):
        out = subprocess.run([tool, flag], capture_output=True, text=True)
        first = (out.stdout or out.stderr).strip().splitlines()
        parts.append(first[0].split(" Copyright")[0] if first else tool)
    return ", ".join(parts)


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description="Benchmark chatd against a stub.")
    p.add_argument("--runs", type=int, help="rounds; each figure is their median (3)")
    p.add_argument("--duration", type=float, help="seconds per run (10)")
    p.add_argument("--conc", help="concurrency levels, comma-separated (1,16,64)")
    p.add_argument("--delay-ms", type=float, default=50, help="upstream delay of the delay rows")
    p.add_argument("--delay-conc", type=int, help="concurrency of the delay rows (64; 0: none)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="defaults to 1 run of 1 s, c=16 rows only, no delay rows",
    )
    p.add_argument("--out", type=Path, help="results file (default bench/RESULTS.md; --quick: tmp)")
    p.add_argument("--json", type=Path, help="also write every sample as JSON here")
    p.add_argument(
        "--streams",
        help="stream rows, STREAMS:MS_BETWEEN_CHUNKS comma-separated (200:20,1000:100; '': none)",
    )
    p.add_argument("--chunks", type=int, help="chunks per streamed answer (50)")
    p.add_argument("--stream-duration", type=float, help="seconds of new streams per run (10)")
    p.add_argument("--chatd-cpu", default="0", help="CPU for chatd (taskset -c)")
    p.add_argument("--load-cpu", default="1", help="CPU for the stubs and load generators")
    args = p.parse_args(argv)
    names = ("runs", "duration", "conc", "delay_conc", "streams", "chunks", "stream_duration")
    defaults = (
        (1, 1.0, "16", 0, "20:20", 10, 0.5)
        if args.quick
        else (3, 10.0, "1,16,64", 64, "200:20,1000:100", 50, 10.0)
    )
    for name, default in zip(names, defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.conc_levels = [int(c) for c in str(args.conc).split(",") if c.strip()]
    args.stream_levels = [
        (int(n), float(ms)) for n, _, ms in (x.partition(":") for x in args.streams.split(",") if x)
    ]
    return args


def build_rows(
    args: argparse.Namespace,
    stub_url: str,
    slow_url: str,
    chatd_url: str,
    openai_ok: bool,
    floor_url: str | None = None,
    tuned_url: str | None = None,
    pool_url: str | None = None,
    gateway_url: str | None = None,
) -> list[Row]:
    body = chat_body()
    rows: list[Row] = []
    for conc in args.conc_levels:
        conns, streams = h2_split(conc)
        rows.append(
            Row(f"direct/c{conc}", "direct → stub (ceiling)", "wrk",
                f"{stub_url}/api/chat", conc, body, "fast", False)
        )  # fmt: skip
        if floor_url and conc != 64:
            rows.append(
                Row(f"floor-h1/c{conc}", "floor: bare Hypercorn + aiohttp proxy", "wrk",
                    f"{floor_url}/", conc, body, "fast", True, proxy="floor")
            )  # fmt: skip
        if tuned_url and conc != 64:
            rows.append(
                Row(f"tuned-h1/c{conc}", "floor, tuned as chatd runs it", "wrk",
                    f"{tuned_url}/", conc, body, "fast", True, proxy="tuned")
            )  # fmt: skip
        rows.append(
            Row(f"chat-h1/c{conc}", "chatd /chat HTTP/1.1", "wrk",
                f"{chatd_url}/chat", conc, body, "fast", True)
        )  # fmt: skip
        if pool_url and conc != 64:
            rows.append(
                Row(f"chat-h1-w2/c{conc}", "chatd /chat HTTP/1.1, 2 workers, same CPU", "wrk",
                    f"{pool_url}/chat", conc, body, "fast", True, proxy="pool")
            )  # fmt: skip
        if openai_ok:
            rows.append(
                Row(f"openai-h1/c{conc}", "chatd /v1/chat/completions HTTP/1.1", "wrk",
                    f"{chatd_url}/v1/chat/completions", conc, body, "fast", True)
            )  # fmt: skip
        rows.append(
            Row(f"chat-h2/c{conc}", f"chatd /chat h2c ({conns} conn x {streams} streams)",
                "h2load", f"{chatd_url}/chat", conc, body, "fast", True, conns, streams)
        )  # fmt: skip
        if conc == 16 and conns != 1:
            # One connection carrying them all, as a single multiplexing client.
            rows.append(
                Row(f"chat-h2x1/c{conc}", f"chatd /chat h2c (1 conn x {conc} streams)",
                    "h2load", f"{chatd_url}/chat", conc, body, "fast", True, 1, conc)
            )  # fmt: skip
        if gateway_url:
            rows.append(
                Row(f"gateway-h2/c{conc}",
                    f"gateway /v1/chat h2c → chatd ({conns} conn x {streams} streams)",
                    "h2load", f"{gateway_url}/v1/chat", conc, body, "fast", True, conns,
                    streams)
            )  # fmt: skip
    if args.delay_conc:
        conc = args.delay_conc
        delay = f"{args.delay_ms:g} ms upstream"
        rows.append(
            Row(f"direct-delay/c{conc}", f"direct → stub, {delay}", "wrk",
                f"{slow_url}/api/chat", conc, body, "slow", False)
        )  # fmt: skip
        rows.append(
            Row(f"chat-h1-delay/c{conc}", f"chatd /chat HTTP/1.1, {delay}", "wrk",
                f"{chatd_url}/chat", conc, chat_body(f"{SLOW_PROVIDER}/{MODEL}"), "slow", True)
        )  # fmt: skip
    return rows


def tick_name(ms: float) -> str:
    return f"{TICK_PROVIDER}{ms:g}".replace(".", "_")


def build_stream_rows(
    args: argparse.Namespace, stub_urls: dict[float, str], chatd_url: str, openai_ok: bool
) -> list[StreamRow]:
    """Per stream level: the stub directly, then chatd's native NDJSON and
    OpenAI SSE over HTTP/1.1 and native NDJSON over h2c."""
    rows: list[StreamRow] = []
    first_ms = args.stream_levels[0][1] if args.stream_levels else 0
    for n, ms in args.stream_levels:
        stub = "fast" if ms == first_ms else tick_name(ms)
        model = MODEL if ms == first_ms else f"{tick_name(ms)}/{MODEL}"
        body = stream_body(model)
        pace = f"{n:,} x {args.chunks} chunks"
        rows.append(
            StreamRow(f"sdirect/s{n}", f"direct → stub NDJSON ({pace})",
                      f"{stub_urls[ms]}/api/chat", n, ms, body, stub, False)
        )  # fmt: skip
        rows.append(
            StreamRow(f"snative-h1/s{n}", "chatd /chat NDJSON HTTP/1.1", f"{chatd_url}/chat",
                      n, ms, body, stub, True)
        )  # fmt: skip
        if openai_ok:
            rows.append(
                StreamRow(f"ssse-h1/s{n}", "chatd /v1/chat/completions SSE HTTP/1.1",
                          f"{chatd_url}/v1/chat/completions", n, ms, body, stub, True)
            )  # fmt: skip
        conns = -(-n // 100)
        rows.append(
            StreamRow(f"snative-h2/s{n}", f"chatd /chat NDJSON h2c ({conns} conn)",
                      f"{chatd_url}/chat", n, ms, body, stub, True, h2=True)
        )  # fmt: skip
    return rows


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    ensure_tools()
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    chatd_cpu = args.chatd_cpu if pin else None
    load_cpu = args.load_cpu if pin else None
    out_dir = BENCH / "out"
    out_dir.mkdir(exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    procs: list[subprocess.Popen[str] | subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="chatd-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            first_ms = args.stream_levels[0][1] if args.stream_levels else 20
            pace = ["--chunks", str(args.chunks), "--chunk-ms", f"{first_ms:g}"]
            fast, fast_port = start_stub(load_cpu, 0, out_dir / "stub.log", pace)
            procs.append(fast)
            stub_urls = {first_ms: f"http://127.0.0.1:{fast_port}"}
            tick_ports: dict[str, int] = {}
            tick_pids: dict[str, int] = {}
            for _, ms in args.stream_levels:
                if ms in stub_urls:
                    continue
                name = tick_name(ms)
                extra = ["--chunks", str(args.chunks), "--chunk-ms", f"{ms:g}"]
                tick, tick_ports[name] = start_stub(load_cpu, 0, out_dir / f"{name}.log", extra)
                procs.append(tick)
                tick_pids[name] = tick.pid
                stub_urls[ms] = f"http://127.0.0.1:{tick_ports[name]}"
            slow, slow_port = start_stub(load_cpu, args.delay_ms, out_dir / "stub-slow.log")
            procs.append(slow)
            port = free_port()
            config = tmp / "chatd.toml"
            gateway_port = free_port()
            write_config(config, port, fast_port, slow_port, tick_ports, gateway_port)
            chatd = start_chatd(chatd_cpu, config, port, out_dir / "chatd.log")
            procs.append(chatd)
            chatd_url = f"http://127.0.0.1:{port}"
            status, reply = http("POST", f"{chatd_url}/chat", chat_body())
            if status != 200:
                raise SystemExit(f"bench: chatd /chat answered {status}: {reply[:300]!r}")
            status, reply = http("POST", f"{chatd_url}/v1/chat/completions", chat_body())
            openai_ok = 200 <= status < 300
            skipped = []
            if not openai_ok:
                why = "no such route" if status in (404, 405) else f"probe answered {status}"
                skipped.append(f"chatd /v1/chat/completions HTTP/1.1 ({why})")
            for _ in range(20):  # settle lazy start-up work before "idle"
                http("POST", f"{chatd_url}/chat", chat_body())
            time.sleep(0.5)
            idle_mb = rss_kb(chatd.pid) / 1024
            # The stream rows go to a second chatd (same config, same core), so
            # their thousand open streams neither raise the request rows' RSS
            # nor hide in it, and their RSS per stream starts from its own idle.
            stream_port = free_port()
            schatd = start_chatd(chatd_cpu, config, stream_port, out_dir / "chatd-streams.log")
            procs.append(schatd)
            schatd_url = f"http://127.0.0.1:{stream_port}"
            for _ in range(20):
                http("POST", f"{schatd_url}/chat", stream_body())
            time.sleep(0.5)
            stream_idle_mb = rss_kb(schatd.pid) / 1024
            # The same chatd with 2 workers, on the same CPU (see bench/README.md).
            pool_port = free_port()
            pool_config = tmp / "chatd-pool.toml"
            write_config(pool_config, pool_port, fast_port, slow_port)
            pool = start_chatd(chatd_cpu, pool_config, pool_port, out_dir / "chatd-pool.log", 2)
            procs.append(pool)
            pool_url = f"http://127.0.0.1:{pool_port}"
            pool_idle_mb = 0.0
            for _ in range(100):  # both workers serving: the tree has 3 processes
                if len(tree_pids(pool.pid)) == 3:
                    break
                time.sleep(0.1)
            for _ in range(40):
                http("POST", f"{pool_url}/chat", chat_body())
            time.sleep(0.5)
            pool_idle_mb = tree_rss_kb(pool.pid) / 1024
            floor_urls: dict[str, str] = {}
            floor_pids: dict[str, int] = {}
            for name, extra in (("floor", []), ("tuned", ["--tuned"])):
                floor_port = free_port()
                floor = subprocess.Popen(
                    pinned(chatd_cpu, [sys.executable, str(BENCH / "floor.py"), "--port",
                                       str(floor_port), "--upstream",
                                       f"http://127.0.0.1:{fast_port}", *extra]),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                procs.insert(0, floor)
                floor_urls[name] = f"http://127.0.0.1:{floor_port}"
                floor_pids[name] = floor.pid
                for _ in range(100):
                    try:
                        if http("POST", f"{floor_urls[name]}/", chat_body())[0] == 200:
                            break
                    except OSError:
                        pass
                    time.sleep(0.1)
            # The gateway is not pinned: on two cores there is none to give it,
            # and the scheduler places it where there is room.
            gateway = start_gateway(None, config, gateway_port, out_dir / "gateway.log")
            procs.insert(0, gateway)
            rows = build_rows(
                args, f"http://127.0.0.1:{fast_port}", f"http://127.0.0.1:{slow_port}",
                chatd_url, openai_ok, floor_urls["floor"], floor_urls["tuned"], pool_url,
                f"http://127.0.0.1:{gateway_port}",
            )  # fmt: skip
            srows = build_stream_rows(args, stub_urls, schatd_url, openai_ok)
            longest = args.chunks * max((ms for _, ms in args.stream_levels), default=0) / 1000
            total = len(rows) * args.runs * (args.duration + 0.5)
            total += len(srows) * args.runs * (args.stream_duration + longest + 1)
            print(
                f"bench: {len(rows)} rows and {len(srows)} stream rows x {args.runs} runs "
                f"x {args.duration:g} s "
                f"(~{total / 60:.1f} min); chatd pid {chatd.pid} on CPU {chatd_cpu}, "
                f"stubs and load on CPU {load_cpu}",
                file=sys.stderr,
                flush=True,
            )
            warm = Row("warm", "warm-up", "wrk", f"{chatd_url}/chat", 16, chat_body(), "fast", True)
            run_wrk(warm, 1, load_cpu)
            stub_pids = {"fast": fast.pid, "slow": slow.pid, **tick_pids}
            # The stub on its own core (wrk on chatd's, idle now): it must far outrun chatd.
            alone = Row("stub", "stub alone", "wrk", f"http://127.0.0.1:{fast_port}/api/chat",
                        16, chat_body(), "fast", False)  # fmt: skip
            proxy_pids = {"chatd": chatd.pid, "pool": pool.pid, **floor_pids}
            solo = run_row(alone, min(args.duration, 3), chatd_cpu, proxy_pids, stub_pids, tmp)
            stub_alone = (
                f"{solo.rps:,.0f} req/s, p50 {solo.p50_ms:.2f} ms, "
                f"{solo.stub_cpu_ms or 0:.3f} CPU ms/req "
                f"(wrk c=16 on CPU {chatd_cpu}, stub on CPU {load_cpu}, before the rounds)"
            )
            print(f"bench: stub alone: {stub_alone}", file=sys.stderr, flush=True)
            every: list[Row | StreamRow] = [*rows, *srows]
            for rnd in range(args.runs):
                # Rotate the order each round so no row always follows the same one;
                # direct c=1 and chatd c=1 stay in the same round for "added p50".
                shift = rnd % len(every)
                for row in every[shift:] + every[:shift]:
                    if isinstance(row, StreamRow):
                        stream = run_stream_row(
                            row, args.stream_duration, load_cpu, schatd.pid, stub_pids
                        )
                        row.samples.append(stream)
                        print(
                            f"  round {rnd + 1}/{args.runs} {row.label:<45} n={row.streams:<5}"
                            f"{stream.chunks / stream.elapsed_s:>9,.0f} chunks/s  "
                            f"cpu {stream.chatd_us or 0:6.1f} µs/chunk  "
                            f"p99 {stream.lat_p99_ms:6.2f} ms  errors {stream.errors}",
                            file=sys.stderr,
                            flush=True,
                        )
                        time.sleep(0.5)
                        continue
                    sample = run_row(row, args.duration, load_cpu, proxy_pids, stub_pids, tmp)
                    row.samples.append(sample)
                    print(
                        f"  round {rnd + 1}/{args.runs} {row.label:<45} c={row.conc:<3} "
                        f"{sample.rps:>9,.0f} req/s  p50 {sample.p50_ms:6.2f} ms  "
                        f"p99 {sample.p99_ms:6.2f} ms  errors {sample.errors}",
                        file=sys.stderr,
                        flush=True,
                    )
                    time.sleep(0.5)
            bursts = gateway_bursts(
                args.runs, chatd_url, config, None, load_cpu, tmp, out_dir / "gateway.log"
            )
            peak_mb = rss_kb(chatd.pid, "VmHWM") / 1024
            stream_peak_mb = rss_kb(schatd.pid, "VmHWM") / 1024
            pool_peak_mb = tree_rss_kb(pool.pid, "VmHWM") / 1024
            pool_rows = [r for r in rows if r.proxy == "pool" and r.samples]
            pool_sampled_mb = max(
                (x.peak_rss_mb or 0 for r in pool_rows for x in r.samples), default=0
            )
            if chatd.poll() is not None:
                raise SystemExit(f"bench: chatd died (exit {chatd.returncode})")
        finally:
            # chatd itself (the gateway and the pool run lakehouse.cli too).
            chatd_proc = next(
                (
                    p
                    for p in procs
                    if p.args and "lakehouse.cli" in p.args and "gateway" not in p.args
                ),
                None,
            )
            shutdown = stop(chatd_proc) if chatd_proc is not None else "not started"
            memory = (
                f"- 2 workers, whole process tree (supervisor + 2 workers): idle RSS "
                f"{pool_idle_mb:.1f} MB; peak RSS sampled during its rows "
                f"{pool_sampled_mb:.1f} MB (sum of each process's VmHWM, an upper "
                f"bound: {pool_peak_mb:.1f} MB)"
                if "pool_peak_mb" in locals()
                else "- 2 workers: not measured"
            )
            for proc in procs:
                stop(proc)

    report = render(
        args, rows, skipped, idle_mb, peak_mb, started, pin, shutdown, stub_alone, bursts,
        srows, (stream_idle_mb, stream_peak_mb),
    )  # fmt: skip
    report = report.replace("\n- stub alone:", f"\n{memory}\n- stub alone:", 1)
    print(report)
    out = args.out or (
        Path(tempfile.mkstemp(prefix="chatd-bench-", suffix=".md")[1])
        if args.quick
        else BENCH / "RESULTS.md"
    )
    out.write_text(report)
    print(f"bench: wrote {out}", file=sys.stderr)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "idle_rss_mb": idle_mb,
                    "peak_rss_mb": peak_mb,
                    "stream_chatd_idle_rss_mb": stream_idle_mb,
                    "stream_chatd_peak_rss_mb": stream_peak_mb,
                    "pool_idle_rss_mb": pool_idle_mb,
                    "pool_peak_rss_mb": pool_peak_mb,
                    "skipped": skipped,
                    "gateway_bursts": [b.__dict__ for b in bursts],
                    "rows": [
                        {"key": r.key, "label": r.label, "conc": r.conc,
                         "samples": [s.__dict__ for s in r.samples]}
                        for r in rows
                    ],
                    "stream_rows": [
                        {"key": r.key, "label": r.label, "streams": r.streams,
                         "tick_ms": r.tick_ms, "samples": [s.__dict__ for s in r.samples]}
                        for r in srows
                    ],
                },
                indent=1,
            )
        )  # fmt: skip
    return 0


def burst_lines(bursts: list[Burst]) -> list[str]:
    """The gateway burst: the slowest of BURST streams, each round's gateway
    time over the same round's direct time."""
    if not bursts:
        return []
    direct = [b.direct_ms for b in bursts]
    cold = [b.cold_ms / b.direct_ms for b in bursts if b.direct_ms]
    warm = [b.warm_ms / b.direct_ms for b in bursts if b.direct_ms]
    ok = bool(cold and warm) and max(med(cold), med(warm)) <= 2
    return [
        "",
        f"## Gateway burst: {BURST} concurrent h2 streams on one connection",
        "",
        "Slowest stream's time, per round: straight to chatd `/chat`, through a freshly "
        "started `bin/chatd gateway` (cold pool), and through it again (warm). The gateway "
        "is not pinned (there is no third core to give it).",
        "",
        "| path | slowest stream ms | ÷ direct (same round) |",
        "|---|---|---|",
        f"| direct → chatd | {fmt(direct, 0)} | 1 |",
        f"| gateway, cold pool | {fmt([b.cold_ms for b in bursts], 0)} | {fmt(cold, 2)} |",
        f"| gateway, warm pool | {fmt([b.warm_ms for b in bursts], 0)} | {fmt(warm, 2)} |",
        "",
        f"- within 2x of direct, cold and warm (medians): {'PASS' if ok else 'FAIL'}; "
        f"errors: {sum(b.errors for b in bursts)}",
    ]


def render(
    args: argparse.Namespace, rows: list[Row], skipped: list[str], idle_mb: float,
    peak_mb: float, started: dt.datetime, pinned_cpus: bool, shutdown: str, stub_alone: str,
    bursts: list[Burst] | None = None, srows: Sequence[StreamRow] = (),
    stream_rss: tuple[float, float] = (0.0, 0.0),
) -> str:  # fmt: skip
    lines = [
        "# chatd benchmark results",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- command: `bench/run {' '.join(sys.argv[1:])}`".replace("  ", " "),
        f"- git commit: {git_commit()}",
        f"- versions: {versions()}",
        f"- machine: {os.cpu_count()} CPUs (`nproc` {len(os.sched_getaffinity(0))}), "
        f"{cpu_model()}, Linux {platform.release()}, load average at end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "- setup: "
        + (
            f"chatd (one worker, uvloop) pinned to CPU {args.chatd_cpu}; stubs, wrk and "
            f"h2load (one thread each) pinned to CPU {args.load_cpu}"
            if pinned_cpus
            else "no CPU pinning (taskset missing or one CPU)"
        ),
        f"- method: {args.runs} round(s) x {args.duration:g} s per row, rows interleaved "
        "round by round; figures are median (min..max) over the rounds. wrk: HTTP/1.1 "
        "keep-alive, `-t1`. h2load: h2c with prior knowledge, `-t1`, total concurrency "
        "split as ≈√c connections x √c streams. CPU ms/req: utime+stime from "
        "`/proc/<pid>/stat` over the run ÷ requests completed. Peak RSS per row: VmRSS "
        "sampled every 50 ms. Errors: socket errors + timeouts + non-2xx.",
        "",
        table(rows, skipped),
        "",
        f"- chatd idle RSS (after start-up and 20 requests, before load): {idle_mb:.1f} MB; "
        f"peak RSS (VmHWM, whole bench): {peak_mb:.1f} MB",
        f"- stub alone: {stub_alone}",
        f"- chatd shutdown at the end: {shutdown}",
    ]
    for key, label in (
        ("chat-h1/c1", "chatd /chat HTTP/1.1"),
        ("openai-h1/c1", "chatd /v1/chat/completions HTTP/1.1"),
        ("chat-h2/c1", "chatd /chat h2c"),
    ):
        added = added_p50(rows, key)
        if added:
            lines.append(f"- added p50 at c=1, {label} - direct: {fmt(added, 3)} ms")
    if srows:
        lines += [
            "",
            "## Streaming",
            "",
            f"Each stream row keeps N streams open for {args.stream_duration:g} s (each "
            f"started again as it ends; starts spread over one chunk interval), "
            f"{args.chunks} chunks per answer from the stub. CPU per chunk: the process's "
            "CPU over the row ÷ chunks received (stream set-up included). Chunk delay: "
            "the stub stamps each chunk with the monotonic clock as it writes it; the "
            "client (`bench/streams.py`, CPU "
            f"{args.load_cpu}) takes arrival - stamp. Added p99: chatd's p99 - the direct "
            "row's, same round. RSS per open stream: (the row's peak RSS - chatd's idle "
            "RSS) ÷ N. These rows are served by a second chatd process (same config, "
            f"same core): idle RSS {stream_rss[0]:.1f} MB, peak RSS (VmHWM) "
            f"{stream_rss[1]:.1f} MB.",
            "",
            stream_table(list(srows), stream_rss[0]),
        ]
    lines += burst_lines(bursts or [])
    lines += ["", "## Budget (one worker)", ""]
    lines += ["| budget | measured | verdict |", "|---|---|---|"]
    lines += [
        f"| {a} | {b} | {c} |" for a, b, c in budget(rows, idle_mb, peak_mb, srows, stream_rss[0])
    ]
    return "\n".join(lines) + "\n"

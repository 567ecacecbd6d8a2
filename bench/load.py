"""One row of the bench: what it measures, and running it once with wrk or
h2load while reading chatd's and the stub's CPU and memory."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from procs import CLK_TCK, WRK_SCRIPT, cpu_ticks, pinned, tree_rss_kb, tree_ticks

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

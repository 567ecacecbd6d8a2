"""A/B of chatd's stream relay: chatd processes of several source trees (or
the same tree with different ``--set`` overrides) side by side, on one
core, against one stub; the stream rows of ``bench/run`` through each,
interleaved round by round, with the floors beside them.

    .venv/bin/python bench/stream_ab.py --arm base=/tmp/base --arm new=. \\
        [--arm stock=.:chatd.server.tuned=false] [--floors] [--runs 3] \\
        [--streams 200:20] [--duration 8] [--h2] [--sse] [--burst]

An arm is NAME=TREE[:KEY=VALUE,...]: chatd started from TREE (its
``lakehouse`` package, this venv's libraries), with each KEY=VALUE given as
``--set``. Prints, per row, CPU µs per chunk, the ratio to the stub's, and
RSS KB per open stream (medians over the rounds, with min..max).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import start_floor
from procs import BENCH, free_port, http, rss_kb, start_stub, stop, write_config
from report import fmt
from stream_rows import StreamRow, rss_per_stream, run_stream_row, stream_body


def start_arm(
    cpu: str, tree: Path, sets: list[str], config: Path, log: Path
) -> tuple[str, int, subprocess.Popen[bytes]]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "lakehouse.cli",
        "--config",
        str(config),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
    ]
    for item in sets:
        argv += ["--set", item]
    proc = subprocess.Popen(
        ["taskset", "-c", cpu, *argv], cwd=tree, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if http("GET", f"{url}/health")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)
    else:
        stop(proc)
        raise SystemExit(f"arm {tree} did not start: {log.read_text()}")
    return url, port, proc


@dataclass
class Served:
    """What the run keeps of its serving processes: pid and idle RSS (MB)
    by key."""

    pids: dict[str, int]
    idle: dict[str, float]


def served_rows(
    served: Served,
    name: str,
    label: str,
    url: str,
    proc: subprocess.Popen[bytes],
    level: tuple[int, float, str, str],
    h2: bool,
    sse_url: str | None = None,
) -> list[StreamRow]:
    """The stream rows of one serving process, once warmed up (its idle RSS
    taken): over HTTP/1.1, over h2c with ``h2``, and the OpenAI route's SSE
    over HTTP/1.1 at ``sse_url``; ``level``: streams, ms between chunks,
    the body, the stub serving that pace."""
    n, ms, body, stub_name = level
    key = f"{name}{ms:g}"
    served.pids[key] = proc.pid
    for _ in range(20):
        http("POST", url, body)
    time.sleep(0.5)
    served.idle[key] = rss_kb(proc.pid) / 1024
    kinds = [("h1", "h1", False), *([("h2", "h2c", True)] if h2 else [])]
    rows = []
    for tag, proto, on_h2 in kinds:
        rows.append(
            StreamRow(f"{name}-{tag}/{n}", f"{label} {proto}", url, n, ms, body, stub_name, True,
                      h2=on_h2, proxy=key)
        )  # fmt: skip
    if sse_url:
        rows.append(
            StreamRow(f"{name}-sse/{n}", f"{name} SSE h1", sse_url, n, ms, body, stub_name, True,
                      proxy=key)
        )  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arm", action="append", required=True)
    p.add_argument("--floors", action="store_true")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--streams", default="200:20")
    p.add_argument("--chunks", type=int, default=50)
    p.add_argument("--duration", type=float, default=8)
    p.add_argument("--h2", action="store_true", help="also the h2c rows")
    p.add_argument("--sse", action="store_true", help="also the OpenAI route's SSE rows")
    p.add_argument(
        "--burst", action="store_true",
        help="start the streams over one chunk interval (all restart together), "
        "not over one answer",
    )  # fmt: skip
    args = p.parse_args()
    levels = [
        (int(n), float(ms)) for n, _, ms in (x.partition(":") for x in args.streams.split(","))
    ]
    procs: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = []
    out = BENCH / "out"
    out.mkdir(exist_ok=True)
    rows: list[StreamRow] = []
    served = Served({}, {})
    pids, idle = served.pids, served.idle
    stub_pids: dict[str, int] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n, ms in levels:
                stub, stub_port = start_stub(
                    "1",
                    0,
                    out / f"ab-stub{ms:g}.log",
                    ["--chunks", str(args.chunks), "--chunk-ms", f"{ms:g}"],
                )
                procs.append(stub)
                stub_name = f"stub{ms:g}"
                stub_pids[stub_name] = stub.pid
                stub_url = f"http://127.0.0.1:{stub_port}"
                body = stream_body()
                rows.append(
                    StreamRow(
                        f"direct/{n}",
                        f"direct ({n} x {ms:g} ms)",
                        f"{stub_url}/api/chat",
                        n,
                        ms,
                        body,
                        stub_name,
                        False,
                    )
                )
                for spec in args.arm:
                    name, _, rest = spec.partition("=")
                    tree, _, sets = rest.partition(":")
                    config = Path(tmp) / f"{name}{ms:g}.toml"
                    write_config(config, 0, stub_port, None)
                    url, _, proc = start_arm(
                        "0",
                        Path(tree).resolve(),
                        [s for s in sets.split(",") if s],
                        config,
                        out / f"ab-{name}.log",
                    )
                    procs.append(proc)
                    level = (n, ms, body, stub_name)
                    label = f"{name} NDJSON"
                    sse = f"{url}/v1/chat/completions" if args.sse else None
                    rows += served_rows(
                        served, name, label, f"{url}/chat", proc, level, args.h2, sse
                    )
                if args.floors:
                    for name, extra in (("floor", []), ("tuned", ["--tuned"])):
                        url, proc = start_floor("0", stub_url, extra)
                        procs.append(proc)
                        level = (n, ms, body, stub_name)
                        label = f"floor {name}"
                        rows += served_rows(served, name, label, f"{url}/", proc, level, args.h2)
            pids.setdefault("schatd", next(iter(pids.values())))
            for rnd in range(args.runs):
                shift = rnd % len(rows)
                for row in rows[shift:] + rows[:shift]:
                    spread = row.tick_ms * (1 if args.burst else args.chunks)
                    s = run_stream_row(row, args.duration, spread, "1", pids, stub_pids)
                    row.samples.append(s)
                    print(
                        f"  round {rnd + 1} {row.label:<28} n={row.streams:<5} "
                        f"{s.chatd_us or 0:6.1f} µs/chunk  stub {s.stub_us:5.1f}  "
                        f"p99 {s.lat_p99_ms:7.2f} ms  errors {s.errors}",
                        file=sys.stderr,
                        flush=True,
                    )
                    time.sleep(0.5)
    finally:
        for proc in procs:
            stop(proc)
    print("| row | streams | CPU µs/chunk | ÷ stub | chunk p99 ms | RSS KB/open stream | errors |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        s = row.samples
        ratio = [x.chatd_us / x.stub_us for x in s if x.chatd_us and x.stub_us]
        kb = rss_per_stream(row, idle) if row.via_chatd else []
        print(
            f"| {row.label} | {row.streams} | {fmt([x.chatd_us for x in s if x.chatd_us], 1)} "
            f"| {fmt(ratio, 2)} | {fmt([x.lat_p99_ms for x in s], 2)} | {fmt(kb, 1)} "
            f"| {sum(x.errors for x in s)} |"
        )


if __name__ == "__main__":
    main()

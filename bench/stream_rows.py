"""The bench's stream rows (issue #18): N streams kept open through chatd
or straight to the stub, chunks timed by ``bench/streams.py``; their table
and budget lines."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from load import Row, rss_sampler
from procs import BENCH, CLK_TCK, MODEL, cpu_ticks, pinned
from report import find, fmt, med

STREAMS = BENCH / "streams.py"
# Stream rows whose chunks come at another pace than the fast stub's get a
# stub of their own, behind an Ollama provider named "tick<ms>".
TICK_PROVIDER = "tick"
# Budget of the h2c and streaming issue (#18).
BUDGET_H2_CPU_RATIO = 1.05  # h2c CPU/request vs HTTP/1.1 at c=16
BUDGET_CHUNK_RATIO = 3.0  # chatd CPU per chunk vs the producer's (the stub's)
BUDGET_H2_CHUNK_RATIO = 1.1  # h2c CPU per chunk vs HTTP/1.1
BUDGET_ADDED_CHUNK_P99_MS = 5.0  # at the largest stream row
BUDGET_STREAM_RSS_KB = 20.0  # RSS per open stream at the largest stream row
# Not counted after the last stream started: the full collections a serving
# process's heap growth sets off while it takes the streams on (CPython's rule,
# which the floor rows run; bench/streams.py).
SETTLE_MS = 1000


@dataclass
class StreamSample:
    """One run of one stream row."""

    streams: int  # streams completed
    chunks: int  # stamped chunks received while all streams were open
    chunks_all: int  # every stamped chunk, ramp and drain included
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
    via_chatd: bool  # through a proxy (chatd, or a floor): its CPU and RSS are counted
    h2: bool = False
    # The process serving the row: the stream chatd, or a floor (bench/floor.py).
    proxy: str = "schatd"
    samples: list[StreamSample] = field(default_factory=list)


def stream_body(model: str = MODEL) -> str:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True},
        separators=(",", ":"),
    )


def tick_name(ms: float) -> str:
    return f"{TICK_PROVIDER}{ms:g}".replace(".", "_")


def run_stream_row(
    row: StreamRow, duration: float, spread_ms: float, load_cpu: str | None,
    proxy_pids: dict[str, int], stub_pids: dict[str, int],
) -> StreamSample:  # fmt: skip
    """One run of ``row``: its streams started over ``spread_ms`` (one
    answer's length in ``bench/run``), then ``duration`` s counted from
    ``SETTLE_MS`` after the last start."""
    stub_pid = stub_pids[row.stub]
    chatd_pid = proxy_pids[row.proxy]
    chatd0, stub0 = cpu_ticks(chatd_pid), cpu_ticks(stub_pid)
    argv = [
        sys.executable, str(STREAMS), "--url", row.url, "--streams", str(row.streams),
        "--duration", f"{duration:g}", "--body", row.body, "--stagger-ms", f"{spread_ms:g}",
        "--settle-ms", str(SETTLE_MS),
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
    chunks = max(int(r["chunks_all"]), 1)
    return StreamSample(
        streams=r["streams"],
        chunks=r["chunks"],
        chunks_all=r["chunks_all"],
        errors=r["errors"],
        elapsed_s=r["elapsed_s"],
        lat_p50_ms=r["lat_p50_ms"],
        lat_p99_ms=r["lat_p99_ms"],
        ttfc_p99_ms=r["ttfc_p99_ms"],
        chatd_us=chatd_ms * 1000 / chunks if row.via_chatd else None,
        stub_us=stub_ms * 1000 / chunks,
        peak_rss_mb=peak[0] / 1024 if row.via_chatd else None,
    )


def build_stream_rows(
    args: argparse.Namespace, stub_urls: dict[float, str], chatd_url: str, openai_ok: bool,
    floor_urls: dict[str, dict[float, str]] | None = None,
) -> list[StreamRow]:  # fmt: skip
    """Per stream level: the stub directly, the floors (``floor_urls``: the
    stock and the tuned one's URL per chunk pace) over HTTP/1.1 and h2c,
    then chatd's native NDJSON and OpenAI SSE over HTTP/1.1 and native
    NDJSON over h2c."""
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
        conns = -(-n // 100)
        for name, url in (floor_urls or {}).items():
            what = "floor: bare Hypercorn + aiohttp relay" if name == "floor" else "floor, tuned"
            rows.append(
                StreamRow(f"s{name}-h1/s{n}", f"{what} HTTP/1.1", f"{url[ms]}/", n, ms, body,
                          stub, True, proxy=f"{name}{ms:g}")
            )  # fmt: skip
            rows.append(
                StreamRow(f"s{name}-h2/s{n}", f"{what} h2c ({conns} conn)", f"{url[ms]}/", n,
                          ms, body, stub, True, h2=True, proxy=f"{name}{ms:g}")
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
        rows.append(
            StreamRow(f"snative-h2/s{n}", f"chatd /chat NDJSON h2c ({conns} conn)",
                      f"{chatd_url}/chat", n, ms, body, stub, True, h2=True)
        )  # fmt: skip
    return rows


# --------------------------------------------------------------------------- report

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


def rss_per_stream(row: StreamRow, idle_mb: dict[str, float]) -> list[float]:
    """KB of RSS per open stream: the row's peak over its process's idle RSS."""
    return [
        (s.peak_rss_mb - idle_mb[row.proxy]) * 1024 / row.streams
        for s in row.samples
        if s.peak_rss_mb is not None
    ]


def stream_table(rows: list[StreamRow], idle_mb: dict[str, float]) -> str:
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


def stream_lines(
    args: argparse.Namespace, srows: Sequence[StreamRow], stream_rss: tuple[float, float],
    idle_mb: dict[str, float],
) -> list[str]:  # fmt: skip
    """The report's Streaming section."""
    if not srows:
        return []
    return [
        "",
        "## Streaming",
        "",
        "Each stream row starts N streams spread over one answer's length "
        f"({args.chunks} chunks from the stub, at the row's interval), each started "
        "again as it ends, so stream set-ups come steadily (N ÷ that length a "
        "second) as from independent callers, not as a burst of N every answer; "
        f"what is counted arrives in the {args.stream_duration:g} s from "
        f"{SETTLE_MS / 1000:g} s after the last start, all N open (the full collections "
        "a serving process's heap growth sets off while it takes the streams on are "
        "left out: bench/README.md, Young collections). CPU per chunk: the process's "
        "CPU over the whole run ÷ every chunk received (set-ups, ramp and drain "
        "included). Chunk delay: "
        "the stub stamps each chunk with the monotonic clock as it writes it; the "
        "client (`bench/streams.py`, CPU "
        f"{args.load_cpu}) takes arrival - stamp. Added p99: chatd's p99 - the direct "
        "row's, same round. RSS per open stream: (the row's peak RSS - chatd's idle "
        "RSS) ÷ N. These rows are served by a second chatd process (same config, "
        f"same core): idle RSS {stream_rss[0]:.1f} MB, peak RSS (VmHWM) "
        f"{stream_rss[1]:.1f} MB. The floor rows (`bench/floor.py`: the fixed stack "
        "relaying the stub's bytes as they come, nothing parsed) run on a floor "
        "process of their own per chunk pace, on chatd's core; their RSS per stream "
        "is over that process's idle RSS.",
        "",
        stream_table(list(srows), idle_mb),
    ]


def verdict_of(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def h2_budget(
    rows: list[Row], srows: Sequence[StreamRow], idle_mb: dict[str, float]
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
        if not row.via_chatd or row.proxy != "schatd":
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
            if row.streams != top or not row.via_chatd or row.proxy != "schatd":
                continue
            added = added_chunk_p99(list(srows), row)
            out.append((
                f"added chunk delay p99 ≤ {BUDGET_ADDED_CHUNK_P99_MS:g} ms at {top:,} "
                f"streams: {row.label}",
                f"{fmt(added, 2)} ms" if added else "—",
                verdict_of(med(added) <= BUDGET_ADDED_CHUNK_P99_MS if added else None),
            ))  # fmt: skip
        for row in srows:
            if row.streams != top or not row.via_chatd or row.proxy != "schatd":
                continue
            kb = rss_per_stream(row, idle_mb)
            out.append((
                f"RSS per open stream ≤ {BUDGET_STREAM_RSS_KB:g} KB at {top:,} streams: "
                f"{row.label}",
                f"{fmt(kb, 1)} KB" if kb else "—",
                verdict_of(med(kb) <= BUDGET_STREAM_RSS_KB if kb else None),
            ))  # fmt: skip
    return out

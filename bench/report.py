"""The bench's report: medians of the rounds, the results table, the budget
lines, and the versions and machine it ran on."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from load import Row
from procs import ROOT

# Budget (native route, HTTP/1.1, one worker), from the performance issue.
BUDGET_CPU_MS = 0.35
BUDGET_ADDED_P50_MS = 0.3
BUDGET_DELAY_RPS = 1240
BUDGET_IDLE_RSS_MB = 60
BUDGET_PEAK_RSS_MB = 100


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


def find(rows: list[Row], key: str) -> Row | None:
    return next((r for r in rows if r.key == key and r.samples), None)


def added_p50(rows: list[Row], key: str) -> list[float]:
    """chatd p50 minus direct p50 at c=1, per round (same round, adjacent runs)."""
    direct, chatd = find(rows, "direct/c1"), find(rows, key)
    if not direct or not chatd:
        return []
    return [c.p50_ms - d.p50_ms for c, d in zip(chatd.samples, direct.samples, strict=False)]


def budget(
    rows: list[Row], idle_mb: float, peak_mb: float,
    more: Sequence[tuple[str, str, str]] = (), more_errors: int = 0,
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
    out.extend(more)
    errors = sum(s.errors for r in rows for s in r.samples) + more_errors
    out.append(("0 errors (all rows)", str(errors), verdict(errors == 0)))
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
        if shutil.which(tool) is None:
            parts.append(f"{tool} (not installed)")
            continue
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


def render(
    args: argparse.Namespace, rows: list[Row], skipped: list[str], idle_mb: float,
    peak_mb: float, started: dt.datetime, pinned_cpus: bool, shutdown: str, stub_alone: str,
    extra: list[str] | None = None, more_budget: Sequence[tuple[str, str, str]] = (),
    more_errors: int = 0,
) -> str:  # fmt: skip
    lines = [
        "# chatd benchmark results",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- command: `bench/run {' '.join(sys.argv[1:])}`".replace("  ", " "),
        f"- git commit: {args.commit}",
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
    lines += extra or []
    lines += ["", "## Budget (one worker)", ""]
    lines += ["| budget | measured | verdict |", "|---|---|---|"]
    lines += [
        f"| {a} | {b} | {c} |"
        for a, b, c in budget(rows, idle_mb, peak_mb, more_budget, more_errors)
    ]
    return "\n".join(lines) + "\n"

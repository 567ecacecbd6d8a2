"""The gateway burst: ``BURST`` concurrent h2 streams on one connection,
straight to chatd and through a fresh (cold) then warm ``bin/chatd gateway``;
the slowest stream's time of each, and the lines the report gives them."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from procs import chat_body, free_port, pinned, start_gateway, stop
from report import fmt, med

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

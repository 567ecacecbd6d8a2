"""h2c against HTTP/1.1 CPU per request, for variants of chatd side by side.

Each variant is a source tree (a directory holding ``lakehouse/``: a
``git archive`` of a commit, or the worktree itself) or the worktree run
with extra ``--set`` options; one chatd per variant is started on the same
core (CPU 0), the stub and the load generators on the other (CPU 1). Every
round runs each row (wrk c=16, h2load 1 x 16 and 4 x 4 by default) once per
variant, the order of variants rotated from round to round, so the noise of
a shared machine falls on every variant alike:

    .venv/bin/python bench/h2_ab.py --variant base=/tmp/ab-base \\
        --variant new=. --rounds 5 --duration 5
    .venv/bin/python bench/h2_ab.py --variant tuned=. \\
        --variant stock=.:chatd.server.tuned=false

It prints each variant's CPU ms per request per row (median and min..max
over the rounds) and h2c ÷ HTTP/1.1 of the same variant and round.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procs
from load import Row, run_row
from procs import chat_body, free_port, http, start_stub, stop, write_config

ROWS = {
    "h1": ("wrk", 16, 0, 0),
    "h2-1x16": ("h2load", 16, 1, 16),
    "h2-4x4": ("h2load", 16, 4, 4),
    "h2-1x1": ("h2load", 1, 1, 1),
    "h1-c1": ("wrk", 1, 0, 0),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variant", action="append", required=True,
        help="NAME=DIR[:KEY=VALUE,...] (a source tree, and --set options for it)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--rows", default="h1,h2-1x16,h2-4x4")
    parser.add_argument("--chatd-cpu", default="0")
    parser.add_argument("--load-cpu", default="1")
    return parser.parse_args(argv)


def start(
    name: str, spec: str, cpu: str, config: Path, out: Path
) -> tuple[subprocess.Popen[bytes], str]:  # fmt: skip
    tree, _, sets = spec.partition(":")
    extra = [arg for item in sets.split(",") if item for arg in ("--set", item)]
    port = free_port()
    argv = [
        sys.executable, "-m", "lakehouse.cli", "--config", str(config),
        "--bind", f"127.0.0.1:{port}", "--workers", "1", *extra,
    ]  # fmt: skip
    log = out / f"ab-{name}.log"
    proc = subprocess.Popen(
        procs.pinned(cpu, argv), cwd=Path(tree).resolve(), stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    procs.serving(proc, port, log, f"chatd {name}")
    url = f"http://127.0.0.1:{port}"
    for _ in range(50):
        status, reply = http("POST", f"{url}/chat", chat_body())
        if status != 200:
            raise SystemExit(f"ab: {name} /chat answered {status}: {reply[:300]!r}")
    return proc, url


def ratios(tops: list[float], bottoms: list[float]) -> list[float]:
    """Round by round."""
    return [top / bottom for top, bottom in zip(tops, bottoms, strict=True)]


def spread(values: list[float], fmt: str) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:{fmt}} ({low:{fmt}}..{high:{fmt}})"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    variants = dict(v.split("=", 1) for v in args.variant)
    rows = args.rows.split(",")
    out = procs.BENCH / "out"
    out.mkdir(exist_ok=True)
    running: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = []
    # cpu[variant][row] = [ms per request per round]
    cpu: dict[str, dict[str, list[float]]] = {v: {r: [] for r in rows} for v in variants}
    errors = 0
    with tempfile.TemporaryDirectory(prefix="chatd-ab-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            stub, stub_port = start_stub(args.load_cpu, 0, out / "ab-stub.log")
            running.append(stub)
            urls: dict[str, str] = {}
            pids: dict[str, int] = {}
            for name, spec in variants.items():
                config = tmp / f"{name}.toml"
                write_config(config, 0, stub_port, None)
                proc, urls[name] = start(name, spec, args.chatd_cpu, config, out)
                running.append(proc)
                pids[name] = proc.pid
            names = list(variants)
            for round_no in range(args.rounds):
                for row_key in rows:
                    shift = round_no % len(names)
                    for name in names[shift:] + names[:shift]:
                        tool, conc, conns, streams = ROWS[row_key]
                        row = Row(
                            row_key, row_key, tool, f"{urls[name]}/chat", conc, chat_body(),
                            "fast", True, conns, streams, proxy=name,
                        )  # fmt: skip
                        sample = run_row(
                            row, args.duration, args.load_cpu, pids, {"fast": stub.pid}, tmp
                        )
                        errors += sample.errors
                        assert sample.chatd_cpu_ms is not None
                        cpu[name][row_key].append(sample.chatd_cpu_ms)
                        print(
                            f"round {round_no + 1} {row_key:8} {name:10} "
                            f"{sample.chatd_cpu_ms:.3f} ms/req {sample.rps:7.0f} req/s",
                            flush=True,
                        )
        finally:
            for proc in reversed(running):
                stop(proc)
    print(f"\nerrors: {errors}; CPU ms/request, median (min..max) over {args.rounds} rounds")
    for name in variants:
        mine = cpu[name]
        cells = [f"{row} {spread(mine[row], '.3f')}" for row in rows]
        if "h1" in rows:
            cells += [
                f"{row}/h1 {spread(ratios(mine[row], mine['h1']), '.3f')}x"
                for row in rows
                if row.startswith("h2")
            ]
        print(f"{name:10} " + "; ".join(cells))
    base, *others = variants
    for other in others:
        for row in rows:
            change = spread(ratios(cpu[other][row], cpu[base][row]), ".3f")
            print(f"{other} / {base} {row}: {change}x")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

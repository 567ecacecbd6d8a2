"""The chatd benchmark (run it as ``bench/run``; see bench/README.md).

chatd serves with one worker pinned to CPU 0; the stub upstreams and the load
generators (wrk for HTTP/1.1 keep-alive, h2load for h2c with prior knowledge)
share CPU 1. Every row runs once per round and the rows are interleaved round
by round, so a noisy neighbour hits them all alike; each figure is the median
over the rounds, with min..max.

About 450 lines: ``main`` starts every process the rows need (chatd tuned
and stock, the stream rows' chatd, the tick stubs, the 2-worker pool, the
floors, the gateway) in one place, so that one ``finally`` stops them all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from burst import Burst, burst_lines, gateway_bursts
from load import Row, h2_split, run_row, run_wrk
from procs import (
    BENCH,
    MODEL,
    SLOW_PROVIDER,
    chat_body,
    ensure_tools,
    free_port,
    http,
    pinned,
    rss_kb,
    start_chatd,
    start_gateway,
    start_stub,
    stop,
    tree_pids,
    tree_rss_kb,
    write_config,
)
from report import git_commit, render
from stream_rows import (
    StreamRow,
    build_stream_rows,
    h2_budget,
    run_stream_row,
    stream_body,
    stream_lines,
    tick_name,
)

# --------------------------------------------------------------------------- main


def start_floor(
    cpu: str | None, upstream: str, extra: list[str]
) -> tuple[str, subprocess.Popen[bytes]]:
    """``bench/floor.py`` relaying ``upstream``, pinned to ``cpu``, once it answers."""
    port = free_port()
    floor = subprocess.Popen(
        pinned(cpu, [sys.executable, str(BENCH / "floor.py"), "--port", str(port),
                     "--upstream", upstream, *extra]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if http("POST", f"{url}/", chat_body())[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)
    return url, floor


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
        "--no-install",
        action="store_true",
        help="never apt-get wrk/h2load: skip (and list) the rows of a missing one",
    )
    p.add_argument(
        "--streams",
        help="stream rows, STREAMS:MS_BETWEEN_CHUNKS comma-separated (200:20,1000:100; '': none)",
    )
    p.add_argument("--chunks", type=int, help="chunks per streamed answer (50)")
    p.add_argument("--stream-duration", type=float, help="seconds of new streams per run (10)")
    p.add_argument(
        "--no-floor-streams",
        dest="floor_streams",
        action="store_false",
        help="no floor stream rows (bare Hypercorn + aiohttp relaying the stub's stream)",
    )
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
    stock_url: str | None = None,
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
        if stock_url and conc != 64:
            rows.append(
                Row(f"stock-h1/c{conc}", "chatd /chat HTTP/1.1, stock stack", "wrk",
                    f"{stock_url}/chat", conc, body, "fast", True, proxy="chatd-stock")
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
        if stock_url and conc != 64:
            rows.append(
                Row(f"stock-h2/c{conc}", f"chatd /chat h2c ({conns}x{streams}), stock stack",
                    "h2load", f"{stock_url}/chat", conc, body, "fast", True, conns, streams,
                    proxy="chatd-stock")
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


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    missing = ensure_tools(install=not args.no_install)
    if missing:
        print(
            f"bench: {', '.join(missing)} not installed (--no-install): their rows are skipped",
            file=sys.stderr,
            flush=True,
        )
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    chatd_cpu = args.chatd_cpu if pin else None
    load_cpu = args.load_cpu if pin else None
    out_dir = BENCH / "out"
    out_dir.mkdir(exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    # The code the processes run is the tree as it is now, not at the end.
    args.commit = git_commit()
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
            # The same chatd on the libraries' stock paths (chatd.server.tuned
            # = false), on chatd's core, measured side by side.
            stock_port = free_port()
            stock = start_chatd(
                chatd_cpu, config, stock_port, out_dir / "chatd-stock.log",
                "--set", "chatd.server.tuned=false",
            )  # fmt: skip
            procs.append(stock)
            stock_url = f"http://127.0.0.1:{stock_port}"
            for _ in range(20):
                http("POST", f"{stock_url}/chat", chat_body())
            # The same chatd with 2 workers, on the same CPU (see bench/README.md).
            pool_port = free_port()
            pool_config = tmp / "chatd-pool.toml"
            write_config(pool_config, pool_port, fast_port, slow_port)
            pool = start_chatd(
                chatd_cpu, pool_config, pool_port, out_dir / "chatd-pool.log", workers=2
            )
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
                floor_urls[name], floor = start_floor(
                    chatd_cpu, f"http://127.0.0.1:{fast_port}", extra
                )
                procs.insert(0, floor)
                floor_pids[name] = floor.pid
            # The stream rows' floors: one per kind and chunk pace, on chatd's
            # core, each relaying that pace's stub; idle RSS after a few streams.
            sfloor_urls: dict[str, dict[float, str]] = {"floor": {}, "tuned": {}}
            sfloor_pids: dict[str, int] = {}
            stream_idle = {"schatd": stream_idle_mb}
            for name, extra in (("floor", []), ("tuned", ["--tuned"])):
                for _, ms in args.stream_levels if args.floor_streams else ():
                    url, sfloor = start_floor(chatd_cpu, stub_urls[ms], extra)
                    procs.insert(0, sfloor)
                    sfloor_urls[name][ms] = url
                    sfloor_pids[f"{name}{ms:g}"] = sfloor.pid
                    for _ in range(5):
                        http("POST", f"{url}/", stream_body())
                    time.sleep(0.5)
                    stream_idle[f"{name}{ms:g}"] = rss_kb(sfloor.pid) / 1024
            # The gateway is not pinned: on two cores there is none to give it,
            # and the scheduler places it where there is room.
            gateway = start_gateway(None, config, gateway_port, out_dir / "gateway.log")
            procs.insert(0, gateway)
            rows = build_rows(
                args, f"http://127.0.0.1:{fast_port}", f"http://127.0.0.1:{slow_port}",
                chatd_url, openai_ok, floor_urls["floor"], floor_urls["tuned"], stock_url, pool_url,
                f"http://127.0.0.1:{gateway_port}",
            )  # fmt: skip
            skipped += [
                f"{row.label} (c={row.conc}; {row.tool} not installed, --no-install)"
                for row in rows
                if row.tool in missing
            ]
            rows = [row for row in rows if row.tool not in missing]
            srows = build_stream_rows(
                args, stub_urls, schatd_url, openai_ok,
                sfloor_urls if args.floor_streams else None,
            )  # fmt: skip
            longest = args.chunks * max((ms for _, ms in args.stream_levels), default=0) / 1000
            total = len(rows) * args.runs * (args.duration + 0.5)
            # Each stream row: the streams' starts spread over one answer, the
            # counted window, the last answers' drain.
            total += len(srows) * args.runs * (args.stream_duration + 2 * longest + 2)
            print(
                f"bench: {len(rows)} rows and {len(srows)} stream rows x {args.runs} runs "
                f"x {args.duration:g} s "
                f"(~{total / 60:.1f} min); chatd pid {chatd.pid} on CPU {chatd_cpu}, "
                f"stubs and load on CPU {load_cpu}",
                file=sys.stderr,
                flush=True,
            )
            warm = Row("warm", "warm-up", "wrk", f"{chatd_url}/chat", 16, chat_body(), "fast", True)
            if "wrk" not in missing:
                run_wrk(warm, 1, load_cpu)
            stub_pids = {"fast": fast.pid, "slow": slow.pid, **tick_pids}
            # The stub on its own core (wrk on chatd's, idle now): it must far outrun chatd.
            alone = Row("stub", "stub alone", "wrk", f"http://127.0.0.1:{fast_port}/api/chat",
                        16, chat_body(), "fast", False)  # fmt: skip
            proxy_pids = {
                "chatd": chatd.pid,
                "chatd-stock": stock.pid,
                "pool": pool.pid,
                **floor_pids,
            }
            stub_alone = "not measured (wrk not installed)"
            if "wrk" not in missing:
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
                            row, args.stream_duration, args.chunks * row.tick_ms, load_cpu,
                            {"schatd": schatd.pid, **sfloor_pids}, stub_pids,
                        )  # fmt: skip
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
            bursts: list[Burst] = []
            if "h2load" not in missing:
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

    stream_rss = (stream_idle_mb, stream_peak_mb)
    report = render(
        args, rows, skipped, idle_mb, peak_mb, started, pin, shutdown, stub_alone,
        stream_lines(args, srows, stream_rss, stream_idle) + burst_lines(bursts),
        h2_budget(rows, srows, stream_idle),
        sum(s.errors for r in srows for s in r.samples),
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

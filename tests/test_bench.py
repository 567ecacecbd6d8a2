"""The benchmark harness runs end to end (``bench/run --quick``: ~1 s per row).

Its figures are not judged here, only that every row ran, served requests and
had no errors. The suite installs nothing: ``--no-install`` makes the bench
skip (and list) the rows of a missing wrk or h2load instead of apt-getting it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def table_rows(text: str) -> list[list[str]]:
    """The cells of each measured row of the printed results table."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| row | conc | req/s"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[2] != "not available":
            rows.append(cells)
    return rows


def number(cell: str) -> float:
    """The median of a ``median (min..max)`` cell."""
    match = re.match(r"-?[\d,]+(\.\d+)?", cell)
    assert match, cell
    return float(match.group(0).replace(",", ""))


def test_quick_bench_runs_without_errors(tmp_path: Path) -> None:
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    out, raw = tmp_path / "RESULTS.md", tmp_path / "results.json"
    argv = [sys.executable, str(RUN), "--quick", "--no-install", "--out", str(out)]
    proc = subprocess.run(
        [*argv, "--json", str(raw)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    rows = table_rows(proc.stdout)
    labels = [cells[0] for cells in rows]
    for tool in missing:
        # Said in the output and the table, not silently left out.
        assert f"{tool} not installed" in proc.stderr
        assert f"{tool} not installed, --no-install)" in proc.stdout
    if "wrk" not in missing:
        assert any(label.startswith("direct") for label in labels), labels
        assert any(label.startswith("chatd /chat HTTP/1.1") for label in labels), labels
        assert any(label.endswith("stock stack") for label in labels), labels
    if "h2load" not in missing:
        assert any(label.startswith("chatd /chat h2c") for label in labels), labels
        assert any(label.endswith("2 workers, same CPU") for label in labels), labels
        assert any(label.startswith("gateway /v1/chat h2c") for label in labels), labels
    for cells in rows:
        assert number(cells[2]) > 0, cells  # req/s
        assert cells[-1] == "0", cells  # errors
    assert out.read_text().startswith("# chatd benchmark results")

    data = json.loads(raw.read_text())
    samples = [s for row in data["rows"] for s in row["samples"]]
    assert samples or len(missing) == 2
    assert all(s["requests"] > 0 and s["errors"] == 0 for s in samples), samples

    # The stream rows: the stub directly, the stock and tuned floors (HTTP/1.1
    # and h2c) and chatd's NDJSON (HTTP/1.1 and h2c) and SSE surfaces, each
    # with stamped chunks timed and no errors.
    streams = {row["key"]: row["samples"] for row in data["stream_rows"]}
    assert {"sdirect/s20", "snative-h1/s20", "ssse-h1/s20", "snative-h2/s20"} <= set(streams)
    floors = {f"s{kind}-{proto}/s20" for kind in ("floor", "tuned") for proto in ("h1", "h2")}
    assert floors <= set(streams), set(streams)
    assert "| floor, tuned h2c" in proc.stdout
    for key, runs in streams.items():
        assert runs and all(s["chunks"] > 0 and s["errors"] == 0 for s in runs), (key, runs)
        assert all(s["chunks_all"] >= s["chunks"] for s in runs), (key, runs)
        assert all(0 < s["lat_p99_ms"] < 5000 for s in runs), (key, runs)
    assert "| chatd /chat NDJSON h2c" in proc.stdout

    # The gateway burst ran: every stream answered, direct and through the gateway.
    [burst] = data["gateway_bursts"]
    assert burst["errors"] == 0 and min(burst.values()) >= 0
    assert burst["direct_ms"] > 0 and burst["cold_ms"] > 0 and burst["warm_ms"] > 0
    assert "## Gateway burst: 200 concurrent h2 streams" in out.read_text()
    # Three processes (supervisor + 2 workers) weigh more than one.
    assert data["pool_idle_rss_mb"] > data["idle_rss_mb"] > 0
    assert "whole process tree" in out.read_text()

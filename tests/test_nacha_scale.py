"""A 500,000-entry NACHA file parses in seconds with flat memory (issue 10).

Each run parses in its own interpreter, reading the file from disk in the worker's
chunks as server/jobs/parsing.py does, so the peak RSS is the parser's alone. Flat means
10x the entries costs no more than a few MB more: nothing grows with the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nacha_builder import generated_file

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = 500_000
SMALL = 50_000
# Wall-clock bound: ~10 s on an idle laptop core; generous because CI shares its CPU.
MAX_SECONDS = 90
MAX_EXTRA_RSS_MB = 16
MAX_BYTES_PER_REMEMBERED_ENTRY = 200

PARSE = """
import json, sys, time
from server.constants import FILE_READ_BYTES
from server.ingest.nacha import iter_nacha_rows
from server.types import ParseReport

def peak_rss_mb():
    # VmHWM, not getrusage: ru_maxrss survives exec, so it would report pytest's peak.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)


path, options = sys.argv[1], [o for o in sys.argv[2].split(",") if o]
started, cpu = time.perf_counter(), time.process_time()
rows = 0
with open(path, "rb") as handle:
    chunks = iter(lambda: handle.read(FILE_READ_BYTES), b"")
    for _ in iter_nacha_rows(chunks, data_stream_key="ach", report=ParseReport(), options=options):
        rows += 1
print(json.dumps({
    "rows": rows,
    "seconds": round(time.perf_counter() - started, 2),
    "cpu_seconds": round(time.process_time() - cpu, 2),
    "max_rss_mb": peak_rss_mb(),
}))
"""


def measure(path: Path, options: str = "") -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", PARSE, str(path), options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def write(path: Path, entries: int) -> Path:
    with path.open("wb") as handle:
        for chunk in generated_file(entries):
            handle.write(chunk)
    return path


@pytest.mark.slow
def test_a_500000_entry_file_parses_in_seconds_with_flat_memory(tmp_path: Path) -> None:
    small = measure(write(tmp_path / "small.ach", SMALL))
    large = measure(write(tmp_path / "large.ach", ENTRIES))
    print(f"\n{SMALL:,} entries: {small}\n{ENTRIES:,} entries: {large}")
    assert (small["rows"], large["rows"]) == (SMALL, ENTRIES)
    assert large["seconds"] < MAX_SECONDS
    assert large["max_rss_mb"] - small["max_rss_mb"] < MAX_EXTRA_RSS_MB
    # With custom trace numbers every (batch, trace) must be remembered to refuse repeats:
    # memory grows then, by a bounded ~120 bytes an entry (nacha_state.TraceRegistry).
    relaxed = measure(tmp_path / "large.ach", "custom_trace_numbers")
    print(f"{ENTRIES:,} entries, custom_trace_numbers: {relaxed}")
    assert relaxed["rows"] == ENTRIES
    grown = (relaxed["max_rss_mb"] - large["max_rss_mb"]) * 2**20 / ENTRIES
    assert grown < MAX_BYTES_PER_REMEMBERED_ENTRY

"""µs/row of the msgspec fast path against orjson + validate_row, on the bench's rows.

    python scripts/fast_records_timing.py [--requests 200] [--repeat 5]

Each body is one `POST /v1/records/bulk` of 1000 rows exactly as `python run.py bench`
sends it (amounts as JSON numbers). Prints the best of `--repeat` runs per stage, in
process CPU time (steadier than wall time when other programs share the machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.bench.support import STREAM_KEY, bulk_body
from server.ingest.fast_records import fast_body_records, fast_record, split_records
from server.ingest.validation import StreamRef, ValidRecord, validate_row

STREAMS = {STREAM_KEY: StreamRef(1, "USD")}
ROWS_PER_BODY = 1000


def precise(bodies: list[bytes]) -> list[object]:
    return [validate_row(r, STREAMS) for b in bodies for r in orjson.loads(b)["records"]]


def parse_only(bodies: list[bytes]) -> list[object]:
    return [r for b in bodies for r in orjson.loads(b)["records"]]


def fast(bodies: list[bytes]) -> list[object]:
    out: list[object] = []
    for body in bodies:
        raws = split_records(body)
        assert raws is not None
        out.extend(fast_record(raw, STREAMS) for raw in raws)
    return out


def one_pass(bodies: list[bytes]) -> list[object]:
    out: list[object] = []
    for body in bodies:
        records = fast_body_records(body, STREAMS)
        assert records is not None
        out.extend(records)
    return out


def split_only(bodies: list[bytes]) -> list[object]:
    return [raw for b in bodies for raw in split_records(b) or []]


def best_us_per_row(
    stage: Callable[[list[bytes]], list[object]], bodies: list[bytes], n: int
) -> float:
    rows = len(bodies) * ROWS_PER_BODY
    best = float("inf")
    for _ in range(n):
        started = time.process_time()
        stage(bodies)
        best = min(best, time.process_time() - started)
    return best / rows * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bodies = [bulk_body(i * ROWS_PER_BODY, ROWS_PER_BODY, "t") for i in range(args.requests)]
    fast_results, precise_results = fast(bodies), precise(bodies)
    assert all(isinstance(r, ValidRecord) for r in fast_results)  # all took the fast path
    assert fast_results == precise_results == one_pass(bodies)
    for name, stage in [
        ("orjson.loads + validate_row (today)", precise),
        ("  of which orjson.loads", parse_only),
        ("msgspec split + fast_record", fast),
        ("  of which split_records", split_only),
        ("msgspec one pass (fast_body_records)", one_pass),
    ]:
        print(f"{name:<40} {best_us_per_row(stage, bodies, args.repeat):5.2f} µs/row", flush=True)


if __name__ == "__main__":
    main()

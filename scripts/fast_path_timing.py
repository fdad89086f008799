"""µs/row of the two accept → worker paths, on the bench's rows, the project's own functions.

    python scripts/fast_path_timing.py [--requests 50] [--repeat 5]

precise: the accept's parse (parse_json_document) and JSON staging (encode_items), then
the worker's decode and validate_batch. fast: the one-pass decode (decode_fast_body,
every_record) and validated staging (encode_validated_in_chunks), then the worker's
decode (decode_chunk) and validated_batch. Best of `--repeat`, in process CPU time
(steadier than wall time when other programs share the machine). Neither counts HTTP,
the transactions or the insert, which the two paths share.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.api.common import parse_json_document
from server.batches import validate_batch, validated_batch
from server.bench.support import STREAM_KEY, bulk_body
from server.ingest.fast_records import decode_fast_body, every_record
from server.ingest.validation import StreamRef
from server.staging import (
    ValidatedRows,
    decode_chunk,
    encode_items,
    encode_validated_in_chunks,
)

STREAMS = {STREAM_KEY: StreamRef(1, "USD")}
ROWS_PER_BODY = 1000


def precise_accept(body: bytes) -> bytes:
    records = parse_json_document(body).value["records"]
    return encode_items([[None, record, None] for record in records])


def precise_worker(chunk: bytes) -> object:
    items = decode_chunk(chunk)
    assert isinstance(items, list)
    return validate_batch(0, items, STREAMS)


def fast_accept(body: bytes) -> bytes:
    decoded = decode_fast_body(body)
    assert decoded is not None
    records = every_record(decoded, STREAMS)
    assert records is not None
    ((_first, _count, chunk),) = encode_validated_in_chunks(ValidatedRows(STREAMS, records))
    return chunk


def fast_worker(chunk: bytes) -> object:
    rows = decode_chunk(chunk)
    assert isinstance(rows, ValidatedRows)
    return validated_batch(0, rows.records)


def best(step: Callable[[bytes], object], inputs: list[bytes], repeat: int) -> float:
    """Best µs/row of `step` over every input, `repeat` times."""
    times = []
    for _ in range(repeat):
        started = time.process_time()
        for value in inputs:
            step(value)
        times.append(time.process_time() - started)
    return min(times) / (len(inputs) * ROWS_PER_BODY) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bodies = [bulk_body(n * ROWS_PER_BODY, ROWS_PER_BODY, "t") for n in range(args.requests)]
    for name, accept, worker in (
        ("precise", precise_accept, precise_worker),
        ("fast", fast_accept, fast_worker),
    ):
        chunks = [accept(body) for body in bodies]
        at_accept = best(accept, bodies, args.repeat)
        in_worker = best(worker, chunks, args.repeat)
        print(
            f"{name:8} accept {at_accept:5.2f}  worker {in_worker:5.2f}  "
            f"total {at_accept + in_worker:5.2f} µs/row  "
            f"(chunk {sum(map(len, chunks)) // len(chunks):,} bytes per 1000 rows)"
        )


if __name__ == "__main__":
    main()

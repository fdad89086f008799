"""Staged rows: their encoding, and where they are cut into chunks (one rule for uploads,
POSTs and retries). Every storage adapter stores these bodies as they are.

Four encodings: rows as they arrived (JSON, validated by the worker); rows the accept
already proved valid (msgpack ValidRecords, marked by a leading VALIDATED_V1 byte, which
neither older form can start with), which the worker only decodes and binds; a
parsed file's rows (CHECKED_V1), each the record the parse proved or, for a row it could
not prove, the staged item the worker validates as ever; and a bulk POST's body as it
arrived (RAW_BODY_V1), whose rows the worker proves or stages the precise way.

Every encoding is compressed with zstd (level STAGING_ZSTD_LEVEL, see constants); the
chunks of earlier versions are zlib streams (or plain JSON arrays before that) and are
still read, told apart by zstd's magic number, so an upgrade with requests pending
loses nothing.

A chunk is held whole in memory while it is staged and again when a worker decodes it,
so every path that stages rows closes a chunk at PARSE_CHUNK_ROWS rows or once its rows
hold PARSE_CHUNK_BYTES of input, whichever comes first (see server/constants.py).
"""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec
import orjson
import zstandard

from server.constants import (
    ORJSON_MAX_TEXT_BYTES,
    PARSE_CHUNK_BYTES,
    PARSE_CHUNK_ROWS,
    STAGING_ZSTD_LEVEL,
)
from server.ingest.json_checks import fits_storage
from server.ingest.json_document import precise_records
from server.ingest.validation import StreamRef, ValidRecord
from server.money import currency_exponent, format_major_units

# A staged input row: [line, fields, problem] where problem is [code, message, pointer].
StagedItem = list[Any]


# Every zstd frame starts with these four bytes; a zlib stream starts with 0x78.
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# zstd contexts are not safe to share between threads, and staging runs both on the
# event loop and in worker threads: one compressor and one decompressor per thread.
_zstd = threading.local()


def _compress(data: bytes | bytearray) -> bytes:
    compressor: zstandard.ZstdCompressor | None = getattr(_zstd, "compressor", None)
    if compressor is None:
        compressor = _zstd.compressor = zstandard.ZstdCompressor(level=STAGING_ZSTD_LEVEL)
    # The frame records its content size, so decompressing needs no size bound.
    return compressor.compress(data)


def _decompress(data: bytes) -> bytes:
    """A staged chunk's payload, whether this version (zstd) or an earlier one (zlib)
    compressed it."""
    if data[:4] != _ZSTD_MAGIC:
        return zlib.decompress(data)
    decompressor: zstandard.ZstdDecompressor | None = getattr(_zstd, "decompressor", None)
    if decompressor is None:
        decompressor = _zstd.decompressor = zstandard.ZstdDecompressor()
    return decompressor.decompress(data)


def _json_default(value: object) -> object:
    # Numbers parsed as Decimal (to keep amounts exact) are written back as the same
    # JSON number text, so metadata round-trips unchanged.
    if isinstance(value, Decimal):
        # Refused here, before anything is committed, not by the worker reading it back.
        if not fits_storage(value):
            raise TypeError(f"number {value} is beyond a double's range")
        return orjson.Fragment(str(value))
    raise TypeError(f"cannot serialize {type(value).__name__}")


def encode_items(items: Sequence[StagedItem]) -> bytes:
    """Staged rows as stored: JSON, compressed.

    Compression shrinks what the writer must copy into SQLite and its WAL ~10×: staging
    a 1000-row POST took the writer ~1 ms uncompressed, ~0.1 ms compressed.
    """
    return _compress(orjson.dumps(items, default=_json_default))


def encode_item(item: StagedItem) -> bytes:
    """One staged row as JSON, for a chunk built row by row (ChunkWriter)."""
    return orjson.dumps(item, default=_json_default)


def pack_items(json_array: bytes | bytearray) -> bytes:
    """A chunk from the JSON array of its rows: the same bytes as encode_items."""
    return _compress(json_array)


def decode_items(body: bytes) -> list[StagedItem]:
    # Chunks staged before compression was introduced are plain JSON arrays.
    text = body if body[:1] == b"[" else _decompress(body)
    items: list[StagedItem]
    if len(text) > ORJSON_MAX_TEXT_BYTES:  # wide rows: orjson's tree would triple the peak
        # The same values as orjson's: every integer staged fits 64 bits (fits_storage),
        # and both read any other number as the nearest double.
        items = json.loads(text)
    else:
        items = orjson.loads(text)
    return items


# The first byte of a validated chunk. A JSON chunk starts with `[`, a zlib stream with
# 0x78 and a zstd frame with 0x28, so chunks staged before validated ones existed are
# told apart by it; a later encoding takes the next byte value.
VALIDATED_V1 = b"\x01"


@dataclass(frozen=True, slots=True)
class ValidatedRows:
    """Rows the accept proved valid: their records, and the streams they were proved
    against (key → id and default currency), which the worker checks per batch."""

    streams: dict[str, StreamRef]
    records: list[ValidRecord]


_VALIDATED_ENCODER = msgspec.msgpack.Encoder()
# Typed: msgspec builds the NamedTuples itself, in C (no per-row Python).
_VALIDATED_DECODER = msgspec.msgpack.Decoder(tuple[dict[str, StreamRef], list[ValidRecord]])


def encode_validated(rows: ValidatedRows) -> bytes:
    """Validated rows as stored: VALIDATED_V1, then msgpack (streams, records),
    compressed like JSON chunks. ~3× smaller than the JSON of the same rows."""
    packed = _VALIDATED_ENCODER.encode((rows.streams, rows.records))
    return VALIDATED_V1 + _compress(packed)


# The first byte of a parsed file's chunk whose rows the parse checked (CheckedRows).
CHECKED_V1 = b"\x02"


@dataclass(frozen=True, slots=True)
class CheckedRows:
    """A parsed file's rows, each either a ValidRecord the parse proved (the worker only
    binds it) or a staged item the parse could not prove (the worker validates it as
    ever); `lines` has each row's line, for the row error a proved row may still get."""

    streams: dict[str, StreamRef]
    rows: list[ValidRecord | StagedItem]
    lines: list[int | None]


# (streams, the proved records, their lines, (offset, staged item) of the other rows).
_CheckedBody = tuple[
    dict[str, StreamRef], list[ValidRecord], list[int | None], list[tuple[int, StagedItem]]
]
_CHECKED_DECODER = msgspec.msgpack.Decoder(_CheckedBody)


def encode_checked(
    streams: dict[str, StreamRef],
    records: list[ValidRecord],
    lines: list[int | None],
    others: list[tuple[int, StagedItem]],
) -> bytes:
    """A parsed chunk: the proved rows' records and lines, and (offset in the chunk,
    staged item) of each other row. CHECKED_V1, then msgpack, compressed like the
    other encodings."""
    packed = _VALIDATED_ENCODER.encode((streams, records, lines, others))
    return CHECKED_V1 + _compress(packed)


def _decode_checked(body: bytes) -> CheckedRows:
    streams, records, record_lines, others = _CHECKED_DECODER.decode(_decompress(body[1:]))
    if not others:
        return CheckedRows(streams, list(records), list(record_lines))
    rows: list[ValidRecord | StagedItem] = []
    lines: list[int | None] = []
    taken = 0  # records placed so far
    for offset, item in others:
        upto = taken + offset - len(rows)
        rows += records[taken:upto]
        lines += record_lines[taken:upto]
        taken = upto
        rows.append(item)
        lines.append(item[0])
    rows += records[taken:]
    lines += record_lines[taken:]
    return CheckedRows(streams, rows, lines)


# The first byte of a bulk POST body staged as it arrived, for the worker to finish row
# by row (the accept decided only what concerns the whole request; see
# server/ingest/fast_records.py deferrable_body).
RAW_BODY_V1 = b"\x03"


@dataclass(frozen=True, slots=True)
class RawBody:
    """A bulk POST body the accept staged raw (its JSON text): the worker proves its
    rows (ValidatedRows) or, when one is not provable, stages them the precise way."""

    text: bytes


def encode_raw_body(text: bytes) -> bytes:
    """RAW_BODY_V1, then the body's text, compressed like the other encodings."""
    return RAW_BODY_V1 + _compress(text)


def precise_items(text: bytes) -> list[StagedItem]:
    """The staged rows the precise path would have staged for this body, as a worker
    reads them back (encoded and decoded: the very values, not merely equal ones)."""
    return decode_items(encode_items([[None, record, None] for record in precise_records(text)]))


def record_source(record: ValidRecord, stream_key: str, line: int | None) -> StagedItem:
    """The staged row a proved record stands for, rebuilt from it (it kept no text):
    the fields it was sent with, the amount in the currency's decimals and the currency
    named. A row error keeps it as its `source`; validating it gives the record back."""
    exponent = currency_exponent(record.currency)
    assert exponent is not None  # a proved record's currency is a known one
    fields: dict[str, Any] = {
        "data_stream_key": stream_key,
        "date": record.date,
        "amount": format_major_units(record.amount_minor, exponent),
        "currency": record.currency,
    }
    if record.description is not None:
        fields["description"] = record.description
    if record.external_id is not None:
        fields["external_id"] = record.external_id
    return [line, fields, None]


def decode_chunk(body: bytes) -> list[StagedItem] | ValidatedRows:
    """A stored chunk's rows, in whichever encoding it was staged, for copying them (a
    retry): a checked chunk's rows come back as staged items (a proved one rebuilt by
    record_source), which the worker validates again to the same records."""
    if body[:1] == VALIDATED_V1:
        streams, records = _VALIDATED_DECODER.decode(_decompress(body[1:]))
        return ValidatedRows(streams, records)
    if body[:1] == RAW_BODY_V1:
        return precise_items(_decompress(body[1:]))
    if body[:1] == CHECKED_V1:
        checked = _decode_checked(body)
        keys = {ref.id: key for key, ref in checked.streams.items()}
        return [
            record_source(row, keys[row.data_stream_id], line)
            if isinstance(row, ValidRecord)
            else row
            for row, line in zip(checked.rows, checked.lines, strict=True)
        ]
    return decode_items(body)


def decode_rows(body: bytes) -> list[StagedItem] | ValidatedRows | CheckedRows | RawBody:
    """A stored chunk's rows as the worker processes them."""
    if body[:1] == CHECKED_V1:
        return _decode_checked(body)
    if body[:1] == RAW_BODY_V1:
        return RawBody(_decompress(body[1:]))
    return decode_chunk(body)


# A chunk as it is inserted: (first row, row count, encoded body).
EncodedChunk = tuple[int, int, bytes]


@dataclass(frozen=True, slots=True)
class StagedChunk:
    """A stored chunk: rows first_row .. first_row + row_count - 1, encoded."""

    first_row: int
    row_count: int
    body: bytes

    def rows(self) -> list[StagedItem] | ValidatedRows | CheckedRows | RawBody:
        return decode_rows(self.body)

    def items(self) -> list[StagedItem]:
        """The rows of a chunk staged as they arrived (JSON); not of a validated one."""
        return decode_items(self.body)


class ChunkFill:
    """The rows and bytes of the chunk being filled."""

    def __init__(self) -> None:
        self.rows = 0
        self.size = 0

    @staticmethod
    def limits() -> tuple[int, int]:
        """(rows, bytes) at which a chunk is full, for a caller that counts inline."""
        return PARSE_CHUNK_ROWS, PARSE_CHUNK_BYTES

    def add(self, size: int) -> bool:
        """Count one row of `size` bytes; True when the chunk is now full."""
        self.rows += 1
        self.size += size
        return self.rows >= PARSE_CHUNK_ROWS or self.size >= PARSE_CHUNK_BYTES

    def reset(self) -> None:
        self.rows = 0
        self.size = 0


class ChunkWriter:
    """The chunk being filled, its rows encoded one by one into one buffer.

    Each encoded row is copied into the buffer and dropped: orjson's output for a wide
    row keeps a much larger allocation (a 16 KB row held ~500 KB), so holding a list of
    them cost ~30× the chunk.
    """

    def __init__(self) -> None:
        self._fill = ChunkFill()
        self._body = bytearray(b"[")

    @property
    def rows(self) -> int:
        return self._fill.rows

    def add(self, item: StagedItem) -> bool:
        """Append one row; True when the chunk is now full."""
        encoded = encode_item(item)
        if self._fill.rows:
            self._body += b","
        self._body += encoded
        return self._fill.add(len(encoded))

    def take(self) -> tuple[int, bytes]:
        """(row count, body) of the chunk, and start an empty one."""
        self._body += b"]"
        taken = (self._fill.rows, pack_items(self._body))
        self._fill.reset()
        self._body = bytearray(b"[")
        return taken


def encode_in_chunks(items: Sequence[StagedItem]) -> list[EncodedChunk]:
    """The rows of a POST (or any list held whole) as chunks cut by ChunkFill, so that
    a worker decodes at most about PARSE_CHUNK_BYTES of them at a time."""
    chunks: list[EncodedChunk] = []
    writer = ChunkWriter()
    first_row = 0
    for item in items:
        if writer.add(item):
            row_count, body = writer.take()
            chunks.append((first_row, row_count, body))
            first_row += row_count
    if writer.rows:
        row_count, body = writer.take()
        chunks.append((first_row, row_count, body))
    return chunks


class ValidatedWriter:
    """Validated rows being copied into chunks (a retry's), closed at PARSE_CHUNK_ROWS
    rows: a validated row is bounded (no metadata, bounded strings), so rows decide."""

    def __init__(self) -> None:
        self._streams: dict[str, StreamRef] = {}
        self._records: list[ValidRecord] = []

    @property
    def rows(self) -> int:
        return len(self._records)

    def add(self, record: ValidRecord, streams: dict[str, StreamRef]) -> bool:
        """Append one record (proved against `streams`); True when the chunk is full."""
        self._streams.update(streams)
        self._records.append(record)
        return len(self._records) >= PARSE_CHUNK_ROWS

    def take(self) -> tuple[int, bytes]:
        """(row count, body) of the chunk, and start an empty one."""
        taken = (len(self._records), encode_validated(ValidatedRows(self._streams, self._records)))
        self._streams, self._records = {}, []
        return taken


def encode_validated_in_chunks(rows: ValidatedRows) -> list[EncodedChunk]:
    """The validated rows of a POST as chunks of at most PARSE_CHUNK_ROWS rows."""
    records = rows.records
    return [
        (
            first,
            len(part := records[first : first + PARSE_CHUNK_ROWS]),
            encode_validated(ValidatedRows(rows.streams, part)),
        )
        for first in range(0, len(records), PARSE_CHUNK_ROWS)
    ]

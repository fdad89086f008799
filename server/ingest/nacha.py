"""NACHA (ACH) files → SourceRows: a strict streaming parser with no I/O of its own.

The rules are `shared/nacha/FORMAT.md`'s. Entries are yielded as soon as their addenda
are read, before the batch and file controls that vouch for them have been checked:
the caller only stages rows and discards them all when FileRejected is raised, so
"nothing is inserted unless the whole file is valid" holds with bounded memory.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date

from server.types import JSON, FileRejected, ParseReport, SourceRow

RECORD_LENGTH = 94
PADDING = "9" * RECORD_LENGTH
# Account type first digit (2 checking, 3 savings, 4 general ledger, 5 loan); second
# digit: 1/6 return or NOC, 2/7 live, 3/8 prenote, 4/9 zero-dollar remittance.
KNOWN_TRANSACTION_CODES = frozenset(
    {
        21,
        22,
        23,
        24,
        26,
        27,
        28,
        29,
        31,
        32,
        33,
        34,
        36,
        37,
        38,
        39,
        41,
        42,
        43,
        44,
        46,
        47,
        48,
        49,
        51,
        52,
        53,
        54,
        55,
        56,
    }
)
HASH_MODULUS = 10**10  # entry hashes keep only their rightmost 10 digits


def _reject(line: int | None, rule: str, message: str, **details: object) -> FileRejected:
    prefix = f"line {line}: " if line is not None else ""
    return FileRejected(prefix + message, {"line": line, "rule": rule, **details})


def _number(text: str, line: int, what: str, rule: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise _reject(line, rule, f"{what} {text.strip()!r} is not numeric")
    return int(text)


# --- physical records ----------------------------------------------------------------------


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Real files carry Windows-1252 names; undefined bytes there are kept as latin-1.
        try:
            return raw.decode("cp1252")
        except UnicodeDecodeError:
            return raw.decode("latin-1")


def _physical_records(chunks: Iterable[bytes], report: ParseReport) -> Iterator[tuple[int, str]]:
    """(line number, 94-character record) pairs, from LF, CRLF or unbroken files."""
    iterator = iter(chunks)
    head = b""
    for chunk in iterator:
        head += chunk
        if b"\n" in head[: RECORD_LENGTH + 2] or len(head) > RECORD_LENGTH + 2:
            break
    if b"\n" in head[: RECORD_LENGTH + 2]:
        yield from _lines(head, iterator, report)
    else:
        yield from _unbroken(head, iterator)


def _lines(head: bytes, rest: Iterator[bytes], report: ParseReport) -> Iterator[tuple[int, str]]:
    buffer = head
    number = 0
    blank_run: list[int] = []
    padded = 0

    def records(raw_lines: list[bytes]) -> Iterator[tuple[int, str]]:
        nonlocal number, padded
        for raw in raw_lines:
            number += 1
            text = _decode(raw.rstrip(b"\r"))
            if not text.strip():
                blank_run.append(number)  # allowed only at the end of the file
                continue
            if blank_run:
                raise _reject(blank_run[0], "blank_line", "blank line inside the file")
            if len(text) > RECORD_LENGTH:
                raise _reject(
                    number,
                    "record_length",
                    f"length {len(text)} > {RECORD_LENGTH}",
                    length=len(text),
                )
            if len(text) < RECORD_LENGTH:
                report.warnings.append(f"line {number}: short ({len(text)}), padded")
                padded += 1
                text = text.ljust(RECORD_LENGTH)
            yield number, text

    for chunk in rest:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        yield from records(complete)
    *complete, last = buffer.split(b"\n")
    yield from records([*complete, last] if last else complete)


def _unbroken(head: bytes, rest: Iterator[bytes]) -> Iterator[tuple[int, str]]:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(head)
    number = 0
    for chunk in rest:
        text += decoder.decode(chunk)
        while len(text) >= RECORD_LENGTH * 2:
            number += 1
            yield number, text[:RECORD_LENGTH]
            text = text[RECORD_LENGTH:]
    text += decoder.decode(b"", final=True)
    text = text.rstrip("\r\n")
    if len(text) % RECORD_LENGTH:
        total = number * RECORD_LENGTH + len(text)
        raise _reject(
            None,
            "record_length",
            f"the file has no line breaks and its length {total} is not a multiple "
            f"of {RECORD_LENGTH}",
            length=total,
        )
    for start in range(0, len(text), RECORD_LENGTH):
        number += 1
        yield number, text[start : start + RECORD_LENGTH]


# --- logical structure ---------------------------------------------------------------------


@dataclass(slots=True)
class _Batch:
    line: int
    header: str
    sec: str
    effective_date: str
    date_fallback_noted: bool = False
    count: int = 0
    entry_hash: int = 0
    debit: int = 0
    credit: int = 0


@dataclass(slots=True)
class _Entry:
    line: int
    record: str
    code: int
    amount: int
    announced_addenda: bool
    addenda: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _File:
    creation_date: str = ""
    modifier: str = ""
    batches: int = 0
    count: int = 0
    entry_hash: int = 0
    debit: int = 0
    credit: int = 0


def iter_nacha_rows(
    chunks: Iterable[bytes], *, data_stream_key: str, report: ParseReport | None = None
) -> Iterator[SourceRow]:
    report = report if report is not None else ParseReport()
    totals = _File()
    batch: _Batch | None = None
    entry: _Entry | None = None
    seen_header = False
    control_line: int | None = None
    records_total = 0
    control_index = 0
    block_count = 0

    for line, record in _physical_records(chunks, report):
        records_total += 1
        kind = record[0]
        if control_line is not None:
            if record != PADDING:
                raise _reject(line, "after_file_control", "data after the file control record")
            continue
        if not seen_header:
            if kind != "1":
                raise _reject(
                    line, "no_file_header", "no file header (the first record must be type 1)"
                )
            seen_header = True
            totals.creation_date = record[23:29]
            totals.modifier = record[33:34]
            continue
        if kind != "7" and entry is not None:
            assert batch is not None
            yield _row(entry, batch, totals, data_stream_key, report)
            entry = None
        if kind == "5":
            if batch is not None:
                raise _reject(line, "batch_header_inside_batch", "batch header inside batch")
            batch = _batch_header(line, record)
        elif kind == "6":
            if batch is None:
                raise _reject(line, "entry_outside_batch", "entry detail outside a batch")
            entry = _entry(line, record, batch)
        elif kind == "7":
            if entry is None or not entry.announced_addenda:
                raise _reject(line, "stray_addenda", "addenda without an entry that announced it")
            assert batch is not None
            batch.count += 1
            entry.addenda.append(record)
        elif kind == "8":
            if batch is None:
                raise _reject(line, "control_outside_batch", "batch control outside a batch")
            _check_batch(line, record, batch)
            totals.batches += 1
            totals.count += batch.count
            totals.entry_hash += batch.entry_hash
            totals.debit += batch.debit
            totals.credit += batch.credit
            batch = None
        elif kind == "9":
            if batch is not None:
                raise _reject(
                    line, "file_control_inside_batch", "file control before the batch control"
                )
            _check_file(line, record, totals)
            control_line = line
            control_index = records_total
            block_count = _number(record[7:13], line, "block count", "file_control_numeric")
        elif kind == "1":
            raise _reject(line, "second_file_header", "a second file header")
        else:
            raise _reject(line, "unknown_record_type", f"unknown record type {kind!r}")

    if not seen_header:
        raise _reject(None, "no_file_header", "the file is empty: no file header")
    if control_line is None:
        raise _reject(None, "no_file_control", "the file ends without a file control record")
    if block_count != -(-control_index // 10):
        report.warnings.append(
            f"file control block count {block_count}, but the file has "
            f"{-(-control_index // 10)} blocks (all totals agree)"
        )
    if records_total % 10:
        report.notes.append("the file is not padded to a multiple of 10 records")


def _batch_header(line: int, record: str) -> _Batch:
    sec = record[50:53]
    if sec == "ADV":
        raise _reject(
            line,
            "adv_not_supported",
            "ADV (automated accounting advice) files use a different entry layout "
            "and are not supported",
        )
    return _Batch(line=line, header=record, sec=sec, effective_date=record[69:75])


def _entry(line: int, record: str, batch: _Batch) -> _Entry:
    code = _number(record[1:3], line, "transaction code", "entry_numeric")
    if code not in KNOWN_TRANSACTION_CODES:
        raise _reject(line, "unknown_transaction_code", f"unknown transaction code {code:02d}")
    rdfi = _number(record[3:11], line, "receiving DFI identification", "entry_numeric")
    amount = _number(record[29:39], line, "amount", "entry_numeric")
    _number(record[79:94], line, "trace number", "entry_numeric")
    if code % 10 in (3, 8) and amount != 0:
        raise _reject(
            line,
            "prenote_amount",
            f"prenotification (transaction code {code}) with non-zero amount {amount}",
        )
    batch.count += 1
    batch.entry_hash += rdfi
    if code % 10 >= 5:
        batch.debit += amount
    else:
        batch.credit += amount
    return _Entry(line, record, code, amount, record[78] == "1")


def _compare(line: int, rule: str, what: str, stated: int, actual: int, unit: str) -> None:
    if stated != actual:
        raise _reject(
            line, rule, f"{what} {stated}, but {unit} {actual}", stated=stated, actual=actual
        )


def _check_batch(line: int, record: str, batch: _Batch) -> None:
    def num(a: int, b: int, what: str) -> int:
        return _number(record[a:b], line, what, "batch_control_numeric")

    _compare(
        line,
        "batch_entry_count",
        "batch control entry/addenda count",
        num(4, 10, "entry/addenda count"),
        batch.count,
        "the batch has",
    )
    _compare(
        line,
        "batch_entry_hash",
        "batch control entry hash",
        num(10, 20, "entry hash"),
        batch.entry_hash % HASH_MODULUS,
        "its entries sum to",
    )
    _compare(
        line,
        "batch_debit_total",
        "batch control total debit",
        num(20, 32, "total debit"),
        batch.debit,
        "its debit entries sum to",
    )
    _compare(
        line,
        "batch_credit_total",
        "batch control total credit",
        num(32, 44, "total credit"),
        batch.credit,
        "its credit entries sum to",
    )


def _check_file(line: int, record: str, totals: _File) -> None:
    def num(a: int, b: int, what: str) -> int:
        return _number(record[a:b], line, what, "file_control_numeric")

    _compare(
        line,
        "file_batch_count",
        "file control batch count",
        num(1, 7, "batch count"),
        totals.batches,
        "the file has",
    )
    _compare(
        line,
        "file_entry_count",
        "file control entry/addenda count",
        num(13, 21, "entry/addenda count"),
        totals.count,
        "the batches have",
    )
    _compare(
        line,
        "file_entry_hash",
        "file control entry hash",
        num(21, 31, "entry hash"),
        totals.entry_hash % HASH_MODULUS,
        "the batches sum to",
    )
    _compare(
        line,
        "file_debit_total",
        "file control total debit",
        num(31, 43, "total debit"),
        totals.debit,
        "the batches sum to",
    )
    _compare(
        line,
        "file_credit_total",
        "file control total credit",
        num(43, 55, "total credit"),
        totals.credit,
        "the batches sum to",
    )


# --- mapping an entry to a record ------------------------------------------------------------


def _iso_date(yymmdd: str) -> str | None:
    if not (yymmdd.isdigit() and len(yymmdd) == 6):
        return None
    try:
        return date(2000 + int(yymmdd[:2]), int(yymmdd[2:4]), int(yymmdd[4:])).isoformat()
    except ValueError:
        return None


def _major_units(cents: int, debit: bool) -> str:
    whole, frac = divmod(cents, 100)
    return f"{'-' if debit and cents else ''}{whole}.{frac:02d}"


def _masked(account: str) -> str:
    return "****" + account[-4:] if account else ""


def _row(
    entry: _Entry, batch: _Batch, totals: _File, stream: str, report: ParseReport
) -> SourceRow:
    rec = entry.record
    header = batch.header
    sec = batch.sec
    if sec == "IAT":
        account = rec[39:74].strip()
        name = next((a[46:81].strip() for a in entry.addenda if a[1:3] == "10"), "")
        individual_id = ""
    elif sec == "CTX":
        account, name, individual_id = rec[12:29].strip(), rec[58:74].strip(), rec[39:54].strip()
    elif sec == "CIE":
        account, name, individual_id = rec[12:29].strip(), rec[39:54].strip(), rec[54:76].strip()
    else:
        account, name, individual_id = rec[12:29].strip(), rec[54:76].strip(), rec[39:54].strip()
    iso = _iso_date(batch.effective_date)
    if iso is None:
        iso = _iso_date(totals.creation_date)
        if not batch.date_fallback_noted:
            batch.date_fallback_noted = True
            report.notes.append(
                f"line {batch.line}: effective entry date {batch.effective_date.strip()!r} is "
                "not a date; the file creation date was used"
            )
    trace = rec[79:94]
    batch_number = header[87:94]
    entry_description = header[53:63].strip()
    metadata: JSON = {
        "routing_number": rec[3:12].strip(),
        "account_number_masked": _masked(account),
        "transaction_code": rec[1:3],
        "sec_code": sec,
        "company_name": header[4:20].strip(),
        "company_id": header[40:50].strip(),
        "individual_id": individual_id,
        "individual_name": name,
        "trace_number": trace,
        "batch_number": batch_number,
    }
    payments = [a[3:83].strip() for a in entry.addenda if a[1:3] == "05" and a[3:83].strip()]
    if payments:
        metadata["addenda"] = payments
    for addenda in entry.addenda:
        kind = addenda[1:3]
        if kind == "99":
            metadata["return_reason_code"] = addenda[3:6].strip()
            metadata["original_trace_number"] = addenda[6:21].strip()
        elif kind == "98":
            metadata["change_code"] = addenda[3:6].strip()
            metadata["original_trace_number"] = addenda[6:21].strip()
            metadata["corrected_data"] = addenda[35:64].strip()
    fields: JSON = {
        "date": iso,
        "amount": _major_units(entry.amount, entry.code % 10 >= 5),
        "currency": "USD",
        "description": " ".join(p for p in (entry_description, name) if p),
        "external_id": f"{totals.creation_date}{totals.modifier}-{batch_number}-{trace}",
        "data_stream_key": stream,
        "metadata": {k: v for k, v in metadata.items() if v},
    }
    return SourceRow(fields=fields, line=entry.line)

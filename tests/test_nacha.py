"""The NACHA parser on generated files: every mapping and every strict rule."""

from __future__ import annotations

from decimal import Decimal

import pytest

from server.ingest.nacha import iter_nacha_rows
from server.types import FileRejected, ParseReport, SourceRow
from tests.nacha_builder import Batch, Entry, build, encode, sample_batches


def parse(data: bytes, chunk: int = 65536, report: ParseReport | None = None) -> list[SourceRow]:
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    return list(iter_nacha_rows(pieces, data_stream_key="ach", report=report))


def rejected(data: bytes) -> FileRejected:
    with pytest.raises(FileRejected) as info:
        parse(data)
    return info.value


def test_mapping_of_entries_addenda_debits_and_credits() -> None:
    rows = parse(encode(build(sample_batches())))
    assert [r.fields["amount"] for r in rows] == ["2500.00", "1875.50", "0.00", "-49.99", "0.00"]
    assert sum(Decimal(r.fields["amount"]) for r in rows) == Decimal("4325.51")
    first = rows[0]
    assert first.line == 3
    assert first.fields["date"] == "2024-01-15"
    assert first.fields["external_id"] == "240115A-0000001-091000010000001"
    assert first.fields["description"] == "PAYROLL ALICE"
    assert first.fields["currency"] == "USD"
    assert first.fields["data_stream_key"] == "ach"
    meta = first.fields["metadata"]
    assert meta["routing_number"] == "071000301"
    assert meta["account_number_masked"] == "****6789"
    assert meta["addenda"] == ["SALARY JANUARY"]
    assert (meta["sec_code"], meta["transaction_code"], meta["trace_number"]) == (
        "PPD",
        "22",
        "091000010000001",
    )
    assert rows[3].fields["metadata"]["return_reason_code"] == "R01"
    assert rows[3].fields["metadata"]["original_trace_number"] == "091000010000009"
    assert rows[4].fields["metadata"]["change_code"] == "C01"
    assert rows[4].fields["metadata"]["corrected_data"] == "99887766"
    # Trace numbers repeat across batches; the external ids do not.
    assert rows[0].fields["metadata"]["trace_number"] == rows[3].fields["metadata"]["trace_number"]
    assert len({r.fields["external_id"] for r in rows}) == 5
    dumped = repr(rows)
    for account in ("123456789", "987654321", "5550001234"):
        assert f"'{account}'" not in dumped  # no value is a full account number


@pytest.mark.parametrize("newline", ["\n", "\r\n", ""])
@pytest.mark.parametrize("chunk", [1, 7, 94, 65536])
def test_line_endings_and_chunk_boundaries_do_not_matter(newline: str, chunk: int) -> None:
    expected = [r.fields for r in parse(encode(build(sample_batches())))]
    assert [r.fields for r in parse(encode(build(sample_batches()), newline), chunk)] == expected


def test_short_lines_are_padded_with_a_warning_and_trailing_blank_lines_ignored() -> None:
    records = build(sample_batches())
    records[13] = records[13].rstrip()  # the file control ends in 39 blanks
    report = ParseReport()
    rows = parse(encode(records) + b"\n\n", report=report)
    assert len(rows) == 5
    assert report.warnings == [f"line 14: short ({len(records[13])}), padded"]


def test_missing_padding_is_only_a_note() -> None:
    report = ParseReport()
    assert len(parse(encode(build(sample_batches(), pad=False)), report=report)) == 5
    assert report.warnings == []
    assert report.notes


def _corrupt(index: int, start: int, text: str) -> bytes:
    records = build(sample_batches())
    record = records[index]
    records[index] = record[:start] + text + record[start + len(text) :]
    return encode(records)


# Record indexes in build(sample_batches()): 0 file header, 1 batch header, 2 entry,
# 3 addenda, 4 entry, 5 entry (prenote), 6 batch control, 7 header, 8 entry, 9 addenda,
# 10 entry, 11 addenda, 12 batch control, 13 file control.
@pytest.mark.parametrize(
    ("index", "start", "text", "rule", "line"),
    [
        (6, 4, "000009", "batch_entry_count", 7),
        (6, 10, "0000000001", "batch_entry_hash", 7),
        (6, 20, "000000000001", "batch_debit_total", 7),
        (6, 32, "000000000001", "batch_credit_total", 7),
        (13, 1, "000003", "file_batch_count", 14),
        (13, 13, "00000001", "file_entry_count", 14),
        (13, 21, "0000000001", "file_entry_hash", 14),
        (13, 31, "000000000001", "file_debit_total", 14),
        (13, 43, "000000000001", "file_credit_total", 14),
        (2, 29, "00000X0000", "entry_numeric", 3),
        (2, 3, "0710003A", "entry_numeric", 3),
        (2, 79, "09100001000000Z", "entry_numeric", 3),
        (2, 1, "25", "unknown_transaction_code", 3),
        (5, 29, "0000000001", "prenote_amount", 6),
        (4, 0, "X", "unknown_record_type", 5),
        (7, 0, "6", "entry_outside_batch", 8),
        (4, 0, "5", "batch_header_inside_batch", 5),
        (5, 0, "7", "stray_addenda", 6),
        (12, 0, "9", "file_control_inside_batch", 13),
        (1, 50, "ADV", "adv_not_supported", 2),
        (0, 0, "5", "no_file_header", 1),
        (7, 0, "1", "second_file_header", 8),
    ],
)
def test_each_strict_rule_rejects_the_whole_file(
    index: int, start: int, text: str, rule: str, line: int
) -> None:
    error = rejected(_corrupt(index, start, text))
    assert error.details["rule"] == rule, error.message
    assert error.details["line"] == line
    assert error.message.startswith(f"line {line}: ")


def test_a_long_line_and_a_bad_unbroken_length() -> None:
    records = build(sample_batches())
    records[3] += "XX"
    error = rejected(encode(records))
    assert (error.details["rule"], error.details["line"]) == ("record_length", 4)
    error = rejected(encode(build(sample_batches()), "")[:-5])
    assert error.details["rule"] == "record_length"
    assert "no line breaks" in error.message


def test_missing_file_control_and_data_after_it() -> None:
    records = build(sample_batches(), pad=False)
    assert rejected(encode(records[:-1])).details["rule"] == "no_file_control"
    assert rejected(encode([*records, records[2]])).details["rule"] == "after_file_control"
    assert rejected(b"").details["rule"] == "no_file_header"


def test_windows_1252_names_are_decoded() -> None:
    records = build([Batch([Entry(name="JOSE MUNOZ")])])
    raw = encode(records).replace(b"JOSE MUNOZ", "JOSÉ MUÑOZ".encode("cp1252"))
    [row] = parse(raw)
    assert row.fields["metadata"]["individual_name"] == "JOSÉ MUÑOZ"


def test_effective_date_falls_back_to_the_creation_date() -> None:
    report = ParseReport()
    [row] = parse(encode(build([Batch([Entry()], effective="000000")])), report=report)
    assert row.fields["date"] == "2024-01-15"
    assert "effective entry date" in report.notes[0]

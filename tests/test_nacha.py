"""The NACHA parser on generated files: mapping, physical lines, structure, file identity."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import pytest

from server.constants import MAX_NACHA_LINE_BYTES, NACHA_MAX_REPORTED_ERRORS
from server.ingest.nacha import iter_nacha_rows
from server.ingest.nacha_codes import NachaOption
from server.types import FileRejected, ParseReport, SourceRow
from tests.nacha_builder import (
    Batch,
    Entry,
    FileHeader,
    addenda99,
    build,
    encode,
    sample_batches,
)


def parse(
    data: bytes,
    chunk: int = 65536,
    report: ParseReport | None = None,
    options: Iterable[NachaOption] = (),
) -> list[SourceRow]:
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    return list(iter_nacha_rows(pieces, data_stream_key="ach", report=report, options=options))


def rejected(data: bytes, options: Iterable[NachaOption] = ()) -> FileRejected:
    with pytest.raises(FileRejected) as info:
        parse(data, options=options)
    return info.value


def test_mapping_of_entries_addenda_debits_and_credits() -> None:
    rows = parse(encode(build(sample_batches())))
    assert [r.fields["amount"] for r in rows] == ["2500.00", "1875.50", "0.00", "-49.99", "0.00"]
    assert sum(Decimal(r.fields["amount"]) for r in rows) == Decimal("4325.51")
    first = rows[0]
    assert first.line == 3
    assert first.fields["date"] == "2024-01-15"
    # FORMAT.md: origin (digits) - creation date, time, modifier - batch - trace.
    assert first.fields["external_id"] == "091000019-2401151200A-0000001-091000010000001"
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


def test_lines_blank_past_column_94_are_trimmed_with_one_warning() -> None:
    records = build(sample_batches())
    for index, extra in ((0, 3), (4, 1), (13, 20)):
        records[index] += " " * extra
    report = ParseReport()
    assert [r.fields for r in parse(encode(records), 5, report=report)] == [
        r.fields for r in parse(encode(build(sample_batches())))
    ]
    assert report.warnings == ["lines 1, 5 and 14 carry blanks past column 94: trimmed"]
    # A long first line must not make the file look like one without line breaks.
    records = build(sample_batches())
    records[0] += " " * 300
    report = ParseReport()
    assert len(parse(encode(records, "\r\n"), 7, report=report)) == 5
    assert report.warnings == ["line 1 carries blanks past column 94: trimmed"]


def test_warning_lists_stay_bounded() -> None:
    returns = [Entry(code="26", addenda=[addenda99("R01", "091000010000001")]) for _ in range(150)]
    records = [
        r.rstrip() if r.startswith("799") else r + " " if r.startswith("6") else r
        for r in build([Batch(returns)])
    ]
    report = ParseReport()
    assert len(parse(encode(records), report=report)) == 150
    assert report.warnings[0] == "line 4: short (21), padded"
    assert len(report.warnings) == 102  # 100 listed, then two summaries
    assert report.warnings[100] == "50 more short lines padded"
    assert report.warnings[101].startswith("lines 3, 5, 7, ")
    assert report.warnings[101].endswith(" and 50 more carry blanks past column 94: trimmed")


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
STRUCTURAL_CASES = [
    (6, 4, "000009", "batch_entry_count", 7),
    (6, 10, "0000000001", "batch_entry_hash", 7),
    (6, 20, "000000000001", "batch_debit_total", 7),
    (6, 32, "000000000001", "batch_credit_total", 7),
    (13, 1, "000003", "file_batch_count", 14),
    (13, 13, "00000001", "file_entry_count", 14),
    (13, 21, "0000000001", "file_entry_hash", 14),
    (13, 31, "000000000001", "file_debit_total", 14),
    (13, 43, "000000000001", "file_credit_total", 14),
    (6, 4, "00000X", "batch_control_numeric", 7),
    (13, 1, "00000X", "file_control_numeric", 14),
    (2, 29, "00000X0000", "entry_numeric", 3),
    (2, 3, "0710003A", "entry_numeric", 3),
    (2, 79, "09100001000000Z", "entry_numeric", 3),
    (2, 1, "2X", "entry_numeric", 3),
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
    (7, 0, "8", "control_outside_batch", 8),
]


@pytest.mark.parametrize(("index", "start", "text", "rule", "line"), STRUCTURAL_CASES)
def test_each_structural_rule_rejects_the_whole_file_even_with_every_relaxation(
    index: int, start: int, text: str, rule: str, line: int
) -> None:
    for options in ((), tuple(NachaOption)):
        error = rejected(_corrupt(index, start, text), options)
        assert error.details["rule"] == rule, error.message
        assert error.details["line"] == line
        assert error.message.startswith(f"line {line}: ")


def test_a_long_line_and_a_bad_unbroken_length() -> None:
    records = build(sample_batches())
    records[3] += "  XX"
    error = rejected(encode(records))
    assert (error.details["rule"], error.details["line"]) == ("record_length", 4)
    assert "not blanks" in error.message
    error = rejected(encode(build(sample_batches()), "")[:-5])
    assert error.details["rule"] == "record_length"
    assert "no line breaks" in error.message


def test_an_endless_line_is_rejected_once_it_is_longer_than_any_line_can_be() -> None:
    """Regression (issue 9.3): a 128 MB file whose second line never ends was buffered
    whole and re-split at every chunk: 32 s and 400 MB. Now reading stops as soon as
    more than MAX_NACHA_LINE_BYTES are held without a line break."""
    header = encode(build(sample_batches()))[:95]  # the file header and its line break
    pulled = 0

    def endless(chunk: int) -> Iterable[bytes]:
        nonlocal pulled
        yield header
        for _ in range((128 << 20) // chunk):  # 128 MB, never materialised
            pulled += 1
            yield b"6" * chunk

    for chunk in (1, 1000, 65536):
        pulled = 0
        with pytest.raises(FileRejected) as info:
            list(iter_nacha_rows(endless(chunk), data_stream_key="ach", report=ParseReport()))
        assert (info.value.details["rule"], info.value.details["line"]) == ("record_length", 2)
        assert f"more than {MAX_NACHA_LINE_BYTES} bytes without a line break" in info.value.message
        assert pulled * chunk <= MAX_NACHA_LINE_BYTES + chunk  # stopped at the bound


def test_line_length_bound_with_blanks_and_unbroken_files_of_any_size() -> None:
    records = build(sample_batches())
    padded = list(records)
    padded[2] += " " * (MAX_NACHA_LINE_BYTES - 94)  # the line break aside: at the bound
    report = ParseReport()
    assert len(parse(encode(padded), chunk=1000, report=report)) == 5
    assert "line 3 carries blanks past column 94: trimmed" in report.warnings
    padded[2] += " "  # one byte more than a line may hold, even if only blanks
    for chunk in (1000, 1 << 20):  # spanning chunks, or whole in one
        with pytest.raises(FileRejected) as info:
            parse(encode(padded), chunk=chunk)
        error = info.value
        assert (error.details["rule"], error.details["line"]) == ("record_length", 3)
    # A file with no line breaks at all is one long stream of records: any length is fine.
    many = build([Batch([Entry(cents=100 + i) for i in range(2000)])])
    unbroken = encode(many, "")
    assert len(unbroken) > 64 * 1024 > MAX_NACHA_LINE_BYTES
    assert len(parse(unbroken)) == len(parse(unbroken + b"\n")) == 2000


def test_missing_file_control_data_after_it_blank_lines_and_empty_batches() -> None:
    records = build(sample_batches(), pad=False)
    assert rejected(encode(records[:-1])).details["rule"] == "no_file_control"
    assert rejected(encode([*records, records[2]])).details["rule"] == "after_file_control"
    assert rejected(b"").details["rule"] == "no_file_header"
    error = rejected(encode(records[:5]) + b"\n" + encode(records[5:]))
    assert (error.details["rule"], error.details["line"]) == ("blank_line", 6)
    records = build([Batch([])])
    error = rejected(encode(records))
    assert (error.details["rule"], error.details["line"]) == ("batch_without_entries", 3)


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


# --- the file identity (FORMAT.md), and the two ways payments were lost -----------------------


def test_two_originators_files_of_the_same_day_and_modifier_have_distinct_ids() -> None:
    """Regression (issue 10): ids were `{date}{modifier}-{batch}-{trace}`, so two banks'
    files of the same day with modifier A shared them and the second one was skipped."""
    batches = [Batch([Entry(cents=100), Entry(cents=200)])]
    ours = parse(encode(build(batches, header=FileHeader(origin=" 121042882"))))
    theirs = parse(encode(build(batches, header=FileHeader(origin=" 231380104"))))
    ids = {r.fields["external_id"] for r in ours} | {r.fields["external_id"] for r in theirs}
    assert len(ids) == 4
    assert ours[0].fields["external_id"] == "121042882-2401151200A-0000001-091000010000001"
    # The same file uploaded twice keeps its ids (so on_conflict can recognise it); a file
    # of another time or modifier that day does not share them.
    again = parse(encode(build(batches, header=FileHeader(origin=" 121042882"))))
    assert [r.fields["external_id"] for r in again] == [r.fields["external_id"] for r in ours]
    later = parse(encode(build(batches, header=FileHeader(origin=" 121042882", time="1201"))))
    other = parse(encode(build(batches, header=FileHeader(origin=" 121042882", modifier="B"))))
    assert not ids & {r.fields["external_id"] for r in later + other}


def test_blank_creation_time_reads_0000_and_a_company_id_origin_keeps_its_letters() -> None:
    [row] = parse(encode(build([Batch([Entry()])], header=FileHeader(time="    "))))
    assert row.fields["external_id"] == "091000019-2401150000A-0000001-091000010000001"
    header = FileHeader(origin="ACME000001")
    [row] = parse(
        encode(build([Batch([Entry()])], header=header)),
        options=[NachaOption.BYPASS_ORIGIN_VALIDATION],
    )
    assert row.fields["external_id"] == "ACME000001-2401151200A-0000001-091000010000001"


def _all_zero_traces() -> bytes:
    entries = [Entry(cents=100 * (i + 1), trace="0" * 15) for i in range(6)]
    return encode(build([Batch(entries, number=0)]))


@pytest.mark.parametrize(
    "options",
    [
        (),
        (NachaOption.CUSTOM_TRACE_NUMBERS, NachaOption.BYPASS_ORIGIN_VALIDATION),
        tuple(NachaOption),
    ],
)
def test_a_file_repeating_batch_and_trace_numbers_is_refused_naming_both_lines(
    options: tuple[NachaOption, ...],
) -> None:
    """Regression (issue 10): six payments all numbered batch 0000000 / trace 0...0 became
    1 record and 5 "skipped duplicates". Refused, whatever the relaxations."""
    error = rejected(_all_zero_traces(), options)
    repeats = [e for e in error.details["errors"] if e["rule"] == "repeated_trace_number"]
    assert [e["message"] for e in repeats] == [
        f"line {n}: trace number 000000000000000 repeats line {n - 1 if not options else 3}"
        for n in range(4, 9)
    ]


def test_repeats_across_batches_of_one_number_are_refused_when_batch_order_is_relaxed() -> None:
    batches = [Batch([Entry()], number=1), Batch([Entry(cents=5)], number=1)]
    error = rejected(encode(build(batches)), [NachaOption.ALLOW_UNORDERED_BATCH_NUMBERS])
    assert error.details["rule"] == "repeated_trace_number"
    assert error.message.startswith("line 6: trace number 091000010000001 repeats line 3")
    assert (error.details["first_line"], error.details["batch_number"]) == (3, "0000001")
    # Different batch numbers may reuse trace numbers (sample files do).
    assert len(parse(encode(build([Batch([Entry()]), Batch([Entry()])])))) == 2


# --- reporting ----------------------------------------------------------------------------------


def test_every_problem_is_reported_in_line_order() -> None:
    records = build(sample_batches())
    records[0] = records[0][:33] + "a" + records[0][34:]  # file ID modifier
    records[6] = records[6][:44] + "9999999999" + records[6][54:]  # control company id
    records[4] = records[4][:11] + "0" + records[4][12:]  # check digit
    error = rejected(encode(records))
    assert [(e["line"], e["rule"]) for e in error.details["errors"]] == [
        (1, "file_id_modifier"),
        (5, "rdfi_check_digit"),
        (7, "control_company_identification"),
    ]
    assert error.details["error_count"] == 3
    assert (error.details["line"], error.details["rule"]) == (1, "file_id_modifier")
    assert error.message.endswith("(and 2 more problems, listed in errors)")


def test_a_hopeless_file_stops_being_read_at_the_limit() -> None:
    entries = [Entry(cents=0) for _ in range(NACHA_MAX_REPORTED_ERRORS + 50)]
    error = rejected(encode(build([Batch(entries)])))
    assert error.details["error_count"] == NACHA_MAX_REPORTED_ERRORS
    assert len(error.details["errors"]) == NACHA_MAX_REPORTED_ERRORS
    last = NACHA_MAX_REPORTED_ERRORS + 2  # the line of the last problem kept
    assert error.details["stopped_at_line"] == last
    assert error.message.endswith(
        f"; reading stopped after {NACHA_MAX_REPORTED_ERRORS} problems (line {last})"
    )

"""The CSV reader: encodings, quoting, line numbers, columns, whole-file failures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.constants import MAX_CSV_COLUMNS, MAX_CSV_ROW_BYTES
from server.ingest.csv_reader import iter_csv_rows
from server.types import FileRejected, SourceRow


def parse(data: bytes, chunk: int = 65536, key: str | None = None) -> list[SourceRow]:
    return list(
        iter_csv_rows(
            [data[i : i + chunk] for i in range(0, len(data), chunk)], data_stream_key=key
        )
    )


def rejected(data: bytes) -> FileRejected:
    with pytest.raises(FileRejected) as info:
        parse(data)
    return info.value


TRICKY = (
    "\ufeffDate , AMOUNT,description,external_id,data_stream_key,metadata.Note,colour\r\n"
    '2024-01-01,1.50,"comma, inside",e1,s,"quote ""x""",red\r\n'
    "\r\n"
    '2024-01-02,-2,"two\r\nlines",e2,,n,blue\r\n'
    "2024-01-03,3,  ,e3,s,,green\r\n"
    "2024-01-04,4,Café ☕,e4,s,,\r\n"
).encode()


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 65536])
def test_quoting_bom_crlf_and_line_numbers_survive_any_chunking(chunk: int) -> None:
    rows = parse(TRICKY, chunk, key="default")
    assert [r.line for r in rows] == [2, 4, 6, 7]
    assert rows[0].fields == {
        "date": "2024-01-01",
        "amount": "1.50",
        "description": "comma, inside",
        "external_id": "e1",
        "data_stream_key": "s",
        "metadata": {"Note": 'quote "x"'},
    }
    assert rows[1].fields["description"] == "two\r\nlines"
    assert rows[1].fields["data_stream_key"] == "default"  # empty cell → the form's default
    assert "description" not in rows[2].fields  # whitespace-only counts as empty
    assert "metadata" not in rows[2].fields
    assert rows[3].fields["description"] == "Café ☕"
    assert all(r.problem is None for r in rows)


def test_wrong_cell_counts_are_row_problems_not_file_failures() -> None:
    rows = parse(b"date,amount\n2024-01-01,1,extra\n2024-01-02\n2024-01-03,3\n")
    assert [(r.line, r.problem and r.problem.code) for r in rows] == [
        (2, "malformed_row"),
        (3, "malformed_row"),
        (4, None),
    ]
    assert rows[0].problem is not None
    assert rows[0].problem.message == "line 2: 3 cells, but the header has 2"
    assert rows[0].fields == {"date": "2024-01-01", "amount": "1"}


def test_lf_only_and_no_final_newline() -> None:
    rows = parse(b"date,amount\n2024-01-01,1\n2024-01-02,2")
    assert [r.fields["amount"] for r in rows] == ["1", "2"]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"\r\n\r\n", "empty"),
        (b"date,amount\n", "no rows"),
        (b"date,amount\n\n,\n", "no rows"),
        (b"foo,bar\n1,2\n", "none of the expected columns"),
        (b"date,Date\n1,2\n", "appears more than once"),
        (b'date\n"unterminated\n', "never closed"),
    ],
)
def test_whole_file_failures(data: bytes, words: str) -> None:
    assert words in rejected(data).message


@pytest.mark.parametrize("chunk", [1, 4, 65536])
def test_invalid_utf8_reports_the_exact_byte_offset(chunk: int) -> None:
    data = "date,description\n2024-01-01,é ok\n2024-01-02,bad ".encode() + b"\xe9\xff" + b"\n"
    with pytest.raises(FileRejected) as info:
        parse(data, chunk)
    assert info.value.details == {"byte_offset": data.index(b"\xe9")}
    assert str(data.index(b"\xe9")) in info.value.message


def test_truncated_multibyte_character_at_the_end() -> None:
    data = "date,description\n2024-01-01,é".encode()[:-1]
    assert rejected(data).details == {"byte_offset": len(data) - 1}


# --- bounds (SPEC §11): memory follows the limits, not the file ---------------------------


def test_a_header_of_256_columns_is_read_and_257_fail_the_file() -> None:
    names = ["date", "amount", *(f"metadata.k{i}" for i in range(254))]
    rows = parse(",".join(names).encode() + b"\n" + b"2024-01-01,1" + b",v" * 254 + b"\n")
    assert len(rows[0].fields["metadata"]) == 254
    error = rejected(",".join([*names, "extra"]).encode() + b"\n2024-01-01,1\n")
    assert (
        error.message == "line 1: the header row has 257 columns; a CSV file may have at most 256"
    )
    assert error.details == {"line": 1, "columns": 257, "max_columns": MAX_CSV_COLUMNS}


def test_a_header_too_long_to_hold_says_how_many_columns_a_file_may_have() -> None:
    # The file: 100,000 metadata columns. It is refused before it is read whole.
    header = ",".join(f"metadata.k{i}" for i in range(100_000)).encode()
    error = rejected(b"date," + header + b"\n2024-01-01\n")
    assert error.message.startswith("line 1: the header row is longer than 64 KiB")
    assert "at most 256 columns" in error.message


def _row_of(size: int, text: str = "d") -> bytes:
    """A data row of exactly `size` bytes, its LF included, for the header date,description."""
    prefix = b"2024-01-01,"
    unit = len(text.encode())
    body = text * ((size - len(prefix) - 1) // unit)
    row = prefix + body.encode() + b"\n"
    assert len(row) == size, (len(row), size)
    return row


@pytest.mark.parametrize("chunk", [7, 65536])
def test_a_row_of_64_kib_is_read_and_one_byte_more_fails_the_file(chunk: int) -> None:
    header = b"date,description\n"
    [row] = parse(header + _row_of(MAX_CSV_ROW_BYTES), chunk)
    assert len(row.fields["description"]) == MAX_CSV_ROW_BYTES - len(b"2024-01-01,\n")
    assert row.size == MAX_CSV_ROW_BYTES
    with pytest.raises(FileRejected) as info:
        parse(header + b"2024-01-01,ok\n" + _row_of(MAX_CSV_ROW_BYTES + 1), chunk)
    assert info.value.message.startswith(
        "line 3: the row starting on this line is longer than 64 KiB (65536 bytes)"
    )
    assert info.value.details == {"line": 3, "max_row_bytes": MAX_CSV_ROW_BYTES}


def test_the_row_bound_counts_utf8_bytes_not_characters() -> None:
    header = b"date,description\n"
    # 2-byte characters: under the bound in characters, over it in bytes.
    over = _row_of(MAX_CSV_ROW_BYTES + 2, "é")
    assert len(over.decode()) < MAX_CSV_ROW_BYTES
    assert rejected(header + over).details["line"] == 2
    assert len(parse(header + _row_of(MAX_CSV_ROW_BYTES, "é"))) == 1


def test_a_row_spanning_many_lines_is_bounded_as_one_row() -> None:
    # An unclosed quote swallows the rest of the file: lines are short, the row is not.
    data = b'date,description\n2024-01-01,ok\n2024-01-02,"never closed\n' + b"more text\n" * 10_000
    error = rejected(data)
    assert error.details["line"] == 3
    assert "is a quote left open?" in error.message


def test_an_over_long_row_is_refused_before_the_rest_of_the_file_is_read() -> None:
    # 10 MB with no line break: the reader must give up after the bound, not at the end.
    chunk = b"x" * 4096
    consumed = 0

    def chunks() -> Iterator[bytes]:
        nonlocal consumed
        yield b"date,description\n2024-01-01,"
        for _ in range(2560):
            consumed += 1
            yield chunk

    with pytest.raises(FileRejected) as info:
        list(iter_csv_rows(chunks(), data_stream_key=None))
    assert info.value.details["line"] == 2
    assert consumed * len(chunk) <= MAX_CSV_ROW_BYTES + len(chunk)


def test_a_long_file_with_bare_cr_line_breaks_says_so() -> None:
    data = b"date,amount\r" + b"2024-01-01,1\r" * 10_000
    assert "bare carriage return (CR)" in rejected(data).message


@pytest.mark.parametrize("chunk", [7, 4096, 65536])
def test_the_row_bound_counts_bytes_when_a_line_ends_in_an_ascii_chunk(chunk: int) -> None:
    # Multi-byte characters first, ASCII last: the line's final chunk is plain ASCII.
    row = b"2024-01-01," + "é".encode() * 32_000 + b"d" * 2_000 + b"\n"
    assert len(row) > MAX_CSV_ROW_BYTES > len(row.decode())
    assert rejected_in_chunks(b"date,description\n" + row, chunk).details["line"] == 2


def rejected_in_chunks(data: bytes, chunk: int) -> FileRejected:
    with pytest.raises(FileRejected) as info:
        parse(data, chunk)
    return info.value

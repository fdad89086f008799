"""The CSV reader: encodings, quoting, line numbers, columns, whole-file failures."""

from __future__ import annotations

import pytest

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

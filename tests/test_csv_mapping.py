"""Unit tests of server/ingest/csv_mapping.py and csv_options.py: amounts, dates, the
header's targets and the delimiter, as bank exports write them (SPEC §15)."""

from __future__ import annotations

from decimal import Decimal, localcontext

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.ingest.csv_mapping import (
    RowConverter,
    column_targets,
    date_format_problem,
    debit_credit_amount,
    detect_delimiter,
    read_amount,
    read_date,
)
from server.ingest.csv_options import (
    DEFAULT_CSV_OPTIONS,
    CsvOptions,
    InvalidCsvOptions,
    parse_csv_options,
)
from server.ingest.csv_reader import iter_csv_rows
from server.money import to_minor_units
from server.types import FileRejected, ParseReport, RowProblem


@pytest.mark.parametrize(
    ("text", "decimal", "plain"),
    [
        ("12.34", ".", "12.34"),
        ("-12.00", ".", "-12.00"),
        ("+12", ".", "12"),
        ("(12.00)", ".", "-12.00"),
        ("( 12.00 )", ".", "-12.00"),
        ("1,234.56", ".", "1234.56"),
        ("1,234,567.8", ".", "1234567.8"),
        ("$1,234.56", ".", "1234.56"),
        ("-$12.50", ".", "-12.50"),
        ("$-12.50", ".", "-12.50"),
        ("($12.50)", ".", "-12.50"),
        ("£ 3.10", ".", "3.10"),
        ("12.00-", ".", "-12.00"),
        ("1'234.50", ".", "1234.50"),
        (".5", ".", "0.5"),
        ("0007", ".", "7"),
        ("1.234,56", ",", "1234.56"),
        ("-84,50", ",", "-84.50"),
        ("€3.245,18", ",", "3245.18"),
        ("(1.150,00)", ",", "-1150.00"),
        ("-23,90 €", ",", "-23.90"),
        ("23,90 €", ",", "23.90"),
        ("1 234,56", ",", "1234.56"),
        ("1\u00a0234,56", ",", "1234.56"),
        ("1\u202f234,56", ",", "1234.56"),
        ("12", ",", "12"),
        ("1.234", ",", "1234"),
    ],
)
def test_read_amount_understands_how_banks_write_amounts(
    text: str, decimal: str, plain: str
) -> None:
    assert read_amount(text, decimal) == plain


@pytest.mark.parametrize(
    ("text", "decimal"),
    [
        ("12,50", "."),  # a decimal comma, not 1250: groups are exactly three digits
        ("1,23,456.78", "."),
        ("1,2345.00", "."),
        ("1.234.56", "."),
        ("1,234.56", ","),
        ("12.50", ","),  # a decimal point under ",": 1250? refused
        ("1.23", ","),
        ("", "."),
        ("-", "."),
        ("$", "."),
        ("()", "."),
        ("(-12)", "."),
        ("--12", "."),
        ("$$12", "."),
        ("12 EUR", "."),
        ("1e3", "."),
        ("٣", "."),  # an Arabic-Indic digit: ASCII digits only
        ("1,234 .56", "."),
    ],
)
def test_read_amount_refuses_what_it_cannot_read_exactly(text: str, decimal: str) -> None:
    assert read_amount(text, decimal) is None


@given(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.integers(min_value=0, max_value=6),
    st.sampled_from([".", ","]),
    st.booleans(),
)
def test_read_amount_round_trips_any_formatted_amount_exactly(
    units: int, places: int, decimal: str, parenthesised: bool
) -> None:
    value = Decimal(units).scaleb(-places)
    whole, _, fraction = f"{abs(value):f}".partition(".")
    grouped = f"{int(whole):,}".replace(",", "." if decimal == "," else ",")
    text = grouped + (decimal + fraction if fraction else "")
    if value < 0:
        text = f"({text})" if parenthesised else "-" + text
    plain = read_amount(text, decimal)
    assert plain is not None
    assert Decimal(plain) == value


@given(
    st.integers(min_value=0, max_value=10**30),
    st.integers(min_value=0, max_value=10**30),
    st.integers(min_value=0, max_value=8),
    st.integers(min_value=0, max_value=8),
)
def test_debit_credit_is_credit_minus_debit_exactly(
    debit: int, credit: int, debit_places: int, credit_places: int
) -> None:
    # 61-digit operands: past Decimal's default 28 digits, where a context would round.
    debit_value = Decimal(debit).scaleb(-debit_places)
    credit_value = Decimal(credit).scaleb(-credit_places)
    got = debit_credit_amount(f"{debit_value:f}", f"{credit_value:f}", ".")
    with localcontext() as exact:
        exact.prec = 100
        assert Decimal(got) == credit_value - debit_value
    assert "E" not in got


def test_debit_credit_magnitudes_count_and_either_may_be_empty() -> None:
    assert debit_credit_amount("12.50", None, ".") == "-12.50"
    assert debit_credit_amount("-12.50", None, ".") == "-12.50"
    assert debit_credit_amount("(12.50)", None, ".") == "-12.50"
    assert debit_credit_amount(None, "-7,25", ",") == "7.25"
    assert debit_credit_amount("0,00", "1.000,00", ",") == "1000.00"
    assert debit_credit_amount("1,00", "1,00", ",") == "0.00"
    with pytest.raises(ValueError, match="debit"):
        debit_credit_amount("x", "1", ".")
    with pytest.raises(ValueError, match="credit"):
        debit_credit_amount("1", "1,0", ".")


def test_converted_amounts_become_exact_minor_units() -> None:
    plain = read_amount("(9.007.199.254.740,99)", ",")
    assert plain == "-9007199254740.99"
    assert to_minor_units(plain, 2) == -900719925474099


# --- dates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pattern", "iso"),
    [
        ("03/15/2024", "%m/%d/%Y", "2024-03-15"),
        ("3/5/2024", "%m/%d/%Y", "2024-03-05"),
        ("15.03.2024", "%d.%m.%Y", "2024-03-15"),
        (" 15.03.2024 ", "%d.%m.%Y", "2024-03-15"),
        ("15.03.24", "%d.%m.%y", "2024-03-15"),
        ("15 Mar 2024", "%d %b %Y", "2024-03-15"),
        ("2024-03-15 10:32", "%Y-%m-%d %H:%M", "2024-03-15"),
        ("20240315", "%Y%m%d", "2024-03-15"),
        ("29.02.2024", "%d.%m.%Y", "2024-02-29"),
    ],
)
def test_read_date_gives_iso_dates(text: str, pattern: str, iso: str) -> None:
    assert read_date(text, pattern) == iso


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("29.02.2023", "%d.%m.%Y"),
        ("2024-03-15", "%d.%m.%Y"),
        ("15.03.2024", "%m/%d/%Y"),
        ("13/01/2024", "%m/%d/%Y"),
        ("", "%d.%m.%Y"),
    ],
)
def test_read_date_refuses_dates_not_in_the_pattern(text: str, pattern: str) -> None:
    assert read_date(text, pattern) is None


@pytest.mark.parametrize("pattern", ["%m/%d/%Y", "%d.%m.%Y", "%Y-%m-%d", "%d %B %Y", "%y%m%d"])
def test_usable_date_formats(pattern: str) -> None:
    assert date_format_problem(pattern) is None


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        ("%d.%m.", "needs a year"),
        ("%m/%Y", "needs a year"),
        ("%H:%M", "needs a year"),
        ("%Y-%m-%d %Q", "not a usable"),
        ("%", "not a usable"),
        ("%d.%d.%Y", "not a usable"),
        ("plain text", "needs a year"),
    ],
)
def test_unusable_date_formats_say_why(pattern: str, words: str) -> None:
    problem = date_format_problem(pattern)
    assert problem is not None
    assert words in problem


# --- the header -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "delimiter"),
    [
        ("date,amount,description\n", ","),
        ("Buchungstag;Betrag;Text\r\n", ";"),
        ("date\tamount\n", "\t"),
        ("date|amount|memo", "|"),
        ('"a;b;c",amount,date\n', ","),  # delimiters inside quotes do not count
        ("date;amount,description;memo\n", ";"),
        ("date,amount;memo\n", ","),  # a tie goes to the comma
        ("amount\n", ","),
    ],
)
def test_detect_delimiter(line: str, delimiter: str) -> None:
    assert detect_delimiter(line) == delimiter


def test_column_targets_map_named_columns_and_keep_the_others_defaults() -> None:
    header = [" Posting Date ", "DEBIT", "Credit", "currency", "metadata.Branch", "Balance", "x"]
    columns = {"posting date": "date", "Debit": "debit", "credit": "credit", "Balance": None}
    assert column_targets(header, 1, columns) == [
        "date",
        "debit",
        "credit",
        "currency",
        "metadata.Branch",
        None,
        None,
    ]
    assert column_targets(["Amount", "Memo"], 1, None) == ["amount", None]


@pytest.mark.parametrize(
    ("header", "columns", "words"),
    [
        (["Date"], {"Date": "date", "Memo": "description"}, "no column 'Memo'"),
        (["amount", "Betrag"], {"Betrag": "amount"}, "'amount' and 'Betrag' both give amount"),
        (["Memo", "memo"], {"Memo": "description"}, "'memo' twice"),
        (["amount", "amount"], None, "'amount' appears more than once"),
        (["S", "H", "amount"], {"S": "debit", "H": "credit"}, "'amount' gives amount"),
    ],
)
def test_column_targets_refuse_a_header_that_does_not_fit(
    header: list[str], columns: dict[str, str | None] | None, words: str
) -> None:
    with pytest.raises(FileRejected) as caught:
        column_targets(header, 3, columns)
    assert words in caught.value.message
    assert caught.value.message.startswith("line 3: ")


def test_row_converter_leaves_plain_amounts_and_iso_dates_alone() -> None:
    convert = RowConverter(decimal=".", date_format=None, pair=False, names={})
    fields = {"date": "2024-01-01", "amount": "-12.5"}
    assert convert(fields) is None
    assert fields == {"date": "2024-01-01", "amount": "-12.5"}


def test_row_converter_rewrites_pairs_and_dates_in_our_names() -> None:
    names = {"date": "Tag", "debit": "Soll", "credit": "Haben"}
    convert = RowConverter(decimal=",", date_format="%d.%m.%Y", pair=True, names=names)
    fields = {"date": "01.02.2024", "debit": "1.234,50", "description": "x"}
    assert convert(fields) is None
    assert fields == {"date": "2024-02-01", "amount": "-1234.50", "description": "x"}
    bad = {"date": "01.02.2024", "credit": "1.234.50"}
    problem = convert(bad)
    assert isinstance(problem, RowProblem)
    assert (problem.code, problem.pointer) == ("invalid_amount", "/amount")
    assert "'Haben' '1.234.50'" in problem.message
    assert "debit" not in bad
    assert "credit" not in bad


# --- the options, and the reader that uses them ------------------------------------------


def test_options_round_trip_through_their_stored_json() -> None:
    options = parse_csv_options(
        {
            "columns": '{"Tag": "date", "Betrag": "amount", "Notiz": null}',
            "date_format": "%d.%m.%Y",
            "decimal_separator": ",",
            "delimiter": "tab",
        }
    )
    assert CsvOptions.from_stored(orjson.dumps(options.to_json()).decode()) == options
    assert CsvOptions.from_stored(None) == DEFAULT_CSV_OPTIONS
    assert parse_csv_options({}) == DEFAULT_CSV_OPTIONS


def test_every_bad_option_is_one_problem() -> None:
    with pytest.raises(InvalidCsvOptions) as caught:
        parse_csv_options(
            {"columns": '{"a": "x", "b": "debit"}', "decimal_separator": "", "delimiter": " "}
        )
    assert [(p.pointer, p.code) for p in caught.value.problems] == [
        ("/columns/a", "unknown_target"),
        ("/columns/b", "incomplete_pair"),
        ("/decimal_separator", "invalid_choice"),
        ("/delimiter", "invalid_choice"),
    ]


def test_deep_json_in_columns_is_a_problem_not_a_crash() -> None:
    with pytest.raises(InvalidCsvOptions) as caught:
        parse_csv_options({"columns": "[" * 100_000})
    assert caught.value.problems[0].code == "invalid_json"


def test_the_reader_detects_the_delimiter_and_notes_it() -> None:
    report = ParseReport()
    data = b"\n\nTag;Betrag\n01.02.2024;1.234,5\n"
    options = CsvOptions(
        columns={"Tag": "date", "Betrag": "amount"}, date_format="%d.%m.%Y", decimal_separator=","
    )
    rows = list(iter_csv_rows([data], data_stream_key="k", options=options, report=report))
    assert [(r.line, r.fields) for r in rows] == [
        (4, {"date": "2024-02-01", "amount": "1234.5", "data_stream_key": "k"})
    ]
    assert report.notes == ["the delimiter ';' was detected from the header line"]


def test_the_reader_with_a_given_delimiter_does_not_guess() -> None:
    data = b"date,amount\n2024-01-01,5\n"
    assert len(list(iter_csv_rows([data], data_stream_key="k"))) == 1
    with pytest.raises(FileRejected, match="none of the expected columns"):
        list(iter_csv_rows([data], data_stream_key="k", options=CsvOptions(delimiter=";")))


def test_a_malformed_row_keeps_our_names_only() -> None:
    options = CsvOptions(columns={"S": "debit", "H": "credit"})
    rows = list(
        iter_csv_rows([b"date,S,H\n2024-01-01,1,2,3\n"], data_stream_key=None, options=options)
    )
    assert rows[0].problem is not None
    assert rows[0].problem.code == "malformed_row"
    assert rows[0].fields == {"date": "2024-01-01"}

"""The NACHA field rules (FORMAT.md, after moov-io/ach), their relaxations, and every
public sample file giving what MANIFEST.json says."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from server.ingest.nacha_codes import RELAXED_BY, NachaOption, Rule, parse_nacha_options
from server.ingest.nacha_codes import UnknownNachaOptions as Unknown
from server.types import ParseReport
from tests.conftest import SHARED
from tests.nacha_builder import (
    Batch,
    Entry,
    FileHeader,
    addenda05,
    addenda98,
    addenda99,
    build,
    encode,
)
from tests.test_nacha import STRUCTURAL_CASES, parse, rejected

NACHA = SHARED / "nacha"
PUBLIC = NACHA / "public"
MANIFEST = json.loads((NACHA / "MANIFEST.json").read_text())
OPT = NachaOption

# --- every public file -----------------------------------------------------------------------

# Everything each invalid file breaks, in line order: the manifest names the rule the file
# was made to show (marked *); several break others before it, and every problem is
# reported, so the whole list is pinned here.
INVALID: dict[str, list[tuple[int | None, str]]] = {
    "20110805A.ach": [(93, "file_batch_count*")],
    "Iat-invalidAddenda13.ach": [(3, "credit_in_debits_only_batch"), (7, "control_character*")],
    "NACHA_SAMPLE_TEL_REVERSAL.ach": [(4, "reversal_debit*")],
    "adv.ach": [(2, "adv_not_supported*")],
    "bh-ed-ad-bh-ed-ad-ed-ad.ach": [(1, "no_file_header*")],
    "crashers__0.ach": [(1, "no_file_header*")],
    "iat-batchHeaderErr.ach": [
        (1, "immediate_destination"),
        (1, "immediate_origin"),
        (3, "addenda_indicator"),
        (4, "batch_header_inside_batch*"),
    ],
    "iat-invalidBatchHeader.ach": [
        (1, "immediate_destination"),
        (1, "immediate_origin"),
        (2, "service_class_code*"),
        (11, "control_service_class"),
        (13, "debit_in_credits_only_batch"),
    ],
    "issue1600__2lCompanyNameAllZeros.txt": [(2, "mandatory_field*")],
    "moov-ids.ach": [
        (1, "immediate_origin"),
        (3, "trace_not_odfi"),
        (4, "trace_not_odfi"),
        (7, "trace_not_odfi"),
        (8, "trace_not_odfi"),
        (10, "file_entry_hash*"),
    ],
    "ppd-debit-fixedLengthInvalid.ach": [(None, "record_length*")],
    "web-invalidNOCFile.ach": [(4, "change_code*")],
}


def test_the_tables_cover_every_public_file() -> None:
    kinds = ("valid", "invalid", "relaxed")
    on_disk = {kind: {p.name for p in (PUBLIC / kind).iterdir()} for kind in kinds}
    for kind in kinds:
        assert on_disk[kind] == set(MANIFEST[kind]), kind
    assert set(INVALID) == set(MANIFEST["invalid"])


@pytest.mark.parametrize("name", sorted(MANIFEST["valid"]))
def test_every_valid_public_file(name: str) -> None:
    expected = MANIFEST["valid"][name]
    data = (PUBLIC / "valid" / name).read_bytes()
    report = ParseReport()
    rows = parse(data, report=report)
    assert len(rows) == expected["entry_details"]
    assert len({r.fields["metadata"]["batch_number"] for r in rows}) == expected["batches"]
    cents = [int(Decimal(r.fields["amount"]) * 100) for r in rows]
    assert -sum(c for c in cents if c < 0) == expected["total_debit_cents"]
    assert sum(c for c in cents if c > 0) == expected["total_credit_cents"]
    # Accepted means the file control's entry+addenda count matched what was read.
    text = data.decode().rstrip("\r\n")
    lines = (
        text.splitlines() if "\n" in text else [text[i : i + 94] for i in range(0, len(text), 94)]
    )
    control = next(line for line in lines if line.startswith("9"))
    assert int(control[13:21]) == expected["entry_addenda_count"]
    assert report.warnings == expected["warnings"]
    unpadded = any("not padded" in note for note in report.notes)
    assert unpadded is not expected["padded_to_block"]
    assert len({r.fields["external_id"] for r in rows}) == len(rows)


@pytest.mark.parametrize("name", sorted(MANIFEST["invalid"]))
def test_every_invalid_public_file(name: str) -> None:
    error = rejected((PUBLIC / "invalid" / name).read_bytes())
    found = [(e["line"], e["rule"]) for e in error.details["errors"]]
    assert found == [(line, rule.rstrip("*")) for line, rule in INVALID[name]]
    assert error.details["error_count"] == len(found)
    shown = next(line for line, rule in INVALID[name] if rule.endswith("*"))
    words = MANIFEST["invalid"][name]
    if words.startswith("line "):
        assert words.startswith(f"line {shown}:")
    message = next(e["message"] for e in error.details["errors"] if e["line"] == shown)
    if name in (
        "NACHA_SAMPLE_TEL_REVERSAL.ach",
        "web-invalidNOCFile.ach",
        "issue1600__2lCompanyNameAllZeros.txt",
    ):
        assert words.startswith(message)  # the manifest's very words


@pytest.mark.parametrize("name", sorted(MANIFEST["relaxed"]))
def test_every_relaxed_public_file(name: str) -> None:
    expected = MANIFEST["relaxed"][name]
    data = (PUBLIC / "relaxed" / name).read_bytes()
    assert rejected(data).message == expected["default"]
    rows = parse(data, options=[NachaOption(o) for o in expected["options"]])
    held = expected["with_options"]
    assert len(rows) == held["entry_details"]
    assert len({r.fields["metadata"]["batch_number"] for r in rows}) == held["batches"]
    cents = [int(Decimal(r.fields["amount"]) * 100) for r in rows]
    assert -sum(c for c in cents if c < 0) == held["total_debit_cents"]
    assert sum(c for c in cents if c > 0) == held["total_credit_cents"]


# --- one rule at a time ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A valid generated file broken in exactly one rule."""

    make: Callable[[], bytes]
    rule: Rule
    line: int | None
    relaxed_by: tuple[NachaOption, ...] = ()


def one(entry: Entry, **batch: object) -> bytes:
    return encode(build([Batch([entry], **batch)]))  # type: ignore[arg-type]


def spliced(records: list[str], index: int, start: int, text: str) -> bytes:
    return encode(spliced_records(records, index, start, text))


def plain() -> list[str]:
    """Header, batch header, entry, entry, batch control, file control."""
    return build([Batch([Entry(), Entry(cents=2000)])])


def with_header(**fields: str) -> bytes:
    return encode(build([Batch([Entry()])], header=FileHeader(**fields)))


CASES: dict[str, Case] = {
    # numeric fields that must be numeric
    "creation time": Case(lambda: with_header(time="12X0"), Rule.NOT_NUMERIC, 1),
    "creation date": Case(lambda: with_header(created="241301"), Rule.NOT_NUMERIC, 1),
    "check digit": Case(lambda: one(Entry(check_digit="X")), Rule.NOT_NUMERIC, 3),
    "addenda indicator": Case(lambda: spliced(plain(), 2, 78, "2"), Rule.NOT_NUMERIC, 3),
    "addenda sequence": Case(
        lambda: one(Entry(addenda=[addenda05("X")[:83] + "00X10000001"])), Rule.NOT_NUMERIC, 4
    ),
    # mandatory fields
    "company name blank": Case(lambda: spliced(plain(), 1, 4, " " * 16), Rule.MANDATORY_FIELD, 2),
    "company name zeros": Case(lambda: spliced(plain(), 1, 4, "0" * 11), Rule.MANDATORY_FIELD, 2),
    "entry description": Case(lambda: one(Entry(), description=""), Rule.MANDATORY_FIELD, 2),
    "account number": Case(lambda: one(Entry(account="")), Rule.MANDATORY_FIELD, 3),
    "file ID modifier blank": Case(lambda: with_header(modifier=" "), Rule.MANDATORY_FIELD, 1),
    "origin blank": Case(lambda: with_header(origin=" " * 10), Rule.MANDATORY_FIELD, 1),
    "corrected data": Case(
        lambda: one(Entry(code="26", cents=0, addenda=[addenda98("C01", "1" * 15, "")])),
        Rule.MANDATORY_FIELD,
        4,
    ),
    "individual name": Case(
        lambda: one(Entry(name="")),
        Rule.INDIVIDUAL_NAME_REQUIRED,
        3,
        (OPT.ALLOW_EMPTY_INDIVIDUAL_NAME,),
    ),
    "no batch": Case(lambda: encode(build([])), Rule.NO_BATCHES, 2, (OPT.ALLOW_ZERO_BATCHES,)),
    # code lists
    "service class": Case(
        lambda: spliced(spliced_records(plain(), 4, 1, "100"), 1, 1, "100"),
        Rule.SERVICE_CLASS_CODE,
        2,
    ),
    "service class of other digits": Case(  # "²".isdigit() is true; int("²") raises
        lambda: spliced(spliced_records(plain(), 4, 1, "2²0"), 1, 1, "2²0"),
        Rule.SERVICE_CLASS_CODE,
        2,
    ),
    "SEC code": Case(lambda: one(Entry(), sec="XYZ"), Rule.SEC_CODE, 2),
    "originator status": Case(lambda: spliced(plain(), 1, 78, "5"), Rule.ORIGINATOR_STATUS_CODE, 2),
    "file ID modifier": Case(lambda: with_header(modifier="a"), Rule.FILE_ID_MODIFIER, 1),
    "addenda type": Case(
        lambda: one(Entry(addenda=["777" + addenda05("X")[3:]])), Rule.ADDENDA_TYPE_CODE, 4
    ),
    "change code": Case(
        lambda: one(Entry(code="26", cents=0, addenda=[addenda98("C92", "1" * 15, "1")])),
        Rule.CHANGE_CODE,
        4,
    ),
    "return reason": Case(
        lambda: one(Entry(code="26", addenda=[addenda99("R97", "1" * 15)])),
        Rule.RETURN_REASON_CODE,
        4,
        (OPT.CUSTOM_RETURN_CODES,),
    ),
    "IAT transaction type": Case(
        lambda: public_spliced("valid", "iat-mixedDebitCredit.ach", 3, 3, "XYZ"),
        Rule.IAT_TRANSACTION_TYPE_CODE,
        4,
    ),
    # consistency
    "debit in 220": Case(
        lambda: one(Entry(code="27"), service_class="220"), Rule.DEBIT_IN_CREDITS_ONLY_BATCH, 3
    ),
    "credit in 225": Case(
        lambda: one(Entry(code="22"), service_class="225"), Rule.CREDIT_IN_DEBITS_ONLY_BATCH, 3
    ),
    "TEL credit": Case(lambda: one(Entry(code="22"), sec="TEL"), Rule.SEC_DEBITS_ONLY, 3),
    "TEL reversal debit": Case(
        lambda: one(Entry(code="27"), sec="TEL", description="REVERSAL"), Rule.REVERSAL_DEBIT, 3
    ),
    "control service class": Case(
        lambda: spliced(plain(), 4, 1, "220"),
        Rule.CONTROL_SERVICE_CLASS,
        5,
        (OPT.UNEQUAL_SERVICE_CLASS_CODE,),
    ),
    "control company id": Case(
        lambda: spliced(plain(), 4, 44, "1234567899"),
        Rule.CONTROL_COMPANY_IDENTIFICATION,
        5,
        (OPT.BYPASS_COMPANY_IDENTIFICATION_MATCH,),
    ),
    "control ODFI": Case(lambda: spliced(plain(), 4, 79, "09100002"), Rule.CONTROL_ODFI, 5),
    "control batch number": Case(
        lambda: spliced(plain(), 4, 87, "0000002"), Rule.CONTROL_BATCH_NUMBER, 5
    ),
    "trace not ODFI": Case(
        lambda: one(Entry(trace="091000020000001")),
        Rule.TRACE_NOT_ODFI,
        3,
        (OPT.CUSTOM_TRACE_NUMBERS, OPT.BYPASS_ORIGIN_VALIDATION),
    ),
    "trace not ascending": Case(
        lambda: encode(
            build([Batch([Entry(trace="091000010000002"), Entry(trace="091000010000001")])])
        ),
        Rule.TRACE_NOT_ASCENDING,
        4,
        (OPT.CUSTOM_TRACE_NUMBERS,),
    ),
    "addenda entry sequence": Case(
        lambda: one(Entry(addenda=[addenda05("X", entry_seq="0000009")])),
        Rule.ADDENDA_SEQUENCE,
        4,
        (OPT.CUSTOM_TRACE_NUMBERS,),
    ),
    "addenda sequence order": Case(
        lambda: one(Entry(addenda=[addenda05("X", seq=2), addenda05("Y", seq=1)])),
        Rule.ADDENDA_SEQUENCE,
        5,
        (OPT.CUSTOM_TRACE_NUMBERS,),
    ),
    "batch numbers": Case(
        lambda: encode(build([Batch([Entry()], number=2), Batch([Entry()], number=1)])),
        Rule.BATCH_NUMBER_NOT_ASCENDING,
        5,
        (OPT.ALLOW_UNORDERED_BATCH_NUMBERS,),
    ),
    "announced addenda missing": Case(
        lambda: spliced(plain(), 2, 78, "1"),
        Rule.ADDENDA_INDICATOR,
        3,
        (OPT.UNEQUAL_ADDENDA_COUNTS,),
    ),
    "zero live amount": Case(
        lambda: one(Entry(cents=0)),
        Rule.ZERO_ENTRY_AMOUNT,
        3,
        (OPT.ALLOW_ZERO_ENTRY_AMOUNT, OPT.ALLOW_INVALID_AMOUNTS),
    ),
    "zero-dollar code with money": Case(
        lambda: one(Entry(code="24", cents=5), sec="CCD"),
        Rule.AMOUNT_FOR_CODE,
        3,
        (OPT.ALLOW_INVALID_AMOUNTS,),
    ),
    "NOC with money": Case(
        lambda: one(Entry(code="26", cents=5, addenda=[addenda98("C01", "1" * 15, "1")])),
        Rule.AMOUNT_FOR_CODE,
        3,
        (OPT.ALLOW_INVALID_AMOUNTS,),
    ),
    "prenote with money": Case(lambda: one(Entry(code="23", cents=5)), Rule.PRENOTE_AMOUNT, 3),
    # check digits
    "RDFI check digit": Case(
        lambda: one(Entry(rdfi="07100030", check_digit="2")),
        Rule.RDFI_CHECK_DIGIT,
        3,
        (OPT.ALLOW_INVALID_CHECK_DIGIT,),
    ),
    "destination check digit": Case(
        lambda: with_header(destination=" 091000018"),
        Rule.IMMEDIATE_DESTINATION,
        1,
        (OPT.BYPASS_DESTINATION_VALIDATION,),
    ),
    "destination not a routing number": Case(
        lambda: with_header(destination="ACH OPERAT"),
        Rule.IMMEDIATE_DESTINATION,
        1,
        (OPT.BYPASS_DESTINATION_VALIDATION,),
    ),
    "origin check digit": Case(
        lambda: with_header(origin="0091000018"),
        Rule.IMMEDIATE_ORIGIN,
        1,
        (OPT.BYPASS_ORIGIN_VALIDATION,),
    ),
    "origin a company id": Case(
        lambda: with_header(origin="1234567890"),
        Rule.IMMEDIATE_ORIGIN,
        1,
        (OPT.BYPASS_ORIGIN_VALIDATION,),
    ),
    # characters
    "control character": Case(lambda: one(Entry(name="JANE\x01DOE")), Rule.CONTROL_CHARACTER, 3),
    "C1 control character": Case(lambda: one(Entry(name="JANE\x85DOE")), Rule.CONTROL_CHARACTER, 3),
    "DEL in a header": Case(lambda: spliced(plain(), 1, 20, "\x7f"), Rule.CONTROL_CHARACTER, 2),
    # structure that is not about order: never relaxed
    "repeated trace": Case(
        lambda: encode(
            build([Batch([Entry(trace="091000010000001"), Entry(trace="091000010000001")])])
        ),
        Rule.REPEATED_TRACE_NUMBER,
        4,
    ),
}


def spliced_records(records: list[str], index: int, start: int, text: str) -> list[str]:
    record = records[index]
    records[index] = record[:start] + text + record[start + len(text) :]
    return records


def public_spliced(kind: str, name: str, index: int, start: int, text: str) -> bytes:
    records = (PUBLIC / kind / name).read_text().splitlines()
    return "\n".join(spliced_records(records, index, start, text)).encode() + b"\n"


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_field_rule_alone_rejects_the_file_and_only_its_relaxation_lets_it_through(
    name: str,
) -> None:
    case = CASES[name]
    data = case.make()
    error = rejected(data)
    assert [(e["line"], e["rule"]) for e in error.details["errors"]] == [(case.line, case.rule)]
    assert error.message.startswith(f"line {case.line}: ")
    others = tuple(o for o in NachaOption if o not in case.relaxed_by)
    assert rejected(data, others).details["rule"] == case.rule  # no other option helps
    for option in case.relaxed_by:
        parse(data, options=[option])  # each of its options alone lets the file through
    assert set(case.relaxed_by) == set(RELAXED_BY.get(case.rule, ()))


def test_every_rule_and_every_relaxation_has_a_case() -> None:
    covered = {case.rule for case in CASES.values()}
    # The structural rules: test_nacha.py's table, and its tests of the physical layer.
    structural = {Rule(case[3]) for case in STRUCTURAL_CASES} | {
        Rule.RECORD_LENGTH,  # test_a_long_line_and_a_bad_unbroken_length
        Rule.BLANK_LINE,  # test_missing_file_control_data_after_it_blank_lines_and_empty_...
        Rule.NO_FILE_CONTROL,
        Rule.AFTER_FILE_CONTROL,
        Rule.BATCH_WITHOUT_ENTRIES,
    }
    assert covered | structural == set(Rule)
    assert {o for case in CASES.values() for o in case.relaxed_by} == set(NachaOption)


def test_printable_non_ascii_is_accepted() -> None:
    data = encode(build([Batch([Entry(name="ŻANETA MÜLLER-GARCÍA")])]))
    [row] = parse(data)
    assert row.fields["metadata"]["individual_name"] == "ŻANETA MÜLLER-GARCÍA"


def test_a_tel_reversal_may_credit() -> None:
    assert parse(one(Entry(code="22"), sec="TEL", description="REVERSAL"))


def test_zero_amounts_where_codes_want_them() -> None:
    prenote, zero_dollar = Entry(code="23", cents=0), Entry(code="24", cents=0)
    noc = Entry(code="26", cents=0, addenda=[addenda98("C01", "1" * 15, "1")])
    returned_prenote = Entry(code="26", cents=0, addenda=[addenda99("R01", "1" * 15)])
    assert (
        len(parse(encode(build([Batch([prenote, zero_dollar, noc, returned_prenote], sec="CCD")]))))
        == 4
    )


# --- the option names ----------------------------------------------------------------------------


def test_parse_nacha_options() -> None:
    assert parse_nacha_options("") == ()
    assert parse_nacha_options(" , ") == ()
    chosen = parse_nacha_options(" allow_zero_batches,bypass_origin_validation ,allow_zero_batches")
    assert chosen == (
        OPT.BYPASS_ORIGIN_VALIDATION,
        OPT.ALLOW_ZERO_BATCHES,
    )  # table order, once each
    with pytest.raises(Unknown) as info:
        parse_nacha_options("allow_zero_batches, AllowInvalidCheckDigit, skip_all")
    assert info.value.names == ["AllowInvalidCheckDigit", "skip_all"]


def test_option_names_are_format_md_s() -> None:
    text = (NACHA / "FORMAT.md").read_text()
    table = {line.split("`")[1] for line in text.splitlines() if line.startswith("| `")}
    assert table == {o.value for o in NachaOption}


def test_every_rule_id_is_unique_and_lower_snake() -> None:
    assert len({r.value for r in Rule}) == len(Rule)
    assert all(r.value == r.value.lower() and " " not in r.value for r in Rule)


def test_the_readme_documents_every_relaxation_as_implemented() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## NACHA uploads\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        if line.startswith("| `") and not line.startswith("| `nacha_options` name"):
            name, relaxes = line.split("|")[1:3]
            table[name.strip(" `")] = set(re.findall(r"`([a-z_]+)`", relaxes))
    relaxes: dict[str, set[str]] = {o.value: set() for o in NachaOption}
    for rule, options in RELAXED_BY.items():
        for option in options:
            relaxes[option.value].add(rule.value)
    assert table == relaxes

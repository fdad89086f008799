"""The vocabulary of the NACHA rules: code lists, rule names, and the named relaxations.

The lists follow the NACHA Operating Rules as the reference reader (moov-io/ach) applies
them with its default options; the rule book for this service is `shared/nacha/FORMAT.md`.
Nothing here does I/O or parsing: `nacha_rules.py` applies these, `nacha.py` drives them.
"""

from __future__ import annotations

from enum import StrEnum


class NachaOption(StrEnum):
    """A named relaxation (the upload form field `nacha_options`), after the reference's
    ValidateOpts. Each one lets through exactly the rules mapped to it in RELAXED_BY."""

    BYPASS_ORIGIN_VALIDATION = "bypass_origin_validation"
    BYPASS_DESTINATION_VALIDATION = "bypass_destination_validation"
    CUSTOM_TRACE_NUMBERS = "custom_trace_numbers"
    ALLOW_ZERO_BATCHES = "allow_zero_batches"
    BYPASS_COMPANY_IDENTIFICATION_MATCH = "bypass_company_identification_match"
    CUSTOM_RETURN_CODES = "custom_return_codes"
    UNEQUAL_SERVICE_CLASS_CODE = "unequal_service_class_code"
    ALLOW_UNORDERED_BATCH_NUMBERS = "allow_unordered_batch_numbers"
    ALLOW_INVALID_CHECK_DIGIT = "allow_invalid_check_digit"
    UNEQUAL_ADDENDA_COUNTS = "unequal_addenda_counts"
    ALLOW_INVALID_AMOUNTS = "allow_invalid_amounts"
    ALLOW_ZERO_ENTRY_AMOUNT = "allow_zero_entry_amount"
    ALLOW_EMPTY_INDIVIDUAL_NAME = "allow_empty_individual_name"


class UnknownNachaOptions(ValueError):
    def __init__(self, names: list[str]) -> None:
        super().__init__(", ".join(names))
        self.names = names


def parse_nacha_options(text: str) -> tuple[NachaOption, ...]:
    """`"a, b,a"` → the distinct options in the order of NachaOption; blanks are ignored.

    Names are exact (lower case, as FORMAT.md spells them): a misspelt relaxation must be
    refused, never silently ignored, or a file would be judged by rules nobody chose.
    """
    names = [name.strip() for name in text.split(",")]
    chosen = {name for name in names if name}
    unknown = sorted(chosen - {option.value for option in NachaOption})
    if unknown:
        raise UnknownNachaOptions(unknown)
    return tuple(option for option in NachaOption if option.value in chosen)


class Rule(StrEnum):
    """Every rule a NACHA file can break; the value is `error_details.file.rule`."""

    # Structure: never relaxed (a broken structure or a disagreeing total means the
    # file is not what its sender meant; a repeated trace would silently drop a payment).
    RECORD_LENGTH = "record_length"
    BLANK_LINE = "blank_line"
    NO_FILE_HEADER = "no_file_header"
    SECOND_FILE_HEADER = "second_file_header"
    BATCH_HEADER_INSIDE_BATCH = "batch_header_inside_batch"
    ENTRY_OUTSIDE_BATCH = "entry_outside_batch"
    STRAY_ADDENDA = "stray_addenda"
    CONTROL_OUTSIDE_BATCH = "control_outside_batch"
    FILE_CONTROL_INSIDE_BATCH = "file_control_inside_batch"
    AFTER_FILE_CONTROL = "after_file_control"
    UNKNOWN_RECORD_TYPE = "unknown_record_type"
    NO_FILE_CONTROL = "no_file_control"
    ADV_NOT_SUPPORTED = "adv_not_supported"
    BATCH_WITHOUT_ENTRIES = "batch_without_entries"
    BATCH_ENTRY_COUNT = "batch_entry_count"
    BATCH_ENTRY_HASH = "batch_entry_hash"
    BATCH_DEBIT_TOTAL = "batch_debit_total"
    BATCH_CREDIT_TOTAL = "batch_credit_total"
    FILE_BATCH_COUNT = "file_batch_count"
    FILE_ENTRY_COUNT = "file_entry_count"
    FILE_ENTRY_HASH = "file_entry_hash"
    FILE_DEBIT_TOTAL = "file_debit_total"
    FILE_CREDIT_TOTAL = "file_credit_total"
    BATCH_CONTROL_NUMERIC = "batch_control_numeric"
    FILE_CONTROL_NUMERIC = "file_control_numeric"
    ENTRY_NUMERIC = "entry_numeric"
    UNKNOWN_TRANSACTION_CODE = "unknown_transaction_code"
    PRENOTE_AMOUNT = "prenote_amount"
    REPEATED_TRACE_NUMBER = "repeated_trace_number"
    # Fields: numeric fields that must be numeric.
    NOT_NUMERIC = "not_numeric"
    # Mandatory fields.
    MANDATORY_FIELD = "mandatory_field"
    INDIVIDUAL_NAME_REQUIRED = "individual_name_required"
    NO_BATCHES = "no_batches"
    # Code lists.
    SERVICE_CLASS_CODE = "service_class_code"
    SEC_CODE = "sec_code"
    ORIGINATOR_STATUS_CODE = "originator_status_code"
    ADDENDA_TYPE_CODE = "addenda_type_code"
    RETURN_REASON_CODE = "return_reason_code"
    CHANGE_CODE = "change_code"
    IAT_TRANSACTION_TYPE_CODE = "iat_transaction_type_code"
    FILE_ID_MODIFIER = "file_id_modifier"
    # Consistency.
    DEBIT_IN_CREDITS_ONLY_BATCH = "debit_in_credits_only_batch"
    CREDIT_IN_DEBITS_ONLY_BATCH = "credit_in_debits_only_batch"
    SEC_DEBITS_ONLY = "sec_debits_only"
    REVERSAL_DEBIT = "reversal_debit"
    CONTROL_SERVICE_CLASS = "control_service_class"
    CONTROL_COMPANY_IDENTIFICATION = "control_company_identification"
    CONTROL_ODFI = "control_odfi"
    CONTROL_BATCH_NUMBER = "control_batch_number"
    TRACE_NOT_ODFI = "trace_not_odfi"
    TRACE_NOT_ASCENDING = "trace_not_ascending"
    ADDENDA_SEQUENCE = "addenda_sequence"
    ADDENDA_INDICATOR = "addenda_indicator"
    BATCH_NUMBER_NOT_ASCENDING = "batch_number_not_ascending"
    ZERO_ENTRY_AMOUNT = "zero_entry_amount"
    AMOUNT_FOR_CODE = "amount_for_code"
    # Check digits.
    RDFI_CHECK_DIGIT = "rdfi_check_digit"
    IMMEDIATE_DESTINATION = "immediate_destination"
    IMMEDIATE_ORIGIN = "immediate_origin"
    # Characters.
    CONTROL_CHARACTER = "control_character"


_O = NachaOption
# The only way a rule is relaxed: a rule absent here is always enforced.
RELAXED_BY: dict[Rule, frozenset[NachaOption]] = {
    Rule.IMMEDIATE_ORIGIN: frozenset({_O.BYPASS_ORIGIN_VALIDATION}),
    # The reference lets custom trace numbers through with either option.
    Rule.TRACE_NOT_ODFI: frozenset({_O.CUSTOM_TRACE_NUMBERS, _O.BYPASS_ORIGIN_VALIDATION}),
    Rule.IMMEDIATE_DESTINATION: frozenset({_O.BYPASS_DESTINATION_VALIDATION}),
    Rule.TRACE_NOT_ASCENDING: frozenset({_O.CUSTOM_TRACE_NUMBERS}),
    Rule.ADDENDA_SEQUENCE: frozenset({_O.CUSTOM_TRACE_NUMBERS}),
    Rule.NO_BATCHES: frozenset({_O.ALLOW_ZERO_BATCHES}),
    Rule.CONTROL_COMPANY_IDENTIFICATION: frozenset({_O.BYPASS_COMPANY_IDENTIFICATION_MATCH}),
    Rule.RETURN_REASON_CODE: frozenset({_O.CUSTOM_RETURN_CODES}),
    Rule.CONTROL_SERVICE_CLASS: frozenset({_O.UNEQUAL_SERVICE_CLASS_CODE}),
    Rule.BATCH_NUMBER_NOT_ASCENDING: frozenset({_O.ALLOW_UNORDERED_BATCH_NUMBERS}),
    Rule.RDFI_CHECK_DIGIT: frozenset({_O.ALLOW_INVALID_CHECK_DIGIT}),
    Rule.ADDENDA_INDICATOR: frozenset({_O.UNEQUAL_ADDENDA_COUNTS}),
    Rule.AMOUNT_FOR_CODE: frozenset({_O.ALLOW_INVALID_AMOUNTS}),
    Rule.ZERO_ENTRY_AMOUNT: frozenset({_O.ALLOW_ZERO_ENTRY_AMOUNT, _O.ALLOW_INVALID_AMOUNTS}),
    Rule.INDIVIDUAL_NAME_REQUIRED: frozenset({_O.ALLOW_EMPTY_INDIVIDUAL_NAME}),
}

# --- code lists -------------------------------------------------------------------------

# First digit: 2 checking, 3 savings, 4 general ledger, 5 loan. Second digit: 1/6 return
# or NOC, 2/7 live, 3/8 prenote, 4/9 zero-dollar remittance; 55 is the live loan debit
# (reversals only) and 56 its return. 0-4 credits, 5-9 debits.
TRANSACTION_CODES = frozenset(
    {21, 22, 23, 24, 26, 27, 28, 29, 31, 32, 33, 34, 36, 37, 38, 39}
    | {41, 42, 43, 44, 46, 47, 48, 49, 51, 52, 53, 54, 55, 56}
)
RETURN_OR_NOC_DIGITS = frozenset({1, 6})
PRENOTE_DIGITS = frozenset({3, 8})
ZERO_DOLLAR_DIGITS = frozenset({4, 9})

MIXED, CREDITS_ONLY, DEBITS_ONLY = 200, 220, 225
SERVICE_CLASS_CODES = frozenset({MIXED, CREDITS_ONLY, DEBITS_ONLY})
ORIGINATOR_STATUS_CODES = frozenset("012")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# ADV is recognised (and refused with its own message) before this list is consulted.
SEC_CODES = _words(
    "ACK ARC ATX BOC CCD CIE COR CTX DNE ENR IAT MTE POP POS PPD RCK SHR TEL TRC TRX WEB XCK"
)
# Check conversions, card and telephone entries move money from the receiver only.
DEBITS_ONLY_SEC = _words("ARC BOC POP POS RCK SHR TEL TRC XCK")
# Consumer entries: the receiver's name (positions 55-76) is mandatory.
INDIVIDUAL_NAME_SEC = _words("ARC BOC CIE DNE ENR MTE POP POS PPD RCK SHR TEL WEB")
# A TEL batch described as a reversal undoes earlier debits: it credits, never debits.
REVERSAL_DESCRIPTION = "REVERSAL"

ADDENDA_TYPE_CODES = frozenset(
    {"02", "05", "98", "99", "10", "11", "12", "13", "14", "15", "16", "17", "18"}
)


def _codes(prefix: str, numbers: range | list[int]) -> frozenset[str]:
    return frozenset(f"{prefix}{n:02d}" for n in numbers)


# Return reason codes (addenda 99): RDFI returns, ENR, RCK, dishonored and contested
# dishonored returns, IAT gateway returns. R97 and friends are someone's private codes.
RETURN_REASON_CODES = (
    _codes("R", range(1, 48))
    | _codes("R", range(50, 54))
    | _codes("R", [61, 62])
    | _codes("R", range(67, 78))
    | _codes("R", range(80, 86))
)
# Change codes (addenda 98): notifications of change C01-C14 and refused ones C61-C69.
CHANGE_CODES = _codes("C", range(1, 15)) | _codes("C", range(61, 70))
# IAT addenda 10, positions 4-6: why the money moves.
IAT_TRANSACTION_TYPE_CODES = _words(
    "ANN BUS DEP LOA MIS MOR PEN RLS REM SAL TAX TEL WEB ARC BOC POP RCK"
)

"""Field-level rules of NACHA records: FORMAT.md's "Strict rules: Fields".

As strict as the reference reader (moov-io/ach) with its default options, in our own
code and words, except that printable non-ASCII (accented names) is accepted. Every
broken rule is recorded in Findings (line, rule, message); a relaxation named in the
upload's `nacha_options` lets exactly its rules through (nacha_codes.RELAXED_BY).
The structural rules (order, counts, hashes, totals) are nacha.py's.
"""

from __future__ import annotations

import re
from datetime import date

from server.ingest import nacha_codes as codes
from server.ingest.nacha_codes import Rule
from server.ingest.nacha_findings import Findings
from server.ingest.nacha_state import BatchState, EntryState

# C0 controls, DEL and C1 controls: never text, whatever the encoding was.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Sum of the weights 3 7 1 3 7 1 3 7: what 8 ASCII "0"s (48 each) add to a weighted sum.
_ZEROS_WEIGHT = 48 * 32


def check_digit(first_eight: str) -> int:
    """The ninth digit of a routing number: ABA mod 10 over the weights 3, 7, 1.

    Eight ASCII digits in; byte arithmetic, as this runs once per entry."""
    b = first_eight.encode("ascii")
    total = 3 * (b[0] + b[3] + b[6]) + 7 * (b[1] + b[4] + b[7]) + b[2] + b[5] - _ZEROS_WEIGHT
    return -total % 10


def _routing_number(text: str) -> str | None:
    """' 231380104', '0231380104' or '231380104 ' → '231380104'; None if not 9 digits."""
    value = text.strip(" ")
    if len(value) == 10 and value.startswith("0"):
        value = value[1:]
    if len(value) != 9 or not value.isascii() or not value.isdigit() or value == "0" * 9:
        return None
    return value


def _empty(text: str) -> bool:
    """Blank or all zeros: what a mandatory field may not be."""
    return not text.strip(" 0")


def _is_date(yymmdd: str) -> bool:
    if len(yymmdd) != 6 or not yymmdd.isascii() or not yymmdd.isdigit():
        return False
    try:
        date(2000 + int(yymmdd[:2]), int(yymmdd[2:4]), int(yymmdd[4:]))
    except ValueError:
        return False
    return True


def _is_time(hhmm: str) -> bool:
    return (
        len(hhmm) == 4
        and hhmm.isascii()
        and hhmm.isdigit()
        and int(hhmm[:2]) < 24
        and int(hhmm[2:]) < 60
    )


def file_identity(origin: str, creation_date: str, creation_time: str, modifier: str) -> str:
    """FORMAT.md's file identity: `121042882-1906241530A`.

    The origin loses its blanks; it is all digits unless bypass_origin_validation let a
    company id through, and then its letters stay: dropping them could give two
    originators one identity, and the second one's payments would be "duplicates".
    """
    time = creation_time if creation_time.strip() else "0000"
    return f"{origin.replace(' ', '')}-{creation_date}{time}{modifier}"


class FieldRules:
    def __init__(self, findings: Findings) -> None:
        self.findings = findings
        self.last_batch_number: int | None = None

    def characters(self, line: int, record: str) -> None:
        found = _CONTROL.search(record)
        if found:
            self.findings.add(
                line,
                Rule.CONTROL_CHARACTER,
                f"a control character (0x{ord(found.group()):02X}) at column {found.start() + 1}",
                column=found.start() + 1,
            )

    # --- file header (type 1) --------------------------------------------------------------

    def file_header(self, line: int, record: str) -> str:
        """Check the file header; return the file identity for the external ids."""
        add = self.findings.add
        self._routing(line, record[3:13], "immediate destination", Rule.IMMEDIATE_DESTINATION)
        origin = record[13:23]
        if not origin.strip():
            add(line, Rule.MANDATORY_FIELD, "immediate origin is blank")
        else:
            self._routing(line, origin, "immediate origin", Rule.IMMEDIATE_ORIGIN)
        created, time, modifier = record[23:29], record[29:33], record[33]
        if not _is_date(created):
            add(line, Rule.NOT_NUMERIC, f"file creation date {created!r} is not a date YYMMDD")
        if time.strip() and not _is_time(time):
            add(line, Rule.NOT_NUMERIC, f"file creation time {time!r} is not a time HHMM")
        if modifier == " ":
            add(line, Rule.MANDATORY_FIELD, "file ID modifier is blank")
        elif not ("A" <= modifier <= "Z" or "0" <= modifier <= "9"):
            add(line, Rule.FILE_ID_MODIFIER, f"file ID modifier {modifier!r} is not A-Z or 0-9")
        return file_identity(origin, created, time, modifier)

    def _routing(self, line: int, text: str, what: str, rule: Rule) -> None:
        if self.findings.relaxes(rule):
            return
        number = _routing_number(text)
        if number is None:
            self.findings.add(
                line, rule, f"{what} {text.strip()!r} is not a routing number (9 digits)"
            )
        elif check_digit(number[:8]) != int(number[8]):
            self.findings.add(
                line,
                rule,
                f"{what} {number}: check digit {number[8]}, but the routing number "
                f"gives {check_digit(number[:8])}",
            )

    # --- batch header (type 5) -----------------------------------------------------------

    def batch_header(self, line: int, record: str) -> BatchState:
        add = self.findings.add
        service_text, sec = record[1:4], record[50:53]
        service_class = (
            int(service_text) if service_text.isascii() and service_text.isdigit() else None
        )
        if service_class not in codes.SERVICE_CLASS_CODES:
            add(
                line,
                Rule.SERVICE_CLASS_CODE,
                f"service class code {service_text.strip()!r} is not 200, 220 or 225",
            )
        if sec not in codes.SEC_CODES:
            add(line, Rule.SEC_CODE, f"standard entry class code {sec!r} is not a NACHA SEC code")
        mandatory = {
            "company name": record[4:20],
            "company identification": record[40:50],
            "company entry description": record[53:63],
        }
        if sec == "IAT":  # an IAT header holds its IAT indicator where others have a name
            del mandatory["company name"]
        for what, text in mandatory.items():
            if _empty(text):
                how = "blank" if not text.strip() else "all zeros"
                add(line, Rule.MANDATORY_FIELD, f"{what} is {how} (a mandatory field)")
        if record[78] not in codes.ORIGINATOR_STATUS_CODES:
            add(
                line,
                Rule.ORIGINATOR_STATUS_CODE,
                f"originator status code {record[78]!r} is not 0, 1 or 2",
            )
        odfi, number = record[79:87], record[87:94]
        self._digits(line, odfi, "originating DFI identification")
        if self._digits(line, number, "batch number"):
            previous, self.last_batch_number = self.last_batch_number, int(number)
            if previous is not None and int(number) <= previous:
                add(
                    line,
                    Rule.BATCH_NUMBER_NOT_ASCENDING,
                    f"batch number {number} does not ascend (the batch before is {previous:07d})",
                )
        reversal = record[53:63].strip() == codes.REVERSAL_DESCRIPTION
        return BatchState(line, record, sec, number, odfi, service_class, reversal)

    def _digits(self, line: int, text: str, what: str) -> bool:
        if text.isascii() and text.isdigit():
            return True
        self.findings.add(line, Rule.NOT_NUMERIC, f"{what} {text.strip()!r} is not numeric")
        return False

    # --- entry detail (type 6) ---------------------------------------------------------------

    def entry(self, entry: EntryState, batch: BatchState) -> None:
        """The entry's own fields and its place in the batch (before its addenda)."""
        add, line, record, code = self.findings.add, entry.line, entry.record, entry.code
        if code not in codes.TRANSACTION_CODES:
            add(line, Rule.UNKNOWN_TRANSACTION_CODE, f"unknown transaction code {code:02d}")
        digit = record[11]
        if not (digit.isascii() and digit.isdigit()):
            add(line, Rule.NOT_NUMERIC, f"check digit {digit!r} is not numeric")
        elif not self.findings.relaxes(Rule.RDFI_CHECK_DIGIT):
            expected = check_digit(record[3:11])
            if int(digit) != expected:
                add(
                    line,
                    Rule.RDFI_CHECK_DIGIT,
                    f"check digit {digit}, but the RDFI {record[3:11]} gives {expected}",
                )
        account = record[39:74] if batch.sec == "IAT" else record[12:29]
        if not account.strip():
            add(line, Rule.MANDATORY_FIELD, "DFI account number is blank (a mandatory field)")
        if batch.sec in codes.INDIVIDUAL_NAME_SEC and _empty(record[54:76]):
            add(
                line,
                Rule.INDIVIDUAL_NAME_REQUIRED,
                f"individual name is blank or all zeros ({batch.sec} entries need one)",
            )
        if record[78] not in "01":
            add(line, Rule.NOT_NUMERIC, f"addenda record indicator {record[78]!r} is not 0 or 1")
        if code % 10 in codes.PRENOTE_DIGITS and entry.amount != 0:
            add(
                line,
                Rule.PRENOTE_AMOUNT,
                f"prenotification (transaction code {code}) with non-zero amount {entry.amount}",
            )
        self._direction(entry, batch)
        self._trace(entry, batch)

    def _direction(self, entry: EntryState, batch: BatchState) -> None:
        add, line, code = self.findings.add, entry.line, entry.code
        debit = code % 10 >= 5
        if debit and batch.service_class == codes.CREDITS_ONLY:
            add(
                line,
                Rule.DEBIT_IN_CREDITS_ONLY_BATCH,
                f"a debit (transaction code {code}) in a credits-only (220) batch",
            )
        elif not debit and batch.service_class == codes.DEBITS_ONLY:
            add(
                line,
                Rule.CREDIT_IN_DEBITS_ONLY_BATCH,
                f"a credit (transaction code {code}) in a debits-only (225) batch",
            )
        if batch.sec == "TEL" and batch.reversal:
            if debit:
                add(
                    line,
                    Rule.REVERSAL_DEBIT,
                    "a TEL batch whose entry description is REVERSAL takes no debit "
                    f"(transaction code {code})",
                )
        elif batch.sec in codes.DEBITS_ONLY_SEC and not debit:
            add(
                line,
                Rule.SEC_DEBITS_ONLY,
                f"a {batch.sec} batch takes debits only (transaction code {code})",
            )

    def _trace(self, entry: EntryState, batch: BatchState) -> None:
        add, line, trace = self.findings.add, entry.line, entry.trace
        if trace[:8] != batch.odfi:
            add(
                line,
                Rule.TRACE_NOT_ODFI,
                f"trace number {trace} does not begin with the ODFI identification {batch.odfi}",
            )
        # Equal trace numbers are the repeat rule's (TraceRegistry), never relaxed.
        if batch.last_trace and trace < batch.last_trace:
            add(
                line,
                Rule.TRACE_NOT_ASCENDING,
                f"trace number {trace} is below the one before it, {batch.last_trace} "
                f"(line {batch.last_trace_line}): trace numbers ascend within a batch",
            )
        batch.last_trace, batch.last_trace_line = trace, line

    def entry_complete(self, entry: EntryState) -> None:
        """Rules that need the entry's addenda: announced addenda, amount for its code."""
        add, line, code, amount = self.findings.add, entry.line, entry.code, entry.amount
        if entry.announced_addenda and not entry.addenda:
            add(line, Rule.ADDENDA_INDICATOR, "addenda record indicator is 1 but no addenda follow")
        kind = code % 10
        types = {a[1:3] for a in entry.addenda}
        if "99" in types or kind in codes.PRENOTE_DIGITS:
            return  # a return carries what it returns; prenotes were checked on their line
        if "98" in types:
            if amount != 0:
                add(
                    line,
                    Rule.AMOUNT_FOR_CODE,
                    f"a notification of change (addenda 98) carries amount {amount}; "
                    "it must be zero",
                )
        elif kind in codes.ZERO_DOLLAR_DIGITS:
            if amount != 0:
                add(
                    line,
                    Rule.AMOUNT_FOR_CODE,
                    f"transaction code {code} is a zero-dollar entry, but its amount is {amount}",
                )
        elif kind not in codes.RETURN_OR_NOC_DIGITS and amount == 0:
            add(
                line,
                Rule.ZERO_ENTRY_AMOUNT,
                f"a live entry (transaction code {code}) with a zero amount",
            )

    # --- addenda (type 7) --------------------------------------------------------------------

    def addenda(self, line: int, record: str, entry: EntryState) -> None:
        add, kind = self.findings.add, record[1:3]
        if kind not in codes.ADDENDA_TYPE_CODES:
            add(line, Rule.ADDENDA_TYPE_CODE, f"addenda type code {kind!r} is not a NACHA one")
        elif kind == "05":
            self._addenda05(line, record, entry)
        elif kind == "98":
            if record[3:6] not in codes.CHANGE_CODES:
                add(line, Rule.CHANGE_CODE, f"change code {record[3:6]} is not a NACHA change code")
            if not record[35:64].strip():
                add(line, Rule.MANDATORY_FIELD, "corrected data is blank (a mandatory field)")
        elif kind == "99" and record[3:6] not in codes.RETURN_REASON_CODES:
            add(
                line,
                Rule.RETURN_REASON_CODE,
                f"return reason code {record[3:6]} is not a NACHA return reason code",
            )
        elif kind == "10" and record[3:6] not in codes.IAT_TRANSACTION_TYPE_CODES:
            add(
                line,
                Rule.IAT_TRANSACTION_TYPE_CODE,
                f"IAT transaction type code {record[3:6]!r} is not a NACHA one",
            )

    def _addenda05(self, line: int, record: str, entry: EntryState) -> None:
        sequence, entry_sequence = record[83:87], record[87:94]
        if not (sequence.isascii() and sequence.isdigit()):
            self.findings.add(
                line, Rule.NOT_NUMERIC, f"addenda sequence number {sequence!r} is not numeric"
            )
            return
        if int(sequence) <= entry.last_addenda05_sequence:
            self.findings.add(
                line,
                Rule.ADDENDA_SEQUENCE,
                f"addenda sequence number {sequence} does not ascend within its entry",
            )
        entry.last_addenda05_sequence = int(sequence)
        if entry_sequence != entry.trace[8:]:
            self.findings.add(
                line,
                Rule.ADDENDA_SEQUENCE,
                f"entry detail sequence number {entry_sequence} is not the last 7 digits of "
                f"its entry's trace number {entry.trace} (line {entry.line})",
            )

    # --- batch control (type 8) --------------------------------------------------------------

    def batch_control(self, line: int, record: str, batch: BatchState) -> None:
        add, header = self.findings.add, batch.header
        if record[1:4] != header[1:4]:
            add(
                line,
                Rule.CONTROL_SERVICE_CLASS,
                f"batch control service class {record[1:4]}, but its header (line "
                f"{batch.line}) says {header[1:4]}",
            )
        # An IAT batch control leaves its company identification blank (as the reference
        # reads it): only the other SEC codes repeat the header's there.
        if batch.sec != "IAT" and record[44:54].strip() != header[40:50].strip():
            add(
                line,
                Rule.CONTROL_COMPANY_IDENTIFICATION,
                f"batch control company identification {record[44:54].strip()!r}, but its "
                f"header (line {batch.line}) says {header[40:50].strip()!r}",
            )
        for what, rule, stated, expected in (
            ("originating DFI identification", Rule.CONTROL_ODFI, record[79:87], batch.odfi),
            ("batch number", Rule.CONTROL_BATCH_NUMBER, record[87:94], batch.number),
        ):
            if stated != expected:
                add(
                    line,
                    rule,
                    f"batch control {what} {stated!r}, but its header (line {batch.line}) "
                    f"says {expected!r}",
                )

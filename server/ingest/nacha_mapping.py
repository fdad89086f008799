"""One NACHA entry (with its addenda and batch) → the SourceRow of the record it becomes.

SPEC §8: date = the batch's effective entry date, amount = cents in major units (negative
for debits), external_id = FORMAT.md's file identity + batch number + trace number,
description = entry description + receiver name, metadata without full account numbers.
"""

from __future__ import annotations

from datetime import date

from server.ingest.nacha_state import BatchState, EntryState
from server.types import JSON, ParseReport, SourceRow


def _iso_date(yymmdd: str) -> str | None:
    if not (yymmdd.isdigit() and len(yymmdd) == 6):
        return None
    try:
        return date(2000 + int(yymmdd[:2]), int(yymmdd[2:4]), int(yymmdd[4:])).isoformat()
    except ValueError:
        return None


def _batch_date(batch: BatchState, creation_date: str, report: ParseReport) -> str:
    effective = batch.header[69:75]
    iso = _iso_date(effective)
    if iso is None:
        iso = _iso_date(creation_date)
        report.notes.append(
            f"line {batch.line}: effective entry date {effective.strip()!r} is "
            "not a date; the file creation date was used"
        )
    return iso or ""


def _major_units(cents: int, debit: bool) -> str:
    whole, frac = divmod(cents, 100)
    return f"{'-' if debit and cents else ''}{whole}.{frac:02d}"


def _masked(account: str) -> str:
    return "****" + account[-4:] if account else ""


def entry_row(
    entry: EntryState,
    batch: BatchState,
    identity: str,
    creation_date: str,
    stream: str,
    report: ParseReport,
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
    if batch.row_date is None:
        batch.row_date = _batch_date(batch, creation_date, report)
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
        "trace_number": entry.trace,
        "batch_number": batch.number,
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
        "date": batch.row_date or None,
        "amount": _major_units(entry.amount, entry.code % 10 >= 5),
        # FORMAT.md: file identity (origin, creation date, time, modifier) + batch + trace.
        "external_id": f"{identity}-{batch.number}-{entry.trace}",
        "currency": "USD",
        "description": " ".join(p for p in (entry_description, name) if p),
        "data_stream_key": stream,
        "metadata": {k: v for k, v in metadata.items() if v},
    }
    return SourceRow(fields=fields, line=entry.line)

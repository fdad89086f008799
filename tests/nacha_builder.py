"""Generate valid NACHA files with correct control totals, for tests to corrupt."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

ODFI = "09100001"


def check_digit(rdfi: str) -> int:
    """The routing number check digit, computed here (not by the code under test)."""
    weights = [3, 7, 1, 3, 7, 1, 3, 7]
    return (10 - sum(int(d) * w for d, w in zip(rdfi, weights, strict=True)) % 10) % 10


@dataclass
class Entry:
    code: str = "22"
    rdfi: str = "07100030"
    check_digit: str | None = None  # None: the right one for `rdfi`
    account: str = "123456789"
    cents: int = 1000
    individual_id: str = "ID1"
    name: str = "JANE DOE"
    addenda: list[str] = field(default_factory=list)  # full 94-char addenda records
    trace: str | None = None  # None: the ODFI and the entry's place in its batch


@dataclass
class Batch:
    entries: list[Entry]
    sec: str = "PPD"
    description: str = "PAYROLL"
    effective: str = "240115"
    service_class: str = "200"
    number: int | None = None  # None: its place in the file


@dataclass
class FileHeader:
    """The fields that make a file's identity (FORMAT.md), and its destination."""

    origin: str = " 091000019"
    created: str = "240115"
    time: str = "1200"
    modifier: str = "A"
    destination: str = " 091000019"


def addenda05(text: str, seq: int = 1, entry_seq: str = "0000001") -> str:
    return f"705{text:<80}{seq:04d}{entry_seq}"


def addenda99(reason: str, original_trace: str) -> str:
    return f"799{reason}{original_trace:<15}{'':6}{'':8}{'':44}{'':15}"[:94].ljust(94)


def addenda98(change: str, original_trace: str, corrected: str) -> str:
    return f"798{change}{original_trace:<15}{'':14}{corrected:<29}{'':30}"[:94].ljust(94)


def file_header(header: FileHeader) -> str:
    return (
        f"101{header.destination}{header.origin}{header.created}{header.time}"
        f"{header.modifier}094101{'DEST BANK':<23}{'ORIGIN CO':<23}{'REF00001'}"
    )


def batch_header(batch: Batch, number: int) -> str:
    return (
        f"5{batch.service_class}{'ORIGIN CO':<16}{'':20}{'1234567890'}{batch.sec}"
        f"{batch.description:<10}{'JAN 24'}{batch.effective}{'   '}1{ODFI}{number:07d}"
    )


def entry_detail(e: Entry, trace: str) -> str:
    digit = e.check_digit if e.check_digit is not None else str(check_digit(e.rdfi))
    return (
        f"6{e.code}{e.rdfi}{digit}{e.account:<17}{e.cents:010d}"
        f"{e.individual_id:<15}{e.name:<22}{'  '}{'1' if e.addenda else '0'}{trace}"
    )


def batch_control(
    service_class: str, count: int, hash_: int, debit: int, credit: int, number: int
) -> str:
    return (
        f"8{service_class}{count:06d}{hash_ % 10**10:010d}{debit:012d}{credit:012d}"
        f"{'1234567890'}{'':19}{'':6}{ODFI}{number:07d}"
    )


def file_control(
    batches: int, records: int, count: int, hash_: int, debit: int, credit: int
) -> str:
    blocks = -(-records // 10)
    return (
        f"9{batches:06d}{blocks:06d}{count:08d}{hash_ % 10**10:010d}"
        f"{debit:012d}{credit:012d}{'':39}"
    )


def build(batches: list[Batch], *, pad: bool = True, header: FileHeader | None = None) -> list[str]:
    """The file as a list of 94-character records."""
    records = [file_header(header or FileHeader())]
    f_count = f_hash = f_debit = f_credit = 0
    for place, batch in enumerate(batches, 1):
        number = batch.number if batch.number is not None else place
        records.append(batch_header(batch, number))
        count = hash_ = debit = credit = 0
        for seq, e in enumerate(batch.entries, 1):
            records.append(entry_detail(e, e.trace or f"{ODFI}{seq:07d}"))
            records.extend(e.addenda)
            count += 1 + len(e.addenda)
            hash_ += int(e.rdfi)
            if int(e.code[1]) >= 5:
                debit += e.cents
            else:
                credit += e.cents
        records.append(batch_control(batch.service_class, count, hash_, debit, credit, number))
        f_count += count
        f_hash += hash_
        f_debit += debit
        f_credit += credit
    records.append(file_control(len(batches), len(records) + 1, f_count, f_hash, f_debit, f_credit))
    while pad and len(records) % 10:
        records.append("9" * 94)
    assert all(len(r) == 94 for r in records), [len(r) for r in records]
    return records


def encode(records: list[str], newline: str = "\n") -> bytes:
    return (newline.join(records) + (newline if newline else "")).encode()


def generated_file(
    entries: int, per_batch: int = 10_000, chunk_bytes: int = 256 * 1024
) -> Iterator[bytes]:
    """A valid file of `entries` entry details, produced lazily in chunks (never whole)."""
    pending: list[str] = [file_header(FileHeader())]
    size = 0
    records = 1
    f_count = f_hash = f_debit = f_credit = batches = 0

    def emit(record: str) -> Iterator[bytes]:
        nonlocal size, records
        pending.append(record)
        records += 1
        size += 95
        if size >= chunk_bytes:
            yield ("\n".join(pending) + "\n").encode()
            pending.clear()
            size = 0

    done = 0
    while done < entries:
        batches += 1
        yield from emit(batch_header(Batch([]), batches))
        count = hash_ = debit = credit = 0
        for seq in range(1, min(per_batch, entries - done) + 1):
            rdfi = f"{seq * 7919 % 10**8:08d}"
            cents = seq * 13 % 10**8 + 1
            debit_entry = seq % 3 == 0
            e = Entry(code="27" if debit_entry else "22", rdfi=rdfi, cents=cents, name=f"N{seq}")
            yield from emit(entry_detail(e, f"{ODFI}{seq:07d}"))
            count += 1
            hash_ += int(rdfi)
            debit += cents if debit_entry else 0
            credit += 0 if debit_entry else cents
        done += count
        yield from emit(batch_control("200", count, hash_, debit, credit, batches))
        f_count += count
        f_hash += hash_
        f_debit += debit
        f_credit += credit
    yield from emit(file_control(batches, records + 1, f_count, f_hash, f_debit, f_credit))
    if pending:
        yield ("\n".join(pending) + "\n").encode()


def sample_batches() -> list[Batch]:
    """Two batches: credits with payment addenda, a debit, a prenote, a return and a NOC."""
    return [
        Batch(
            [
                Entry(cents=250000, name="ALICE", addenda=[addenda05("SALARY JANUARY")]),
                Entry(code="32", rdfi="01100001", account="987654321", cents=187550, name="BOB"),
                Entry(code="23", cents=0, name="PRENOTE PERSON"),
            ]
        ),
        Batch(
            [
                Entry(
                    code="27",
                    rdfi="02100002",
                    account="5550001234",
                    cents=4999,
                    name="ACME",
                    addenda=[addenda99("R01", "091000010000009")],
                ),
                Entry(
                    code="26",
                    cents=0,
                    name="NOC",
                    addenda=[addenda98("C01", "091000010000003", "99887766")],
                ),
            ],
            sec="CCD",
            description="FEES",
        ),
    ]

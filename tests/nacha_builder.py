"""Generate valid NACHA files with correct control totals, for tests to corrupt."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Entry:
    code: str = "22"
    rdfi: str = "07100030"
    check_digit: str = "1"
    account: str = "123456789"
    cents: int = 1000
    individual_id: str = "ID1"
    name: str = "JANE DOE"
    addenda: list[str] = field(default_factory=list)  # full 94-char addenda records


@dataclass
class Batch:
    entries: list[Entry]
    sec: str = "PPD"
    description: str = "PAYROLL"
    effective: str = "240115"
    service_class: str = "200"


def addenda05(text: str, seq: int = 1, entry_seq: str = "0000001") -> str:
    return f"705{text:<80}{seq:04d}{entry_seq}"


def addenda99(reason: str, original_trace: str) -> str:
    return f"799{reason}{original_trace:<15}{'':6}{'':8}{'':44}{'':15}"[:94].ljust(94)


def addenda98(change: str, original_trace: str, corrected: str) -> str:
    return f"798{change}{original_trace:<15}{'':14}{corrected:<29}{'':30}"[:94].ljust(94)


def build(batches: list[Batch], *, pad: bool = True) -> list[str]:
    """The file as a list of 94-character records."""
    records = [
        f"101 091000019{'1234567890'}240115{'1200'}A094101{'DEST BANK':<23}"
        f"{'ORIGIN CO':<23}{'REF00001'}"
    ]
    f_count = f_hash = f_debit = f_credit = 0
    for number, batch in enumerate(batches, 1):
        records.append(
            f"5{batch.service_class}{'ORIGIN CO':<16}{'':20}{'1234567890'}{batch.sec}"
            f"{batch.description:<10}{'JAN 24'}{batch.effective}{'   '}1{'09100001'}{number:07d}"
        )
        count = hash_ = debit = credit = 0
        for seq, e in enumerate(batch.entries, 1):
            trace = f"09100001{seq:07d}"
            records.append(
                f"6{e.code}{e.rdfi}{e.check_digit}{e.account:<17}{e.cents:010d}"
                f"{e.individual_id:<15}{e.name:<22}{'  '}{'1' if e.addenda else '0'}{trace}"
            )
            records.extend(e.addenda)
            count += 1 + len(e.addenda)
            hash_ += int(e.rdfi)
            if int(e.code[1]) >= 5:
                debit += e.cents
            else:
                credit += e.cents
        records.append(
            f"8{batch.service_class}{count:06d}{hash_ % 10**10:010d}{debit:012d}{credit:012d}"
            f"{'1234567890'}{'':19}{'':6}{'09100001'}{number:07d}"
        )
        f_count += count
        f_hash += hash_
        f_debit += debit
        f_credit += credit
    blocks = -(-(len(records) + 1) // 10)
    records.append(
        f"9{len(batches):06d}{blocks:06d}{f_count:08d}{f_hash % 10**10:010d}"
        f"{f_debit:012d}{f_credit:012d}{'':39}"
    )
    while pad and len(records) % 10:
        records.append("9" * 94)
    assert all(len(r) == 94 for r in records), [len(r) for r in records]
    return records


def encode(records: list[str], newline: str = "\n") -> bytes:
    return (newline.join(records) + (newline if newline else "")).encode()


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

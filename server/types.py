"""The shared vocabulary: small value types every module speaks.

Kept free of imports from the rest of the package so that parsers, the store,
the worker and the HTTP layer can all depend on it without cycles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

JSON = dict[str, Any]

# Each vocabulary once. StrEnum members are the strings the API and the database hold
# (equal to them, same hash), so a row read back as plain text still compares and looks
# up equal: `row["status"] in TERMINAL_STATUSES`, `frozenset(Status)` for checking input.


class Status(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES: frozenset[str] = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})


class Source(StrEnum):
    """How a bulk request's rows arrived."""

    BULK_API = "bulk_api"
    CSV = "csv"
    NACHA = "nacha"
    RETRY = "retry"


class OnConflict(StrEnum):
    """What a row whose external_id already exists in its stream becomes (SPEC §6)."""

    SKIP = "skip"
    ERROR = "error"


class Mode(StrEnum):
    """How a bulk request's rows are stored (SPEC §14)."""

    PARTIAL = "partial"  # each valid row is stored; failed rows are listed
    ATOMIC = "atomic"  # all rows or none: any failed row fails the request, storing nothing


class UploadFormat(StrEnum):
    CSV = "csv"
    NACHA = "nacha"


@dataclass(slots=True, frozen=True)
class RowProblem:
    """Why one input row cannot become a record (a per-row failure, not a request error)."""

    code: str
    message: str
    pointer: str = ""  # JSON Pointer relative to the row, e.g. "/amount"; "" = whole row


@dataclass(slots=True)
class SourceRow:
    """One input row as a parser yields it, before validation.

    `fields` has the shape of one element of `POST /v1/records/bulk`'s `records`
    (strings are fine for every value: validation converts them). `line` is the
    1-based line of the uploaded file where the row starts (None for JSON input).
    `problem` is set when the parser already knows the row is unusable
    (e.g. a CSV row with more cells than the header); validation then reports it as is.
    `size` is the bytes of input the row came from, when the parser knows it (CSV), so
    that rows are staged in chunks bounded in bytes as well as rows.
    """

    fields: JSON
    line: int | None = None
    problem: RowProblem | None = None
    size: int = 0


class FileRejected(Exception):
    """The uploaded file as a whole cannot be processed; nothing from it is inserted.

    `details` goes to the bulk request's `error_details` (e.g. {"line": 93, "rule": ...}).
    """

    def __init__(self, message: str, details: JSON | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: JSON = details if details is not None else {}


@dataclass(slots=True)
class ParseReport:
    """What a parser learned about a whole file besides its rows (warnings, counts)."""

    warnings: list[str] = field(default_factory=list)
    # Observations that are not format defects (e.g. a fallback the parser chose).
    notes: list[str] = field(default_factory=list)

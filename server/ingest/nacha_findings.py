"""The problems found in one NACHA file, and the FileRejected that reports them.

Like the reference reader, the parser reports every problem it finds, not only the first,
so one round of corrections fixes a file. Field rules are collected and reading goes on;
structural rules (the parser cannot make sense of what follows) stop reading at once.
Either way `error_details.file` names the first problem by line (`line`, `rule`, message)
and lists them all in `errors` (at most NACHA_MAX_REPORTED_ERRORS; `error_count` counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from server.constants import NACHA_MAX_REPORTED_ERRORS
from server.ingest.nacha_codes import RELAXED_BY, NachaOption, Rule
from server.types import JSON, FileRejected


@dataclass(slots=True, frozen=True)
class Finding:
    line: int | None
    rule: Rule
    message: str  # begins with "line N: " when it has a line
    details: JSON


class Findings:
    def __init__(self, options: frozenset[NachaOption] = frozenset()) -> None:
        self.options = options
        self.kept: list[Finding] = []
        self.count = 0

    def __bool__(self) -> bool:
        return self.count > 0

    def relaxes(self, rule: Rule) -> bool:
        return not self.options.isdisjoint(RELAXED_BY.get(rule, ()))

    def add(self, line: int | None, rule: Rule, message: str, **details: object) -> None:
        """A broken rule; reading goes on (unless the file has too many to be worth it)."""
        if rule in RELAXED_BY and self.relaxes(rule):
            return
        self._keep(line, rule, message, details)
        if self.count >= NACHA_MAX_REPORTED_ERRORS:
            raise self.rejection(stopped_at=line)

    def fatal(self, line: int | None, rule: Rule, message: str, **details: object) -> FileRejected:
        """A structural problem: the caller raises what this returns, reading stops."""
        self._keep(line, rule, message, details)
        return self.rejection()

    def _keep(self, line: int | None, rule: Rule, message: str, details: JSON) -> None:
        self.count += 1
        if len(self.kept) < NACHA_MAX_REPORTED_ERRORS:
            prefix = f"line {line}: " if line is not None else ""
            self.kept.append(Finding(line, rule, prefix + message, details))

    def rejection(self, stopped_at: int | None = None) -> FileRejected:
        # Checks that need a whole batch report on an earlier line than the record that
        # completed them; line order is what a person fixing the file reads in.
        ordered = sorted(self.kept, key=lambda f: math.inf if f.line is None else f.line)
        first = ordered[0]
        message = first.message
        if self.count > 1:
            more = self.count - 1
            message += f" (and {more} more problem{'s' if more > 1 else ''}, listed in errors)"
        details: JSON = {
            "line": first.line,
            "rule": str(first.rule),
            **first.details,
            "errors": [
                {"line": f.line, "rule": str(f.rule), "message": f.message} for f in ordered
            ],
            "error_count": self.count,
        }
        if stopped_at is not None:
            details["stopped_at_line"] = stopped_at
            message += (
                f"; reading stopped after {NACHA_MAX_REPORTED_ERRORS} problems (line {stopped_at})"
            )
        return FileRejected(message, details)

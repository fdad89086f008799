"""The command line, as a user runs it (real subprocesses of run.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["serve", "--help"],
        ["keys", "--help"],
        ["keys", "create", "--help"],
        ["bench", "--help"],
    ],
)
def test_help_on_every_level(argv: list[str]) -> None:
    out = run(*argv).stdout
    assert "usage: python run.py" in out


def test_top_level_help_lists_serve_flags_and_commands() -> None:
    out = run("--help").stdout
    for flag in (
        "--host",
        "--port",
        "--db",
        "--workers",
        "--batch-size",
        "--stuck-after",
        "--max-upload-mb",
        "--log-level",
        "keys",
        "bench",
        "BULK_PORT",
    ):
        assert flag in out


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    db = str(tmp_path / "k.db")
    created = run("keys", "create", "--environment", "sandbox", "--db", db).stdout
    key = created.strip()
    assert created == key + "\n"
    assert key.startswith("bk_")
    listing = run("keys", "list", "--db", db).stdout
    assert "sandbox" in listing
    assert key not in listing
    assert key[:9] in listing  # the prefix, to recognise it
    assert "revoked key 1" in run("keys", "revoke", "1", "--db", db).stdout
    again = run("keys", "revoke", "1", "--db", db, check=False)
    assert again.returncode == 1
    assert "no active key" in again.stderr
    assert run("keys", "list", "--db", db).stdout.count("Z") >= 2  # created + revoked dates

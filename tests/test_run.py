"""The command line, as a user runs it (real subprocesses of run.py)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.db.sqlite.store import Store
from server.http.auth import hash_api_key

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
    match = re.fullmatch(r"bk_([a-z0-9]{12})_([A-Za-z0-9_-]{43})", key)
    assert match is not None, key
    public_id, secret = match.groups()
    asyncio.run(_ensure_chosen_key(tmp_path / "k.db", "my-demo-key"))
    listing = run("keys", "list", "--db", db).stdout
    header, *lines = listing.splitlines()
    assert header.split()[:3] == ["id", "public", "id"]
    # id, public id, environment, created, last used, revoked: the public id only for a
    # generated key; nothing at all of a chosen one.
    assert [line.split()[:3] for line in lines] == [
        ["1", public_id, "sandbox"],
        ["2", "-", "default"],
    ]
    assert not [part for part in _runs(secret, 6) if part in listing]
    assert not [part for part in _runs("my-demo-key", 3) if part in listing]
    assert "revoked key 1" in run("keys", "revoke", "1", "--db", db).stdout
    again = run("keys", "revoke", "1", "--db", db, check=False)
    assert again.returncode == 1
    assert "no active key" in again.stderr
    assert run("keys", "list", "--db", db).stdout.count("Z") >= 3  # 2 created + 1 revoked


def _runs(secret: str, length: int) -> list[str]:
    return [secret[i : i + length] for i in range(len(secret) - length + 1)]


async def _ensure_chosen_key(db: Path, key: str) -> None:
    """What `BULK_API_KEY=key python run.py` does at start-up, without serving."""
    store = Store(db)
    await store.open()
    try:
        assert await store.ensure_api_key("default", hash_api_key(key))
    finally:
        await store.close()

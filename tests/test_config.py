"""Settings from flags, then BULK_* variables, then defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from server.config import Settings, add_settings_arguments, settings_from


def parse(argv: list[str], environ: dict[str, str]) -> Settings:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return settings_from(parser.parse_args(argv), environ)


def test_defaults() -> None:
    s = parse([], {})
    assert (s.host, s.port, s.db_path, s.workers, s.batch_size, s.stuck_after, s.max_upload_mb) == (
        "127.0.0.1",
        8080,
        Path("data/bulk.db"),
        2,
        500,
        300,
        256,
    )


def test_environment_then_flags_win() -> None:
    env = {
        "BULK_PORT": "9001",
        "BULK_DB": "/tmp/x.db",
        "BULK_WORKERS": "4",
        "BULK_BATCH_SIZE": "100",
        "BULK_STUCK_AFTER": "30",
        "BULK_MAX_UPLOAD_MB": "8",
        "BULK_LOG_LEVEL": "debug",
        "BULK_HOST": "0.0.0.0",
    }
    s = parse([], env)
    assert (
        s.port,
        s.db_path,
        s.workers,
        s.batch_size,
        s.stuck_after,
        s.max_upload_mb,
        s.log_level,
        s.host,
    ) == (9001, Path("/tmp/x.db"), 4, 100, 30.0, 8, "DEBUG", "0.0.0.0")
    assert parse(["--port", "9002", "--workers", "1"], env).port == 9002
    assert parse(["--port", "9002", "--workers", "1"], env).workers == 1
    # 0: an API-only process (on PostgreSQL, other processes do the work).
    assert parse(["--workers", "0"], env).workers == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--workers", "-1"],
        ["--port", "70000"],
        ["--batch-size", "x"],
        ["--stuck-after", "-1"],
        ["--batch-pause", "-0.1"],
        ["--batch-pause", "nan"],
    ],
)
def test_bad_flags_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(argv, {})


def test_batch_pause_is_off_unless_asked_for() -> None:
    assert parse([], {}).batch_pause == 0
    assert parse([], {"BULK_BATCH_PAUSE": "0.05"}).batch_pause == 0.05
    assert parse(["--batch-pause", "0"], {"BULK_BATCH_PAUSE": "1"}).batch_pause == 0


def test_bad_environment_is_refused() -> None:
    with pytest.raises(SystemExit, match="BULK_WORKERS"):
        parse([], {"BULK_WORKERS": "many"})

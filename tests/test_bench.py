"""`python run.py bench` with tiny sizes: every phase runs, the JSON has every number."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from run import main
from tests.pg_cluster import run_in_thread


def _numbers(part: Any, *keys: str) -> None:
    for key in keys:
        value = part[key]
        assert isinstance(value, int | float), (key, value)
        assert not isinstance(value, bool), (key, value)
        assert value >= 0, (key, value)


def test_bench_smoke_prints_every_number_and_cleans_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process, so pytest's warnings-as-errors also covers the bench's own sessions,
    # files and subprocesses; the servers are real `run.py` subprocesses.
    code = main(
        [
            "bench",
            "--rows", "2000",
            "--cancel-rounds", "2",
            "--csv-rows", "30000",
            "--probe-interval", "0.02",
            "--workdir", str(tmp_path),
            "--json",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    result = orjson.loads(out)

    assert result["machine"]["cpu_count"] == os.cpu_count()
    assert result["settings"]["rows"] == 2000
    assert result["settings"]["csv_rows"] == 30000
    _numbers(result["ceiling"], "rows_per_s", "seconds")
    _numbers(result["ingest"], "rows_per_s", "seconds", "ratio_to_ceiling")
    assert result["ingest"]["requests"] == 2
    _numbers(result["ingest"]["accept"], "p50_ms", "p99_ms", "max_ms")
    # Beside ingest: the one-unique-index ceiling and the huey peer, on the same rows.
    _numbers(result["one_index_ceiling"], "rows_per_s", "seconds")
    assert result["one_index_ceiling"]["rows"] == 2000
    peer = result["peer"]
    _numbers(peer, "rows_per_s", "seconds", "server_cpu_us_per_row", "consumer_cpu_us_per_row")
    assert peer["rows"] == 2000
    assert peer["requests"] == 2
    _numbers(result["ingest"], "ratio_to_peer", "ratio_to_one_index_ceiling")
    assert result["ingest"]["ratio_to_peer"] == pytest.approx(
        result["ingest"]["rows_per_s"] / peer["rows_per_s"], rel=1e-2
    )
    assert result["cancel"]["latency"]["n"] == 2
    _numbers(result["cancel"]["latency"], "p50_ms", "p99_ms", "max_ms")
    _numbers(
        result["upload"],
        "upload_mb_per_s",
        "rows_per_s",
        "seconds",
        "bytes",
        "server_cpu_us_per_row",
    )
    assert result["upload"]["rows"] == 30000
    assert result["fairness"]["latency"]["n"] >= 1  # 10-row probes ran during the upload
    for name in ("ingest", "cancel", "upload"):
        server = result["servers"][name]
        _numbers(server, "vm_hwm_mb", "vm_rss_sampled_max_mb", "cpu_seconds")
        assert server["exit_code"] == 0  # a graceful SIGTERM shutdown
    names = {t["name"] for t in result["targets"]}
    assert names == {
        "ingest_ratio_to_ceiling",
        "ingest_ratio_to_peer",
        "ingest_ratio_to_one_index_ceiling",
        "accept_p99_ms",
        "cancel_p99_ms",
        "small_request_max_ms",
        "peak_rss_mb",
    }
    assert all(set(t) == {"name", "value", "limit", "ok"} for t in result["targets"])
    # The temporary databases, CSV and server logs are gone.
    assert list(tmp_path.iterdir()) == []


def test_bench_without_huey_says_how_to_install_it_and_runs_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "huey", None)  # `import huey` now raises ImportError
    code = main(
        [
            "bench", "--rows", "1000", "--cancel-rounds", "0", "--csv-rows", "0",
            "--workdir", str(tmp_path),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    peer_line = next(line for line in out.splitlines() if line.startswith("huey peer"))
    assert 'huey is not installed: pip install -e ".[bench]"' in peer_line
    assert "end-to-end ingest" in out
    assert "ceiling, one unique index" in out
    assert list(tmp_path.iterdir()) == []


def _postgres_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str], *target: str) -> Any:
    code = main(
        [
            "bench", *target, "--rows", "2000", "--processes", "1,2",
            "--workdir", str(tmp_path), "--json",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    result = orjson.loads(out)
    assert result["settings"]["processes"] == [1, 2]
    # The SQLite single-process figure of the same run, beside PostgreSQL's.
    _numbers(result["ingest"], "rows_per_s", "seconds", "server_cpu_us_per_row")
    assert result["ingest"]["requests"] == 2
    copies = result["postgres_copy"]
    assert [c["clients"] for c in copies] == [1, 2]
    for copy in copies:
        assert copy["rows"] == 2000
        _numbers(copy, "rows_per_s", "seconds")
    assert [p["processes"] for p in result["postgres"]] == [1, 2]
    for measured in result["postgres"]:
        assert measured["rows"] == 2000
        assert measured["requests"] == 2
        # Counted with SELECT count(*) in the phase's database, not read off the API.
        assert measured["records_in_database"] == 2000
        _numbers(
            measured, "rows_per_s", "ratio_to_sqlite", "ratio_to_copy", "client_cpu_us_per_row"
        )
    one, two = result["postgres"]
    assert two["ratio_to_one_process"] == pytest.approx(
        two["rows_per_s"] / one["rows_per_s"], rel=1e-2
    )
    for name in ("ingest", "postgres-1p", "postgres-2p"):
        assert result["servers"][name]["exit_code"] == 0  # a graceful SIGTERM shutdown
    assert {t["name"]: t["limit"] for t in result["targets"]} == {
        "postgres_1p_ratio_to_sqlite": 0.6,
        "postgres_2p_ratio_to_1p": 1.3,
    }
    assert list(tmp_path.iterdir()) == []
    return result


def test_postgres_bench_on_a_throwaway_cluster_stores_every_row_and_leaves_nothing_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = _postgres_bench(tmp_path, capsys, "--postgres-throwaway")
    _numbers(result["postgres"][0], "database_cpu_us_per_row")  # the postmaster is known
    cluster = result["settings"]["throwaway_cluster"]
    pid = cluster["postmaster_pid"]
    assert isinstance(pid, int)
    assert not Path(cluster["directory"]).exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_postgres_bench_on_a_given_server_drops_the_databases_it_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_database: str
) -> None:
    async def databases() -> set[str]:
        conn = await asyncpg.connect(pg_database)
        try:
            return {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
        finally:
            await conn.close()

    before = run_in_thread(databases)
    result = _postgres_bench(tmp_path, capsys, "--database-url", pg_database)
    # The bench's CPU reading of the database needs its postmaster: unknown here.
    assert result["postgres"][0]["database_cpu_us_per_row"] is None
    assert run_in_thread(databases) == before


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--processes", "1,2"], "--processes needs --database-url or --postgres-throwaway"),
        (
            ["--postgres-throwaway", "--database-url", "postgresql://x@127.0.0.1/x"],
            "give --database-url or --postgres-throwaway, not both",
        ),
        (["--postgres-throwaway", "--rows", "0"], "--rows must be more than 0"),
    ],
)
def test_postgres_bench_refuses_contradictory_flags_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    code = main(["bench", *arguments, "--workdir", str(tmp_path)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []

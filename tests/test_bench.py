"""`python run.py bench` with tiny sizes: every phase runs, the JSON has every number."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from run import main


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

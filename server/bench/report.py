"""The SQLite bench's targets and its table: a finished run's JSON in, verdicts and text out.

`server/bench/cli.py` runs the phases and hands the result here; the PostgreSQL run's
table is `server/bench/postgres.py`'s. The target numbers are the performance issue's.
"""

from __future__ import annotations

from typing import Any

from server.types import JSON


def _peak_rss(result: JSON) -> float | None:
    peaks = [s["vm_hwm_mb"] for s in result["servers"].values() if s["vm_hwm_mb"] is not None]
    return max(peaks, default=None)


def evaluate_targets(result: JSON) -> list[JSON]:
    """The issue's targets: each {name, value, limit, ok}; ok is None when not measured."""

    def target(name: str, value: float | None, limit: float, *, at_least: bool) -> JSON:
        ok = None if value is None else (value >= limit if at_least else value <= limit)
        return {"name": name, "value": value, "limit": limit, "ok": ok}

    def get(part: str, *path: str) -> Any:
        value: Any = result.get(part)
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    return [
        target("ingest_ratio_to_ceiling", get("ingest", "ratio_to_ceiling"), 0.60, at_least=True),
        target("ingest_ratio_to_peer", get("ingest", "ratio_to_peer"), 1.0, at_least=True),
        target(
            "ingest_ratio_to_one_index_ceiling",
            get("ingest", "ratio_to_one_index_ceiling"),
            0.4,
            at_least=True,
        ),
        target("accept_p99_ms", get("ingest", "accept", "p99_ms"), 20.0, at_least=False),
        target("cancel_p99_ms", get("cancel", "latency", "p99_ms"), 100.0, at_least=False),
        target(
            "small_request_max_ms", get("fairness", "latency", "max_ms"), 1000.0, at_least=False
        ),
        target("peak_rss_mb", _peak_rss(result), 300.0, at_least=False),
    ]


def _mark(result: JSON, name: str) -> str:
    for t in result["targets"]:
        if t["name"] == name:
            return {True: "✓", False: "✗", None: "-"}[t["ok"]]
    return ""


def _phase_max(result: JSON, phase: str) -> str:
    summary = result["fairness"][phase]
    return f"≤{summary['max_ms']:.0f}" if summary["n"] else "none"


def _loop_lag(lag: JSON) -> str:
    def shares(part: JSON) -> str:
        if not part["samples"]:
            return "no samples"
        return f">5 ms {part['over_5ms']:.0%}, >20 ms {part['over_20ms']:.0%} ({part['samples']})"

    return f"posting {shares(lag['posting'])}; ingest {shares(lag['ingest'])}"


def render_table(result: JSON) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        f"bulk-requests benchmark — {m['cpu_count']} CPU cores (os.cpu_count()), "
        f"Python {m['python']}, SQLite {m['sqlite']}",
        f"settings: rows {s['rows']:,} ({s['request_rows']}/POST, {s['concurrency']} concurrent), "
        f"workers {s['workers']}, batch size {s['batch_size']}, cancel rounds "
        f"{s['cancel_rounds']} (batch size {s['cancel_batch_size']}), CSV rows {s['csv_rows']:,}",
        "client and server share this machine: numbers are noisy when anything else runs",
        "",
        f"{'measure':<34} {'result':<62} {'target':<16} ok",
        "-" * 117,
    ]

    def row(label: str, value: str, target: str = "", mark: str = "") -> None:
        lines.append(f"{label:<34} {value:<62} {target:<16} {mark}".rstrip())

    if "ceiling" in result:
        c, i = result["ceiling"], result["ingest"]
        row(
            "raw ceiling (sqlite3 executemany)",
            f"{c['rows_per_s']:,.0f} rows/s ({c['rows_per_transaction']}-row transactions)",
        )
        row(
            "end-to-end ingest (bulk POSTs)",
            f"{i['rows_per_s']:,.0f} rows/s = {i['ratio_to_ceiling']:.0%} of ceiling "
            f"({i['seconds']:.1f} s; server CPU {i['server_cpu_us_per_row']:.1f} µs/row)",
            "≥ 60% of ceiling",
            _mark(result, "ingest_ratio_to_ceiling"),
        )
        o = result["one_index_ceiling"]
        row(
            "ceiling, one unique index",
            f"{o['rows_per_s']:,.0f} rows/s; ingest = {i['ratio_to_one_index_ceiling']:.2f}× it",
            "≥ 0.4×",
            _mark(result, "ingest_ratio_to_one_index_ceiling"),
        )
        peer = result.get("peer")
        if peer and "skipped" in peer:
            row("huey peer (aiohttp + consumer)", peer["skipped"])
        elif peer:
            row(
                "huey peer (aiohttp + consumer)",
                f"{peer['rows_per_s']:,.0f} rows/s; ingest = {i['ratio_to_peer']:.2f}× the peer "
                f"(CPU {peer['server_cpu_us_per_row']:.1f} + "
                f"{peer['consumer_cpu_us_per_row']:.1f} µs/row)",
                "≥ 1.0× the peer",
                _mark(result, "ingest_ratio_to_peer"),
            )
        a = i["accept"]
        row(
            "accept latency p50 / p99 / max",
            f"{a['p50_ms']:.1f} / {a['p99_ms']:.1f} / {a['max_ms']:.1f} ms ({a['n']} POSTs)",
            "p99 ≤ 20 ms",
            _mark(result, "accept_p99_ms"),
        )
        row("event-loop lag (share of samples)", _loop_lag(i["loop_lag"]))
    if "cancel" in result:
        c = result["cancel"]
        lat = c["latency"]
        row(
            "cancel latency p50 / p99 / max",
            f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} / {lat['max_ms']:.1f} ms "
            f"({lat['n']} rounds, "
            f"{c['missed'] + c['completed_after_cancel_requested']} finished first)",
            "p99 ≤ 100 ms",
            _mark(result, "cancel_p99_ms"),
        )
    if "upload" in result:
        f, u = result["fairness"]["latency"], result["upload"]
        if f["n"]:
            row(
                "10-row request during upload",
                f"p50 {f['p50_ms']:.0f} / max {f['max_ms']:.0f} ms ({f['n']} probes; "
                f"parsing {_phase_max(result, 'during_parsing')}, "
                f"inserting {_phase_max(result, 'during_processing')}; "
                f"202 max {result['fairness']['accept']['max_ms']:.0f})",
                "≤ 1000 ms",
                _mark(result, "small_request_max_ms"),
            )
        else:
            row("10-row request during upload", "no probe ran (upload too short)")
        row(
            "CSV upload transfer",
            f"{u['upload_mb_per_s']:.1f} MB/s ({u['bytes'] / 1e6:.1f} MB in "
            f"{u['upload_seconds']:.2f} s)",
        )
        parse = f"parse {u['parse_seconds']:.1f} s" if u["parse_seconds"] is not None else ""
        if u["server_cpu_us_per_row"] is not None:
            parse += f"; server CPU {u['server_cpu_us_per_row']:.1f} µs/row"
        row(
            "CSV upload to completion",
            f"{u['rows_per_s']:,.0f} rows/s ({u['rows']:,} rows, {u['seconds']:.1f} s; {parse})",
        )
    for name, mem in result["servers"].items():
        row(
            f"server peak RSS ({name})",
            f"VmHWM {mem['vm_hwm_mb']} MB, sampled VmRSS max {mem['vm_rss_sampled_max_mb']} MB",
            "≤ 300 MB",
            _mark(result, "peak_rss_mb"),
        )
    return "\n".join(lines)

"""`python run.py bench` — the benchmark (filled in by the performance work)."""

from __future__ import annotations

import argparse


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print results as JSON")


def run_bench(args: argparse.Namespace) -> int:
    raise SystemExit("the benchmark is not implemented yet")

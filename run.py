"""Command line: `python run.py [serve] [flags]`, `python run.py keys …`, `python run.py bench`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from server.config import DEFAULT_DB_PATH, Settings, add_settings_arguments, env_name, settings_from
from server.constants import GC_YOUNG_THRESHOLD

# Exit statuses: 1 for "nothing to act on" (no such key), 2 when the command could not
# run at all (the database is another process's), as argparse uses 2 for bad usage.
EXIT_NOT_FOUND = 1
EXIT_CANNOT_RUN = 2
EVENT_LOOP_ENV = "BULK_EVENT_LOOP"


def _serve_parser(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser)


def build_parser(*, with_bench_arguments: bool = True) -> argparse.ArgumentParser:
    """The whole command line; without `with_bench_arguments` the `bench` command is listed
    but its flags are not defined, so building it never imports server.bench (1,100 lines
    that serving does not need)."""
    parser = argparse.ArgumentParser(
        prog="python run.py",
        description="Bulk-requests service. With no command (or `serve`): run the server.",
    )
    _serve_parser(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _serve_parser(
        commands.add_parser(
            "serve",
            help="run the HTTP server and its workers (default)",
            description="Run the HTTP server and its workers.",
        )
    )

    keys = commands.add_parser("keys", help="manage API keys", description="Manage API keys.")
    key_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    db_help = f"SQLite database file (env {env_name('db_path')}, default {DEFAULT_DB_PATH})"
    create = key_commands.add_parser(
        "create",
        help="create a key and print it once",
        description="Create an API key (bk_<public id>_<secret>); it is printed once, alone.",
    )
    create.add_argument("--environment", required=True, help="environment the key belongs to")
    create.add_argument("--db", dest="db_path", type=Path, help=db_help)
    listing = key_commands.add_parser(
        "list",
        help="list keys (never the keys themselves)",
        description="List API keys: id, public id, environment, dates. Keys chosen with "
        "BULK_API_KEY, and keys made before public ids existed, show no public id.",
    )
    listing.add_argument("--db", dest="db_path", type=Path, help=db_help)
    revoke = key_commands.add_parser(
        "revoke", help="revoke a key by id", description="Revoke an API key by its id."
    )
    revoke.add_argument("id", type=int, help="key id, as shown by `keys list`")
    revoke.add_argument("--db", dest="db_path", type=Path, help=db_help)

    bench = commands.add_parser(
        "bench",
        help="run the benchmark against a temporary server",
        description="Benchmark the real server on a temporary database.",
        add_help=with_bench_arguments,
    )
    if with_bench_arguments:
        from server.bench.cli import add_bench_arguments

        add_bench_arguments(bench)
    return parser


async def _serve(settings: Settings) -> int:
    from aiohttp import web

    from server.app import create_app
    from server.constants import GIL_SWITCH_INTERVAL_SECONDS
    from server.db.sqlite.database import DatabaseInUse
    from server.http.logs import configure_logging
    from server.http.server import HardenedRunner

    configure_logging(settings.log_level)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    app = create_app(settings, bootstrap_api_key=os.environ.get("BULK_API_KEY") or None)
    runner = HardenedRunner(app, settings)
    try:
        await runner.setup()
    except DatabaseInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        _tune_gc()
        # The bound port, which differs from settings.port when that is 0 (any free port).
        port = runner.addresses[0][1] if runner.addresses else settings.port
        print(
            f"Serving on http://{settings.host}:{port}  (database {settings.db_path}, "
            f"{settings.workers} workers; Ctrl+C to stop)",
            flush=True,
        )
        await stop.wait()
        print("Shutting down: finishing current batches…", flush=True)
    finally:
        await runner.cleanup()
    return 0


def _tune_gc() -> None:
    """Everything alive once serving (modules, the app, its tables) lives as long as the
    process: move it out of the cyclic collector's view (gc.freeze), so a full
    collection does not walk it again and again — each took 20–30 ms, which every bulk
    POST in flight waited for —, and collect the youngest generation less often
    (GC_YOUNG_THRESHOLD; README, Performance, fourth wave)."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def _keys(args: argparse.Namespace) -> int:
    from server.db.sqlite.store import Store
    from server.http.auth import generate_api_key

    db_path = args.db_path or Path(os.environ.get(env_name("db_path"), DEFAULT_DB_PATH))
    store = Store(db_path)
    await store.open()
    try:
        if args.keys_command == "create":
            new = generate_api_key()
            await store.create_api_key(args.environment, new.key_hash, new.public_id)
            print(new.key)
        elif args.keys_command == "list":
            rows = await store.list_api_keys()
            print(
                f"{'id':>4}  {'public id':<14} {'environment':<16} {'created':<28} "
                f"{'last used':<28} revoked"
            )
            for r in rows:
                # Chosen (BULK_API_KEY) and pre-scheme keys have no public id: "-".
                print(
                    f"{r.id:>4}  {r.public_id or '-':<14} {r.environment:<16} "
                    f"{r.created_at:<28} {r.last_used_at or '-':<28} "
                    f"{r.revoked_at or '-'}"
                )
        else:
            if not await store.revoke_api_key(args.id):
                print(f"error: no active key with id {args.id}", file=sys.stderr)
                return EXIT_NOT_FOUND
            print(f"revoked key {args.id}")
    finally:
        await store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    # First find the command with the light parser (unknown flags tolerated), then parse for
    # real: with the bench flags only when the command is `bench`.
    command, _ = build_parser(with_bench_arguments=False).parse_known_args(argv)
    parser = build_parser(with_bench_arguments=command.command == "bench")
    args = parser.parse_args(argv)
    if args.command == "keys":
        return asyncio.run(_keys(args))
    if args.command == "bench":
        from server.bench.cli import run_bench

        return run_bench(args)
    settings = settings_from(args)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(_serve(settings))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop for serving (measured faster: README "Performance"); the standard loop when
    uvloop is missing or BULK_EVENT_LOOP=asyncio asks for it (for debugging only)."""
    if os.environ.get(EVENT_LOOP_ENV, "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())

"""server/db/port.py: the PostgreSQL skeleton in its docstring is written in the port's own
signatures (the test that another adapter fits without touching the domain), and the
SQLite adapter implements every operation of the port with the same parameters.

server/db/tx_port.py: both adapters' transactions implement every method of `Tx`, the
one interface of the shared transaction bodies (server/db/transactions.py), with the same
parameters (mypy --strict checks the types where the adapters run a body)."""

from __future__ import annotations
import __future__

import inspect
import textwrap
from typing import Any

import server.db.port as port
from server.db.port import Storage
from server.db.postgres.storage import PostgresStorage
from server.db.postgres.tx import PgTx
from server.db.sqlite.async_tx import AsyncWriteTx
from server.db.sqlite.store import Store
from server.db.tx_port import Tx

# What issue 12 needs of the skeleton at least: the claim, the fenced worker writes,
# the client-facing transactions and the sweeps.
SKELETON_MUST_HAVE = {
    "open",
    "close",
    "claim_next_request",
    "commit_batch",
    "release_request",
    "finish_request",
    "record_parse_progress",
    "finish_parsing",
    "create_records_request",
    "create_upload_request",
    "cancel_request",
    "create_retry",
    "requeue_orphans",
    "delete_expired_idempotency_keys",
    "prune_outbox",
}


def _skeleton() -> type:
    doc = port.__doc__
    assert doc is not None
    start = doc.index("    class PostgresStorage:")
    end = doc.index("\n\n", doc.index("# and every read of `Storage`"))
    source = textwrap.dedent(doc[start:end])
    namespace: dict[str, Any] = {}
    # Annotations stay text, as in server/db/port.py, so they compare as written.
    flags = __future__.annotations.compiler_flag
    code = compile(source, "<port docstring>", "exec", flags=flags)
    exec(code, vars(port).copy(), namespace)
    skeleton: type = namespace["PostgresStorage"]
    return skeleton


def _operations(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if inspect.iscoroutinefunction(member)
    }


def test_the_postgresql_skeleton_is_written_in_the_ports_own_signatures() -> None:
    skeleton = _operations(_skeleton())
    assert skeleton.keys() >= SKELETON_MUST_HAVE
    ports = _operations(Storage)
    for name, signature in skeleton.items():
        assert name in ports, f"the skeleton's {name} is not an operation of the port"
        assert str(signature) == str(ports[name]), name


def _shape(signature: inspect.Signature) -> list[tuple[str, Any, Any]]:
    # Names, kinds and defaults: the types are mypy's to check (server/app.py binds the
    # Store to a `Storage` variable, so `mypy --strict server` compares them).
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


def test_the_sqlite_adapter_implements_every_operation_with_the_same_parameters() -> None:
    for name, signature in _operations(Storage).items():
        implementation = getattr(Store, name)
        assert inspect.iscoroutinefunction(implementation), name
        assert _shape(inspect.signature(implementation)) == _shape(signature), name


def test_the_postgresql_adapter_implements_every_operation_with_the_same_parameters() -> None:
    for name, signature in _operations(Storage).items():
        implementation = getattr(PostgresStorage, name)
        assert inspect.iscoroutinefunction(implementation), name
        assert _shape(inspect.signature(implementation)) == _shape(signature), name


def _tx_mismatches(cls: type) -> list[str]:
    """The methods of `Tx` that `cls` lacks, does not make a coroutine, or takes other
    parameters for."""
    return [
        name
        for name, signature in _operations(Tx).items()
        if not _implements(getattr(cls, name, None), signature)
    ]


def _implements(implementation: Any, signature: inspect.Signature) -> bool:
    return inspect.iscoroutinefunction(implementation) and _shape(
        inspect.signature(implementation)
    ) == _shape(signature)


def test_both_transactions_implement_every_method_of_tx_with_the_same_parameters() -> None:
    assert len(_operations(Tx)) > 30  # the statements of every write operation
    assert _tx_mismatches(AsyncWriteTx) == []
    assert _tx_mismatches(PgTx) == []


def test_the_tx_check_names_a_missing_a_blocking_and_a_different_method() -> None:
    class Mismatched:
        async def emit(self) -> None:  # other parameters
            pass

        def lock_request(self, request_id: int) -> None:  # not a coroutine
            pass

    wrong = _tx_mismatches(Mismatched)
    assert {"emit", "lock_request", "insert_chunk"} <= set(wrong)
    assert len(wrong) == len(_operations(Tx))

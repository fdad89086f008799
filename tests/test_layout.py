"""The package layout (README "Design"): layers import downwards only, no import cycle, and
serving never loads the benchmark."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "server"

# Which top-level parts of server/ a layer may not import. Upper layers are the HTTP side
# (server.api handlers, server.http middlewares and server.app wiring them), then the jobs
# and the domain modules at the root, then storage (server.db: the port and its adapters)
# and the pure parsers (server.ingest). The benchmark is a client of the whole server and
# nothing imports it.
FORBIDDEN = {
    "server.ingest": {"server.api", "server.http", "server.app", "server.jobs", "server.db"},
    "server.db": {"server.api", "server.http", "server.app", "server.jobs"},
    "server.jobs": {"server.api", "server.http", "server.app"},
    "server.api": {"server.app"},
    "server.webhooks": {"server.api", "server.http", "server.app", "server.jobs"},
}


def _modules() -> list[str]:
    names = []
    for path in sorted(SERVER.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_downwards_only(layer: str) -> None:
    wrong = []
    for path in sorted(SERVER.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if not _is_under(module, layer):
            continue
        for imported in _imports(path):
            if any(_is_under(imported, banned) for banned in FORBIDDEN[layer]):
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


# The storage adapter is chosen in one place: the domain, the jobs and the handlers name
# the port (server/db/port.py) only. The app wires the adapter in, the benchmark writes
# SQLite's ceiling with it; run.py and tests (outside server/) may use it too. An
# adapter never imports another one.
ADAPTERS = ("server.db.sqlite", "server.db.postgres")
MAY_IMPORT_AN_ADAPTER = ("server.app", "server.bench")


def _adapter_imports(modules: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} imports {imported}"
        for module, imports in sorted(modules.items())
        if not any(_is_under(module, allowed) for allowed in MAY_IMPORT_AN_ADAPTER)
        for imported in sorted(imports)
        for adapter in ADAPTERS
        if _is_under(imported, adapter) and not _is_under(module, adapter)
    ]


def test_only_the_composition_root_imports_the_storage_adapter() -> None:
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts): _imports(path)
        for path in sorted(SERVER.rglob("*.py"))
    }
    assert "server.db.port" in modules
    assert _adapter_imports(modules) == []
    # The rule does catch one: a domain module reaching for the adapter.
    injected = {**modules, "server.jobs.worker": {"server.db.sqlite.store"}}
    assert _adapter_imports(injected) == ["server.jobs.worker imports server.db.sqlite.store"]
    across = {**modules, "server.db.postgres.queries": {"server.db.sqlite.queries"}}
    assert _adapter_imports(across) == [
        "server.db.postgres.queries imports server.db.sqlite.queries"
    ]


def test_only_run_py_and_the_benchmark_import_the_benchmark() -> None:
    wrong = [
        f"{path} imports {imported}"
        for path in sorted(SERVER.rglob("*.py"))
        if "bench" not in path.relative_to(SERVER).parts
        for imported in _imports(path)
        if _is_under(imported, "server.bench")
    ]
    assert wrong == []


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """An import cycle fails when one of its modules is imported first: try each first."""
    program = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {_modules()!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'server' or m.startswith('server.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as exc:\n"
        "        failed.append(f'{name}: {exc}')\n"
        "print('\\n'.join(failed))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_serving_and_key_commands_never_load_the_benchmark(tmp_path: Path) -> None:
    program = (
        "import sys, run\n"
        "import server.app\n"
        f"run.main(['keys', 'list', '--db', {str(tmp_path / 'k.db')!r}])\n"
        "run.build_parser(with_bench_arguments=False).parse_args(['serve'])\n"
        "print('LOADED', sorted(m for m in sys.modules if m.startswith('server.bench')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "LOADED []"

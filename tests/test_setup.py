"""A newcomer's set-up: the README's commands and CI take one path, with or without sudo.

`scripts/install-test-deps.sh` is run for real, with stand-ins for `id`, `sudo` and
`apt-get` (and PostgreSQL's tools where a case has them) on an otherwise empty PATH, so
each case (root, a user with sudo, a user without, no apt-get) is tried without touching
this machine's packages.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install-test-deps.sh"
INSTALL = "sh scripts/install-test-deps.sh"
TEST_COMMAND = "python -m pytest -n 2 --dist worksteal"

# apt-get stand-in: logs its call (and DEBIAN_FRONTEND for installs), "installs" the
# packages asked for: Chromium at $CHROMIUM, PostgreSQL's tools in a Debian-like bin dir.
APT_GET = """#!/bin/sh
echo "apt-get $* ${DEBIAN_FRONTEND:-}" >> "$LOG"
[ "${APT_FAILS:-}" = "$1" ] && exit 100
if [ "$1" = install ] && [ -z "${APT_INSTALLS_NOTHING:-}" ]; then
    for package in "$@"; do
        case "$package" in
            chromium) : > "$CHROMIUM" && /bin/chmod +x "$CHROMIUM" ;;
            postgresql) /bin/mkdir -p "$POSTGRES_LIB/15/bin" && for tool in initdb pg_ctl; do
                : > "$POSTGRES_LIB/15/bin/$tool" && /bin/chmod +x "$POSTGRES_LIB/15/bin/$tool"
            done ;;
        esac
    done
fi
exit 0
"""
SUDO = """#!/bin/sh
echo "sudo $*" >> "$LOG"
exec "$@"
"""
ID = """#!/bin/sh
echo "$FAKE_UID"
"""


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    calls: list[str]
    installed: bool  # Chromium
    postgres_installed: bool


def run_script(
    tmp_path: Path,
    *,
    uid: int,
    sudo: bool = False,
    apt_get: bool = True,
    chromium_present: bool = False,
    postgres_present: bool = True,
    postgres_on_path: bool = False,
    env: dict[str, str] | None = None,
) -> Outcome:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = (
        {"id": ID} | ({"apt-get": APT_GET} if apt_get else {}) | ({"sudo": SUDO} if sudo else {})
    )
    for name, text in stubs.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "env").symlink_to("/usr/bin/env")
    chromium = tmp_path / "chromium"
    if chromium_present:
        chromium.write_text("#!/bin/sh\n")
        chromium.chmod(0o755)
    postgres_lib = tmp_path / "postgresql"
    postgres_bin = postgres_lib / "13" / "bin"
    if postgres_present or postgres_on_path:
        tools_dir = bin_dir if postgres_on_path else postgres_bin
        tools_dir.mkdir(parents=True, exist_ok=True)
        for tool in ("initdb", "pg_ctl"):
            (tools_dir / tool).write_text("#!/bin/sh\n")
            (tools_dir / tool).chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    result = subprocess.run(
        ["/bin/sh", str(SCRIPT)],
        cwd=ROOT,
        env={
            "PATH": str(bin_dir),
            "FAKE_UID": str(uid),
            "LOG": str(log),
            "CHROMIUM": str(chromium),
            "INSTALL_TEST_DEPS_CHROMIUM": str(chromium),
            "POSTGRES_LIB": str(postgres_lib),
            "INSTALL_TEST_DEPS_POSTGRES_BIN_GLOB": str(postgres_lib / "*" / "bin"),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    calls = [line.strip() for line in log.read_text().splitlines()]
    postgres_installed = any(
        os.access(directory / "initdb", os.X_OK) and os.access(directory / "pg_ctl", os.X_OK)
        for directory in postgres_lib.glob("*/bin")
    )
    return Outcome(
        result.returncode,
        result.stdout,
        result.stderr,
        calls,
        os.access(chromium, os.X_OK),
        postgres_installed,
    )


def test_as_root_without_sudo_apt_get_runs_directly(tmp_path: Path) -> None:
    outcome = run_script(tmp_path, uid=0, sudo=False)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.calls == ["apt-get update", "apt-get install -y chromium noninteractive"]
    assert outcome.installed


def test_as_root_with_sudo_installed_sudo_is_not_used(tmp_path: Path) -> None:
    outcome = run_script(tmp_path, uid=0, sudo=True)
    assert outcome.returncode == 0, outcome.stderr
    assert not [call for call in outcome.calls if call.startswith("sudo")]


def test_as_a_user_with_sudo_apt_get_runs_through_sudo(tmp_path: Path) -> None:
    outcome = run_script(tmp_path, uid=1000, sudo=True)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.calls == [
        "sudo apt-get update",
        "apt-get update",
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium",
        "apt-get install -y chromium noninteractive",
    ]
    assert outcome.installed


def test_as_a_user_without_sudo_it_fails_clearly_and_runs_nothing(tmp_path: Path) -> None:
    outcome = run_script(tmp_path, uid=1000, sudo=False)
    assert outcome.returncode == 1
    assert "needs root" in outcome.stderr
    assert "sudo is not installed" in outcome.stderr
    assert outcome.calls == []


@pytest.mark.parametrize(("uid", "sudo", "apt_get"), [(0, False, True), (1000, False, False)])
def test_nothing_happens_when_chromium_is_there(
    tmp_path: Path, uid: int, sudo: bool, apt_get: bool
) -> None:
    outcome = run_script(tmp_path, uid=uid, sudo=sudo, apt_get=apt_get, chromium_present=True)
    assert outcome.returncode == 0, outcome.stderr
    assert "nothing to do" in outcome.stdout
    assert outcome.calls == []


def test_without_apt_get_it_fails_clearly(tmp_path: Path) -> None:
    outcome = run_script(tmp_path, uid=0, apt_get=False)
    assert outcome.returncode == 1
    assert "no apt-get" in outcome.stderr
    assert "install Chromium" in outcome.stderr


def test_a_failed_update_stops_before_installing(tmp_path: Path) -> None:
    outcome = run_script(tmp_path, uid=0, env={"APT_FAILS": "update"})
    assert outcome.returncode == 100
    assert outcome.calls == ["apt-get update"]


def test_an_install_that_leaves_no_chromium_fails(tmp_path: Path) -> None:
    outcome = run_script(tmp_path, uid=0, env={"APT_INSTALLS_NOTHING": "1"})
    assert outcome.returncode == 1
    assert "still missing" in outcome.stderr


def test_as_root_both_missing_are_installed_in_one_apt_get(tmp_path: Path) -> None:
    outcome = run_script(tmp_path, uid=0, postgres_present=False)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.calls == [
        "apt-get update",
        "apt-get install -y chromium postgresql noninteractive",
    ]
    assert outcome.installed
    assert outcome.postgres_installed


def test_only_postgresql_missing_installs_only_postgresql(tmp_path: Path) -> None:
    outcome = run_script(tmp_path, uid=0, chromium_present=True, postgres_present=False)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.calls == ["apt-get update", "apt-get install -y postgresql noninteractive"]
    assert outcome.postgres_installed
    assert "PostgreSQL's initdb and pg_ctl missing" in outcome.stdout


def test_as_a_user_with_sudo_postgresql_is_installed_through_sudo(tmp_path: Path) -> None:
    outcome = run_script(
        tmp_path, uid=1000, sudo=True, chromium_present=True, postgres_present=False
    )
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.calls == [
        "sudo apt-get update",
        "apt-get update",
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql",
        "apt-get install -y postgresql noninteractive",
    ]


def test_postgresql_tools_on_path_count_as_installed(tmp_path: Path) -> None:
    outcome = run_script(
        tmp_path, uid=0, chromium_present=True, postgres_present=False, postgres_on_path=True
    )
    assert outcome.returncode == 0, outcome.stderr
    assert "nothing to do" in outcome.stdout
    assert outcome.calls == []


def test_as_a_user_without_sudo_missing_postgresql_fails_clearly(tmp_path: Path) -> None:
    outcome = run_script(
        tmp_path, uid=1000, sudo=False, chromium_present=True, postgres_present=False
    )
    assert outcome.returncode == 1
    assert "sudo is not installed" in outcome.stderr
    assert "apt-get install -y postgresql" in outcome.stderr
    assert outcome.calls == []


def test_without_apt_get_missing_postgresql_fails_clearly(tmp_path: Path) -> None:
    outcome = run_script(
        tmp_path, uid=0, apt_get=False, chromium_present=True, postgres_present=False
    )
    assert outcome.returncode == 1
    assert "no apt-get" in outcome.stderr
    assert "install PostgreSQL" in outcome.stderr
    assert "install Chromium" not in outcome.stderr


def test_an_install_that_leaves_no_postgresql_fails(tmp_path: Path) -> None:
    outcome = run_script(
        tmp_path,
        uid=0,
        chromium_present=True,
        postgres_present=False,
        env={"APT_INSTALLS_NOTHING": "1"},
    )
    assert outcome.returncode == 1
    assert "initdb and pg_ctl are still missing" in outcome.stderr


def readme_commands() -> list[str]:
    """The README's first two code blocks: the serve command and the test command."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    return [block.strip() for block in blocks[:2]]


def ci_commands() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_readme_commands_need_no_sudo_and_ci_takes_the_same_path() -> None:
    serve, test = readme_commands()
    assert serve.endswith("python run.py")
    assert "sudo" not in serve + test
    steps = test.split(" && ")
    assert steps[0] == INSTALL
    # Two pytest-xdist workers (README, Tests): the whole suite in under ~10 minutes.
    assert steps[-1] == TEST_COMMAND
    assert os.access(SCRIPT, os.X_OK)
    ci = ci_commands()
    assert INSTALL in ci
    assert "sudo" not in " ".join(ci)
    # Lint, format and types before the tests; the tests exactly as the README runs them.
    checks = ["ruff check .", "ruff format --check .", "mypy --strict server"]
    assert [command for command in ci if command in checks] == checks
    assert ci.index(INSTALL) < ci.index(checks[0])
    assert ci[-1] == TEST_COMMAND


def test_mypy_is_installed_with_the_test_extras() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(re.match(r"mypy\b", requirement) for requirement in extras["test"])

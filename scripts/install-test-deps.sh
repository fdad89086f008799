#!/bin/sh
# What the test suite needs outside Python: Debian's Chromium at /usr/bin/chromium, which
# the browser test drives through Playwright (it never downloads a browser), and
# PostgreSQL's initdb and pg_ctl (Debian's postgresql: /usr/lib/postgresql/*/bin, or on
# PATH), with which the PostgreSQL tests start a throwaway cluster of their own
# (tests/pg_cluster.py). Installs what is missing, and only that, with apt-get: directly
# as root (a container, CI), through sudo as a normal user. The README's test command and
# .ci/run both start with this script.
#
# INSTALL_TEST_DEPS_CHROMIUM and INSTALL_TEST_DEPS_POSTGRES_BIN_GLOB override the paths
# checked, for this script's own tests.
set -eu

chromium="${INSTALL_TEST_DEPS_CHROMIUM:-/usr/bin/chromium}"
postgres_bin_glob="${INSTALL_TEST_DEPS_POSTGRES_BIN_GLOB:-/usr/lib/postgresql/*/bin}"
me="scripts/install-test-deps.sh"

have_postgres() {
    # The glob is expanded here, unquoted on purpose; unmatched, it stays literal and fails.
    for dir in $postgres_bin_glob; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            return 0
        fi
    done
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1
}

# What is missing, as Debian package names, and in words for the messages.
packages=""
what=""
if [ ! -x "$chromium" ]; then
    packages="chromium"
    what="$chromium"
fi
if ! have_postgres; then
    packages="${packages:+$packages }postgresql"
    what="${what:+$what and }PostgreSQL's initdb and pg_ctl"
fi

if [ -z "$packages" ]; then
    echo "$me: $chromium and PostgreSQL's initdb and pg_ctl are installed; nothing to do"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "$me: $what missing and this is not a Debian-like system (no apt-get):" >&2
    case "$packages" in *chromium*)
        echo "$me: install Chromium so that $chromium exists" >&2 ;;
    esac
    case "$packages" in *postgresql*)
        echo "$me: install PostgreSQL (13 or newer) so that initdb and pg_ctl are on PATH" >&2 ;;
    esac
    echo "$me: then run the tests again" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo"
else
    echo "$me: $what missing; installing needs root, and sudo is not installed:" >&2
    echo "$me: run this script as root, or install sudo, or: apt-get install -y $packages" >&2
    exit 1
fi

echo "$me: $what missing; installing Debian's $packages with ${as_root:+sudo }apt-get"
$as_root apt-get update
# $packages unquoted: one word per package.
# shellcheck disable=SC2086
$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y $packages

if [ ! -x "$chromium" ]; then
    echo "$me: apt-get finished but $chromium is still missing" >&2
    exit 1
fi
if ! have_postgres; then
    echo "$me: apt-get finished but PostgreSQL's initdb and pg_ctl are still missing" >&2
    exit 1
fi

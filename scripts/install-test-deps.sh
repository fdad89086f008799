#!/bin/sh
# What the test suite needs outside Python: Debian's Chromium at /usr/bin/chromium, which
# the browser test drives through Playwright (it never downloads a browser). Installs it
# only when it is missing, with apt-get: directly as root (a container, CI), through sudo
# as a normal user. The README's test command and .ci/run both start with this script.
#
# INSTALL_TEST_DEPS_CHROMIUM overrides the path checked, for this script's own tests.
set -eu

chromium="${INSTALL_TEST_DEPS_CHROMIUM:-/usr/bin/chromium}"
me="scripts/install-test-deps.sh"

if [ -x "$chromium" ]; then
    echo "$me: $chromium is installed; nothing to do"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "$me: $chromium is missing and this is not a Debian-like system (no apt-get):" >&2
    echo "$me: install Chromium so that $chromium exists, then run the tests again" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo"
else
    echo "$me: $chromium is missing; installing it needs root, and sudo is not installed:" >&2
    echo "$me: run this script as root, or install sudo, or: apt-get install -y chromium" >&2
    exit 1
fi

echo "$me: $chromium is missing; installing Debian's chromium with ${as_root:+sudo }apt-get"
$as_root apt-get update
$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

if [ ! -x "$chromium" ]; then
    echo "$me: apt-get finished but $chromium is still missing" >&2
    exit 1
fi

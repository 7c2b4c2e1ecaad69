#!/usr/bin/env bash
# The system packages the test suite drives for real, beyond what pip installs from the
# test extra: Debian's Chromium, which tests/browser.py runs headless through playwright
# (no browser is downloaded: `playwright install` is never run).
#
# Idempotent and quiet: does nothing when /usr/bin/chromium is there; otherwise installs it
# with apt (as root, or through sudo) and fails loudly when it cannot.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-system-deps: $CHROMIUM is missing and there is no apt-get here;" \
        "install Chromium so that $CHROMIUM runs it" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "install-test-system-deps: installing chromium needs root (or sudo)" >&2
    exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { "${as_root[@]}" apt-get update -qq \
        && "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
        >"$log" 2>&1; then
    cat "$log" >&2
    echo "install-test-system-deps: apt-get could not install chromium" >&2
    exit 1
fi

if ! [ -x "$CHROMIUM" ]; then
    echo "install-test-system-deps: chromium installed but $CHROMIUM is missing" >&2
    exit 1
fi

#!/bin/sh
# Install the official SDK clients used by the tests/sdk drivers.
#
#   tests/sdk/install.sh DIR
#
# creates DIR/venv (Python: segment-analytics-python, rudder-sdk-python,
# facebook-business from requirements.txt) and DIR/node/node_modules
# (@segment/analytics-node, @rudderstack/rudder-sdk-node from package-lock.json).
# Idempotent: prints nothing on stdout when already installed (installer
# chatter goes to stderr); reinstalls a part when its pin file changed.
# Needs python3 with the venv module (Debian: apt-get install python3-venv)
# and node >= 20 with npm; pip and npm must reach their registries.
#
# Then run the drivers as
#   DIR/venv/bin/python tests/sdk/segment_python.py BASE_URL WRITE_KEY SITE_KEY < events.json
#   NODE_PATH=DIR/node/node_modules node tests/sdk/segment_node.js BASE_URL WRITE_KEY SITE_KEY < events.json
set -eu

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
PYTHON=${PYTHON:-python3}

# serialize concurrent installs into the same DIR (parallel test threads)
if command -v flock >/dev/null 2>&1; then
    exec 9>"$DIR/.install.lock"
    flock 9
fi

# Python clients
if ! cmp -s "$HERE/requirements.txt" "$DIR/venv/.installed-requirements.txt"; then
    if ! "$PYTHON" -m venv --clear "$DIR/venv" >&2; then
        echo "install.sh: '$PYTHON -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2
        exit 1
    fi
    "$DIR/venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        -r "$HERE/requirements.txt" >&2
    cp "$HERE/requirements.txt" "$DIR/venv/.installed-requirements.txt"
fi

# Node clients (optional deps skipped: bull/ioredis/msgpackr serve only the
# Rudder SDK's Redis persistence queue, which the drivers do not use)
if ! cmp -s "$HERE/package-lock.json" "$DIR/node/.installed-package-lock.json"; then
    command -v npm >/dev/null 2>&1 || { echo "install.sh: npm not found (need node >= 20 and npm)" >&2; exit 1; }
    mkdir -p "$DIR/node"
    cp "$HERE/package.json" "$HERE/package-lock.json" "$DIR/node/"
    (cd "$DIR/node" && npm ci --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error) >&2
    cp "$HERE/package-lock.json" "$DIR/node/.installed-package-lock.json"
fi

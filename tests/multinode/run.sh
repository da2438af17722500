#!/usr/bin/env bash
# Boots the multi-node guests and runs tests/multinode inside them (see docs/multinode.md).
#   tests/multinode/run.sh                      # every layout, one boot each
#   tests/multinode/run.sh --layout B -- -k interleave
# Options are those of tests/multinode/guest.py (--help). Uses the `python` on PATH, or $PYTHON.
set -u
here=$(cd "$(dirname "$0")" && pwd)
exec "${PYTHON:-python3}" "$here/guest.py" "$@"

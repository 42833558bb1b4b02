#!/usr/bin/env bash
# Run a pytest selection inside the loopback-only network sandbox, under strace, and fail if
# any process of the run tried to reach an address outside loopback.
#
#   scripts/check_loopback.sh [PYTEST ARGS...]        (default: tests)
#   e.g. scripts/check_loopback.sh tests/infra -m "slurm or ray"
#
# Steps: install missing system packages (outside the sandbox: apt needs the network), then
#   netns_sandbox.sh  check_connects.sh  python -m pytest ARGS
# The whole pytest process runs inside the sandbox, so the SLURM daemons and Ray processes
# that conftest.py starts live in the sandbox too (see scripts/README.md).
#
# Environment: PYTHON (default: .venv/bin/python of this checkout), LOOPBACK_TRACE (keep the
# strace output in this file). Exit status: pytest's, or 3 when a non-loopback destination
# was seen (listed on stderr), or 2 when tracing was impossible.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[[ $# -gt 0 ]] || set -- tests

"$HERE/install_system_deps.sh" >/dev/null
trace_opts=()
[[ -z "${LOOPBACK_TRACE:-}" ]] || trace_opts=(-o "$LOOPBACK_TRACE")
exec "$HERE/netns_sandbox.sh" "$HERE/check_connects.sh" "${trace_opts[@]}" -- \
  "$PYTHON" -m pytest "$@"

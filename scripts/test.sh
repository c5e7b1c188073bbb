#!/usr/bin/env bash
# THE test command (README, .ci/run): install what is missing, start the host dockerd, build the
# environment image, lint, then run the whole test suite. Arguments go to pytest, e.g.
#   ./scripts/test.sh tests/hubcontrol -k names
# Artefacts (JUnit XML, screenshots, logs of failed tests) land in test-artifacts/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root "$@"
cd "$ROOT"

step() {
	local t0 rc=0
	t0=$(date +%s.%N)
	say "$*"
	"$@" || rc=$?
	note "($1: $(elapsed "$t0") s, exit $rc)"
	return "$rc"
}

step ./scripts/setup-host.sh
step ./scripts/start-host-dockerd.sh
step ./scripts/install-test-deps.sh
# Where the system's Node.js is older than 20 (Debian 12), the private Node.js 20 that
# install-test-deps.sh installed runs the tests' node processes (configurable-http-proxy needs 20).
use_node20
step ./scripts/build-image.sh
# JupyterLab from PyPI on that image (tests/e2e/test_jupyter_browser.py; skipped when unchanged)
step ./scripts/build-jupyter-image.sh
# the Debian 12 systemd image tests/systemd boots (cached; rebuilt when its recipe changes)
step ./scripts/build-systemd-image.sh
# Lint failures fail the run, but only after the tests: both results are worth seeing at once.
lint=0
step .venv/bin/ruff check . || lint=$?

ARTIFACTS="$ROOT/test-artifacts"
rm -rf "$ARTIFACTS"
mkdir -p "$ARTIFACTS"
export HUB_TEST_ARTIFACTS="$ARTIFACTS"
# Chromium, the hub and docker all live on this machine; no proxy may get between them.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY

say "pytest (warnings are errors, per-test timeouts: pyproject.toml)"
t0=$(date +%s.%N)
rc=0
# A fresh base temp dir per run: pytest's own rotation under /tmp/pytest-of-root fails (and warns,
# which is an error here) when an earlier run on this machine left a directory it cannot remove.
BASETEMP=$(mktemp -d /tmp/hub-tests.XXXXXX)
# A run killed before its cleanup (SIGKILL, a session's end) leaves its per-user dockerds' data
# directories mounted (dockerd unmounts them only on a clean exit); unmount those whose daemon is
# gone, under test tmp dirs only (tests/support/leaks.py), so this run starts from a clean host.
.venv/bin/python -m tests.support.leaks --sweep || warn "could not unmount stale test mounts"
.venv/bin/pytest --basetemp="$BASETEMP" --junitxml="$ARTIFACTS/junit.xml" -o junit_family=xunit2 \
	--durations=15 "$@" || rc=$?
# Tests unmount what they mount; a directory something is still mounted under is kept to inspect.
grep -q " $BASETEMP" /proc/self/mountinfo || rm -rf "$BASETEMP"
note "(pytest: $(elapsed "$t0") s, exit $rc)"
# The host daemon's log, when these scripts started it, helps explain a failed docker test.
cp "$LOG_DIR/host-dockerd.log" "$ARTIFACTS/" 2>/dev/null || true
case $rc in
0) ;;
5) die "pytest collected no tests: that is a failure, not a pass" ;;
*) die "tests failed (pytest exit $rc); artefacts in $ARTIFACTS" ;;
esac
((lint == 0)) || die "tests passed, but \`ruff check .\` found problems (above)"
say "all tests passed and the code is lint-clean ($(script_elapsed) s in all)"

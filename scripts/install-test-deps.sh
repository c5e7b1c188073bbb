#!/usr/bin/env bash
# Install what the tests and benchmarks need beyond scripts/setup-host.sh, idempotently:
#   Debian: chromium (driven by PyPI playwright with executable_path=/usr/bin/chromium; we never run
#           `playwright install`), nginx-light and wrk (benchmark baselines and load),
#           docker-compose (compose through the docker-socket policy) and docker-registry (a real
#           local registry for the pull and audit tests; its service is not left enabled);
#           logrotate comes with scripts/setup-host.sh (the hub needs it at run time);
#   npm:    tests/support/oidc  -> oidc-provider (a real OIDC provider for login tests, quick start)
#           bench               -> configurable-http-proxy (benchmark baseline)
# each from its committed package-lock.json (`npm ci`), re-installed only when the lock changes.
#
#   --oidc-only   only the OIDC provider (what scripts/quickstart.sh needs)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root "$@"

oidc_only=""
[[ ${1:-} == --oidc-only ]] && oidc_only=1

# configurable-http-proxy 5.3.0 (bench/, and the benchmark smoke tests) needs Node.js >= 20.
# oidc-provider 8.8.1 alone (the quick start) runs on Debian 12's own nodejs 18.20.4 (verified
# in a debootstrap'd bookworm: discovery and the login form), so the README's first command
# works on a minimal Debian 12 with what apt offers there.
NODE_MAJOR_MIN=20
[[ -n $oidc_only ]] && NODE_MAJOR_MIN=18

ensure_node() {
	if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
		apt_install nodejs npm
	fi
	local major
	major=$(node -p 'process.versions.node.split(".")[0]')
	((major >= NODE_MAJOR_MIN)) ||
		die "Node.js $(node --version) is too old: $([[ -n $oidc_only ]] && echo oidc-provider || echo "the tests' configurable-http-proxy") needs Node.js >= $NODE_MAJOR_MIN (Debian 12 ships 18: install Node.js 20 from another source, e.g. NodeSource's nodejs package, then run this again)"
}

# npm ci in DIR unless node_modules was installed from the same lock file.
npm_install() {
	local dir=$1 stamp want
	stamp="$dir/node_modules/.rediacc-installed"
	want=$(hash_files "$dir/package.json" "$dir/package-lock.json")
	if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
		note "npm packages up to date: ${dir#"$ROOT"/}"
		return
	fi
	say "npm ci in ${dir#"$ROOT"/}"
	npm ci --no-audit --no-fund --loglevel=error --prefix "$dir" >/dev/null
	echo "$want" >"$stamp"
}

if [[ -z $oidc_only ]]; then
	# docker-compose: compose through the docker-socket policy; docker-registry: pull/push audit tests
	had_registry=""
	debs_installed docker-registry && had_registry=1
	apt_install chromium nginx-light wrk docker-compose docker-registry
	# Tests start their own registry on a free port; the package's service is not ours to run.
	if [[ -z $had_registry && $(cat /proc/1/comm 2>/dev/null) == systemd ]]; then
		systemctl disable --now docker-registry >/dev/null 2>&1 || true
	fi
fi
ensure_node
npm_install "$ROOT/tests/support/oidc"
if [[ -z $oidc_only ]]; then
	npm_install "$ROOT/bench"
	"$ROOT/.venv/bin/python" -c 'import playwright' 2>/dev/null ||
		die "PyPI playwright missing from .venv: run scripts/setup-host.sh"
fi
say "test dependencies ready ($(script_elapsed) s)"

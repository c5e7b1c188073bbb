# Shared helpers for the scripts in this directory. Sourced, never run.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT

# Where the host-side pieces live; the same paths on a developer's machine and in CI.
CRIU_PREFIX=${REDIACC_CRIU_PREFIX:-/opt/rediacc/criu}
HOST_DOCKER_SOCK=/var/run/docker.sock
LOG_DIR=/var/log/rediacc
ENV_IMAGE=rediacc-hub/env:latest
# The tests' Node.js where the system's is older than 20 (Debian 12 ships 18): a private copy from
# the npm registry (scripts/node20, installed by install-test-deps.sh); /usr/bin/node is left alone.
NODE20_PREFIX=${REDIACC_NODE20_PREFIX:-/opt/rediacc/node20}

_t0_script=$(date +%s.%N)

say() { printf '==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
	printf 'ERROR: %s\n' "$*" >&2
	exit 1
}

require_root() {
	[[ $(id -u) -eq 0 ]] || die "$(basename "$0") must run as root: log in as root (or \`su -\`) and run $0 $*"
}

# elapsed SINCE -> seconds with one decimal
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
script_elapsed() { elapsed "$_t0_script"; }

# True when every named Debian package is installed.
debs_installed() {
	local p status
	for p in "$@"; do
		status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) || return 1
		[[ $status == installed ]] || return 1
	done
}

# Install the Debian packages that are missing; `apt-get update` at most once per run of a script.
_apt_updated=""
apt_install() {
	local missing=() p
	for p in "$@"; do
		debs_installed "$p" || missing+=("$p")
	done
	if ((${#missing[@]} == 0)); then
		note "Debian packages present: $*"
		return 0
	fi
	say "apt-get install ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	if [[ -z $_apt_updated ]]; then
		apt-get update -qq
		_apt_updated=1
	fi
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# True when the host dockerd answers GET /_ping on SOCKET (default: the host socket).
docker_ping() {
	local sock=${1:-$HOST_DOCKER_SOCK}
	[[ -S $sock ]] || return 1
	[[ $(curl -fsS --max-time 2 --unix-socket "$sock" http://docker/_ping 2>/dev/null) == OK ]]
}

# Content hash of files (their bytes, in order; not their paths), for "is this already done?" stamps.
hash_files() {
	local f
	for f in "$@"; do sha256sum <"$f"; done | sha256sum | cut -c1-16
}

# PATH without the private Node.js 20's directory.
path_without_node20() {
	tr ':' '\n' <<<"$PATH" | grep -vxF "$NODE20_PREFIX/bin" | paste -sd:
}

# Major version of the system's `node` (the one on PATH, leaving out the private Node.js 20);
# 0 when there is none.
system_node_major() {
	PATH=$(path_without_node20) node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0
}

# Put the private Node.js 20 first on this script's PATH when it is installed and the system's
# node is missing or older than 20 (node, npm, and `#!/usr/bin/env node` scripts then run it).
use_node20() {
	[[ -x $NODE20_PREFIX/bin/node ]] || return 0
	(($(system_node_major) < 20)) || return 0
	PATH="$NODE20_PREFIX/bin:$(path_without_node20)"
	export PATH
}

#!/usr/bin/env bash
# Install what the hub and its development need on a Debian 12 host, idempotently. Safe to re-run;
# it only does what is missing and says what it did.
#
# The host's run-time prerequisites (Debian packages, CRIU 4.2.1 in /opt/rediacc/criu,
# /etc/criu/runc.conf, kernel.io_uring_disabled) are the product's own job: this script makes the
# project's Python venv and then runs `hub install --setup-host` from it (hubcontrol/hostsetup.py,
# the one implementation; an operator without a checkout runs the same command). Beside that it
# installs what only development needs: busybox-static and debootstrap (test and environment
# images), curl (the scripts' docker pings) and python3-venv.
#
# CRIU comes from ../shared/vendor/criu when that directory exists (CRIU_VENDOR_DIR overrides it;
# passed as --criu-debs), otherwise `hub install --setup-host` fetches the same pinned Debian
# packages from this host's mirror; either way they are checked against the pinned SHA-256 sums.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root "$@"

VENDOR_DIR="${CRIU_VENDOR_DIR:-$ROOT/../shared/vendor/criu}"

install_venv() {
	local venv="$ROOT/.venv" stamp want
	stamp="$venv/.rediacc-installed"
	want=$(hash_files "$ROOT/pyproject.toml")
	if [[ -x $venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]] &&
		"$venv/bin/python" -c 'import hubcontrol, hubproxy, hubcli, pytest' 2>/dev/null; then
		note "Python venv up to date: $venv"
		return
	fi
	if [[ ! -x $venv/bin/python ]]; then
		say "creating the Python venv $venv"
		python3 -m venv "$venv"
	fi
	local log="$LOG_DIR/pip-install.log"
	mkdir -p "$LOG_DIR"
	say "pip install -e '.[test]' into $venv (log: $log)"
	{
		"$venv/bin/python" -m pip install --upgrade pip &&
			(cd "$ROOT" && "$venv/bin/python" -m pip install -e '.[test]')
	} >"$log" 2>&1 || {
		tail -n 30 "$log" >&2
		die "pip install failed (full log: $log)"
	}
	echo "$want" >"$stamp"
}

install_dev_packages() {
	# busybox-static: tiny test images; debootstrap: the environment image; curl: docker pings
	# in these scripts; python3-venv: the venv below. The hub's own run-time packages come with
	# `hub install --setup-host`.
	apt_install ca-certificates curl busybox-static debootstrap python3 python3-venv
}

install_dev_packages
install_venv
criu_args=()
[[ -d $VENDOR_DIR ]] && criu_args=(--criu-debs "$VENDOR_DIR")
say "hub install --setup-host ${criu_args[*]}"
"$ROOT/.venv/bin/hub" install --setup-host "${criu_args[@]}"
say "host ready ($(script_elapsed) s)"

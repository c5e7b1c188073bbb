#!/usr/bin/env bash
# Install what the hub needs on a Debian 12 host, idempotently: Debian packages, CRIU 4.2.1 in a
# private prefix, /etc/criu/runc.conf, and the project's Python venv. Safe to re-run; it only does
# what is missing and says what it did.
#
# CRIU comes from ../shared/vendor/criu when that directory exists (checked against
# scripts/criu.sha256sums), otherwise the same pinned Debian packages (scripts/criu.packages) are
# fetched with `apt-get download` through a private apt configuration and checked against the same
# sums. They are unpacked into /opt/rediacc/criu, never into /: they include another release's libc.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root "$@"

VENDOR_DIR="${CRIU_VENDOR_DIR:-$ROOT/../shared/vendor/criu}"
SUMS="$ROOT/scripts/criu.sha256sums"
PINS="$ROOT/scripts/criu.packages"

check_os() {
	local codename=""
	[[ -r /etc/os-release ]] && codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	[[ $codename == bookworm ]] || warn "this script is written for Debian 12 (bookworm); found '${codename:-unknown}'"
}

install_debian_packages() {
	# docker.io: the host daemon and the per-user daemons; iptables: isolation rules; tini: the
	# init docker uses for --init (tini-static); busybox-static: tiny test images; debootstrap: the
	# environment image; btrfs-progs: per-user data-root subvolumes; iproute2: bridges;
	# logrotate: the audit logs' rotation (docs/operations.md).
	apt_install ca-certificates curl docker.io iptables busybox-static tini debootstrap \
		btrfs-progs iproute2 procps util-linux logrotate python3 python3-venv
}

criu_works() {
	[[ -x $CRIU_PREFIX/bin/criu ]] && "$CRIU_PREFIX/bin/criu" --version 2>/dev/null | grep -q '^Version: 4\.2\.1$'
}

# Fill DIR with the pinned .debs fetched through apt, using a private apt state so the host's own
# sources and lists are untouched. The mirrors are the ones this host's apt already uses.
fetch_criu_debs() {
	local dir=$1 apt_dir="$1/.apt" main_uri security_uri
	main_uri=$(apt_uri_for debian) || die "cannot find this host's Debian mirror in /etc/apt/sources.list*"
	security_uri=$(apt_uri_for debian-security) || security_uri=""
	mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/etc/preferences.d"
	{
		printf 'deb %s trixie main\ndeb %s trixie-updates main\ndeb %s sid main\n' "$main_uri" "$main_uri" "$main_uri"
		[[ -n $security_uri ]] && printf 'deb %s trixie-security main\n' "$security_uri"
	} >"$apt_dir/sources.list"
	local opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=-"
		-o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
		-o "Dir::Etc::Preferences=-" -o "Dir::Etc::PreferencesParts=$apt_dir/etc/preferences.d"
		-o "APT::Architecture=amd64" -o "APT::Architectures=amd64" -o "Acquire::Languages=none"
		-o "APT::Sandbox::User=root") # the files sit in a root-only temp dir
	say "fetching the pinned CRIU packages with apt-get download (no vendor dir at $VENDOR_DIR)"
	apt-get "${opts[@]}" update -qq
	(cd "$dir" && xargs -a "$PINS" apt-get "${opts[@]}" download -qq) ||
		die "apt-get download failed for a pinned CRIU package (scripts/criu.packages): the mirror may no longer carry that exact version. Put the packages in $VENDOR_DIR (see docs/development.md)."
	rm -rf "$apt_dir"
	# apt names a file with an epoch pkg_EPOCH%3aVERSION_arch.deb; the sums (like Debian's pool) don't.
	local f
	for f in "$dir"/*%3a*.deb; do
		if [[ -e $f ]]; then mv "$f" "$(sed -E 's/_[0-9]+%3a/_/' <<<"$f")"; fi
	done
}

# The first URI of this host's apt sources whose path ends in /NAME.
apt_uri_for() {
	local name=$1
	{ cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } |
		grep -v '^[[:space:]]*#' | grep -oE 'https?://[^ ]+' | grep -E "/${name}/?\$" | head -n1 | grep .
}

install_criu() {
	local stamp="$CRIU_PREFIX/.installed-from" want
	want=$(hash_files "$SUMS")
	if criu_works && [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
		note "CRIU 4.2.1 present in $CRIU_PREFIX"
	elif criu_works && [[ ! -f $stamp ]]; then
		# Installed by hand the documented way (same prefix, same wrapper): adopt it.
		echo "$want" >"$stamp"
		note "CRIU 4.2.1 present in $CRIU_PREFIX (adopted an existing install)"
	else
		local src work
		work=$(mktemp -d /tmp/rediacc-criu.XXXXXX)
		CLEANUP+=("$work")
		if [[ -d $VENDOR_DIR ]]; then
			say "installing CRIU 4.2.1 from $VENDOR_DIR"
			src=$VENDOR_DIR
		else
			src=$work
			fetch_criu_debs "$work"
		fi
		(cd "$src" && sha256sum --quiet --strict -c "$SUMS") ||
			die "CRIU packages in $src do not match scripts/criu.sha256sums"
		[[ $CRIU_PREFIX == /opt/* ]] || die "refusing to unpack CRIU's libraries outside /opt"
		rm -rf "$CRIU_PREFIX.new"
		mkdir -p "$CRIU_PREFIX.new/bin"
		local deb
		while read -r _ deb; do
			dpkg-deb -x "$src/$deb" "$CRIU_PREFIX.new"
		done <"$SUMS"
		cat >"$CRIU_PREFIX.new/bin/criu" <<EOF
#!/bin/sh
exec $CRIU_PREFIX/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path $CRIU_PREFIX/usr/lib/x86_64-linux-gnu $CRIU_PREFIX/usr/sbin/criu "\$@"
EOF
		chmod 755 "$CRIU_PREFIX.new/bin/criu"
		echo "$want" >"$CRIU_PREFIX.new/.installed-from"
		rm -rf "$CRIU_PREFIX"
		mv "$CRIU_PREFIX.new" "$CRIU_PREFIX"
		criu_works || die "the CRIU wrapper $CRIU_PREFIX/bin/criu does not run"
		note "CRIU 4.2.1 installed in $CRIU_PREFIX"
	fi
	local check
	if check=$("$CRIU_PREFIX/bin/criu" check 2>&1); then
		note "criu check: ${check##*$'\n'}"
	else
		warn "criu check failed (checkpoint tests will fail): ${check##*$'\n'}"
	fi
}

configure_runc_criu() {
	# runc reads this file for every checkpoint/restore; docker 20.10 has no other way to pass
	# --tcp-established, without which containers holding TCP connections cannot be checkpointed.
	mkdir -p /etc/criu
	if grep -qx 'tcp-established' /etc/criu/runc.conf 2>/dev/null; then
		note "/etc/criu/runc.conf has tcp-established"
	else
		[[ -s /etc/criu/runc.conf && -n $(tail -c1 /etc/criu/runc.conf) ]] && echo >>/etc/criu/runc.conf
		echo 'tcp-established' >>/etc/criu/runc.conf
		note "added tcp-established to /etc/criu/runc.conf"
	fi
}

configure_io_uring() {
	# CRIU cannot dump an io_uring, and libuv (ttyd, node) opens one by default, so a terminal
	# environment could never be checkpointed. io_uring_disabled=1 denies io_uring to processes
	# without CAP_SYS_ADMIN, i.e. to containers; privileged host services keep it. Docker 25+
	# blocks io_uring in its default seccomp profile for the same reason. Persisted in sysctl.d.
	local conf=/etc/sysctl.d/60-rediacc-hub.conf
	[[ -e /proc/sys/kernel/io_uring_disabled ]] || {
		note "kernel has no io_uring_disabled switch; nothing to do"
		return
	}
	if [[ ! -f $conf ]] || ! grep -qx 'kernel.io_uring_disabled = 1' "$conf"; then
		printf '# rediacc hub: CRIU cannot checkpoint containers holding an io_uring\nkernel.io_uring_disabled = 1\n' >"$conf"
		note "wrote $conf"
	fi
	if [[ $(cat /proc/sys/kernel/io_uring_disabled) == 0 ]]; then
		echo 1 >/proc/sys/kernel/io_uring_disabled
		note "kernel.io_uring_disabled=1 (containers cannot open io_uring, which CRIU cannot dump)"
	fi
}

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

CLEANUP=()
trap 'rm -rf "${CLEANUP[@]}" "$CRIU_PREFIX.new"' EXIT

check_os
install_debian_packages
install_criu
configure_runc_criu
configure_io_uring
install_venv
say "host ready ($(script_elapsed) s)"

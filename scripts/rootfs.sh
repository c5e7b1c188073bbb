# shellcheck shell=bash
# Building a Debian rootfs for `docker import`, shared by build-image.sh, build-systemd-image.sh
# and build-test-image.sh (source it after lib.sh). Each hashes this file into its recipe, so a
# change here rebuilds their images.
#
# The caller sets `rootfs` (the tree being built) and `CACHE` (logs go there), and calls
# `trap rootfs_unmount EXIT` before the first mount.

ROOTFS_MOUNTS=()

# Unmount what rootfs_from mounted into the tree, deepest first.
rootfs_unmount() {
	local i
	for ((i = ${#ROOTFS_MOUNTS[@]} - 1; i >= 0; i--)); do
		umount "${ROOTFS_MOUNTS[i]}" 2>/dev/null || umount -l "${ROOTFS_MOUNTS[i]}" 2>/dev/null || true
	done
	ROOTFS_MOUNTS=()
}

# Remove build trees safely: a build that was killed (SIGKILL, a CI time-out) leaves proc, /dev
# and /dev/pts mounted inside one, and a plain rm -rf would walk into the host's /dev.
remove_tree() {
	local dir m
	for dir in "$@"; do
		[[ -e $dir ]] || continue
		# deepest first; mountinfo's 5th field is the mount point
		awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
			while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
		rm -rf --one-file-system "$dir"
	done
}

# debootstrap_cached BASE SUITE [debootstrap options...]: a --variant=minbase tree of SUITE in
# BASE, made once (BASE/.complete marks a finished one), from the mirror the host's apt uses.
debootstrap_cached() {
	local base=$1 suite=$2 t0 mirror
	shift 2
	t0=$(date +%s.%N)
	if [[ -f $base/.complete ]]; then
		note "debootstrap cache: $base"
		return
	fi
	say "debootstrap --variant=minbase ${*:+$* }$suite (cached in $base)"
	remove_tree "$base" "$base.tmp"
	mirror=$(grep -ohE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
		/etc/apt/sources.list.d/*.list 2>/dev/null | head -n1 | tr -d ' ' || true)
	debootstrap --variant=minbase "$@" "$suite" "$base.tmp" ${mirror:+"$mirror"} >"$CACHE/debootstrap.log" 2>&1 || {
		tail -n 20 "$CACHE/debootstrap.log" >&2
		die "debootstrap failed (log: $CACHE/debootstrap.log)"
	}
	touch "$base.tmp/.complete"
	mv "$base.tmp" "$base"
	note "debootstrap took $(elapsed "$t0") s"
}

# rootfs_from BASE: a fresh copy of BASE at $rootfs, with the chroot plumbing apt needs: proc,
# /dev, the host's DNS, no service starts, and the host's choice on Release-file expiry (some
# package mirrors serve a frozen snapshot). rootfs_finish takes it out again.
rootfs_from() {
	local m
	remove_tree "$rootfs"
	cp -a "$1" "$rootfs"
	rm -f "$rootfs/.complete"
	for m in proc dev dev/pts; do
		case $m in
		proc) mount -t proc proc "$rootfs/proc" ;;
		*) mount --bind "/$m" "$rootfs/$m" ;;
		esac
		ROOTFS_MOUNTS+=("$rootfs/$m")
	done
	cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
	printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
	chmod 755 "$rootfs/usr/sbin/policy-rc.d"
	eval "$(apt-config shell HOST_VALID_UNTIL Acquire::Check-Valid-Until)"
	if [[ ${HOST_VALID_UNTIL:-} == false ]]; then
		echo 'Acquire::Check-Valid-Until "false";' >"$rootfs/etc/apt/apt.conf.d/99rediacc-build"
	fi
}

in_chroot() {
	chroot "$rootfs" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 HOME=/root "$@"
}

# chroot_apt_install PACKAGE...: apt-get update and install (no recommends) in the tree, the
# output in $APT_LOG (default $CACHE/apt.log) and its tail on failure.
chroot_apt_install() {
	local log=${APT_LOG:-$CACHE/apt.log}
	in_chroot apt-get update -qq >"$log" 2>&1 || {
		tail -n 20 "$log" >&2
		die "apt-get update in the image failed (log: $log)"
	}
	in_chroot apt-get install -y -qq --no-install-recommends "$@" >>"$log" 2>&1 || {
		tail -n 20 "$log" >&2
		die "apt-get install in the image failed (log: $log)"
	}
}

# rootfs_finish: the plumbing out again, and what apt and the build left behind.
rootfs_finish() {
	rootfs_unmount
	rm -f "$rootfs/usr/sbin/policy-rc.d" "$rootfs/etc/apt/apt.conf.d/99rediacc-build"
	: >"$rootfs/etc/resolv.conf"
	rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/apt/* "$rootfs"/tmp/* \
		"$rootfs"/var/log/dpkg.log "$rootfs"/root/.bash_history
}

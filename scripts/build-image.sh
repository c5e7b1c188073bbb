#!/usr/bin/env bash
# Build the local environment image rediacc-hub/env:latest into the host dockerd, without any
# registry: a Debian minbase rootfs (debootstrap, cached), bash, ttyd, python3, tini, a docker
# CLI, user vscode (1000) and /workspace, imported with `docker import`.
#
# Why Debian 13 (trixie) and not the host's Debian 12: ttyd is in neither bookworm, its backports
# nor trixie; only unstable (sid) ships it, and sid's ttyd needs nothing newer than trixie has. So
# the image is trixie plus that one package from sid (apt-pinned to ttyd alone, then the sid source
# is removed again so `apt-get install` inside an environment stays plain trixie).
#
# The image carries a label with a hash of this recipe (this script and the docker CLI copied in);
# when the image in the daemon has the same hash, the build is skipped. --force rebuilds anyway.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root "$@"

CACHE=${REDIACC_IMAGE_CACHE:-/var/cache/rediacc/image-build}
SUITE=trixie
TTYD_SUITE=sid
PACKAGES=(bash ttyd python3 ca-certificates procps iproute2 tini)
DOCKER_CLI=/usr/bin/docker # docker.io's CLI: built for Debian 12, so it runs in the image as is
LABEL=org.rediacc.hub.recipe
export DOCKER_HOST="unix://$HOST_DOCKER_SOCK"

force=""
[[ ${1:-} == --force ]] && force=1

[[ -x $DOCKER_CLI ]] || die "$DOCKER_CLI not found: run scripts/setup-host.sh first"
docker_ping || die "the host dockerd does not answer: run scripts/start-host-dockerd.sh first"
docker() { "$DOCKER_CLI" "$@"; }

recipe=$(hash_files "${BASH_SOURCE[0]}" "$DOCKER_CLI")
up_to_date() {
	[[ -z $force && $(docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" \
		"$ENV_IMAGE" 2>/dev/null) == "$recipe" ]]
}
if up_to_date; then
	note "$ENV_IMAGE is up to date (recipe $recipe)"
	exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 # one build at a time (quickstart and test.sh may race); the winner's image may do
if up_to_date; then
	note "$ENV_IMAGE was just built by another run (recipe $recipe)"
	exit 0
fi

base="$CACHE/$SUITE-minbase"
rootfs="$CACHE/rootfs"
mounts=()
cleanup() {
	local m
	for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
		m=${mounts[i]}
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
	done
	mounts=()
}
trap cleanup EXIT

# Remove a build tree safely: a build that was killed (SIGKILL, a CI time-out) leaves proc, /dev
# and /dev/pts mounted inside it, and a plain rm -rf would walk into the host's /dev.
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

step_t0=$(date +%s.%N)
if [[ -f $base/.complete ]]; then
	note "debootstrap cache: $base"
else
	say "debootstrap --variant=minbase $SUITE (cached in $base)"
	remove_tree "$base" "$base.tmp"
	mirror=$(grep -ohE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
		/etc/apt/sources.list.d/*.list 2>/dev/null | head -n1 | tr -d ' ' || true)
	debootstrap --variant=minbase "$SUITE" "$base.tmp" ${mirror:+"$mirror"} >"$CACHE/debootstrap.log" 2>&1 ||
		{
			tail -n 20 "$CACHE/debootstrap.log" >&2
			die "debootstrap failed (log: $CACHE/debootstrap.log)"
		}
	touch "$base.tmp/.complete"
	mv "$base.tmp" "$base"
	note "debootstrap took $(elapsed "$step_t0") s"
fi

say "building the rootfs in $rootfs"
step_t0=$(date +%s.%N)
remove_tree "$rootfs"
cp -a "$base" "$rootfs"
rm -f "$rootfs/.complete"

# Chroot plumbing for apt: proc, dev, DNS, and no service starts.
for m in proc dev dev/pts; do
	case $m in
	proc) mount -t proc proc "$rootfs/proc" ;;
	dev) mount --bind /dev "$rootfs/dev" ;;
	dev/pts) mount --bind /dev/pts "$rootfs/dev/pts" ;;
	esac
	mounts+=("$rootfs/$m")
done
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 755 "$rootfs/usr/sbin/policy-rc.d"
# Security updates too, from the mirror debootstrap used.
if mirror_line=$(grep -E '^deb ' "$rootfs/etc/apt/sources.list" | head -n1); then
	uri=$(awk '{print $2}' <<<"$mirror_line")
	{
		echo "deb $uri $SUITE main"
		echo "deb $uri $SUITE-updates main"
		echo "deb ${uri%/debian*}/debian-security $SUITE-security main"
	} >"$rootfs/etc/apt/sources.list"
	echo "deb $uri $TTYD_SUITE main" >"$rootfs/etc/apt/sources.list.d/ttyd-from-$TTYD_SUITE.list"
fi
# Follow the host's apt on Release-file expiry (some package mirrors serve a frozen snapshot).
eval "$(apt-config shell HOST_VALID_UNTIL Acquire::Check-Valid-Until)"
if [[ ${HOST_VALID_UNTIL:-} == false ]]; then
	echo 'Acquire::Check-Valid-Until "false";' >"$rootfs/etc/apt/apt.conf.d/99rediacc-build"
fi
cat >"$rootfs/etc/apt/preferences.d/ttyd-from-$TTYD_SUITE" <<EOF
Package: *
Pin: release n=$TTYD_SUITE
Pin-Priority: 1

Package: ttyd
Pin: release n=$TTYD_SUITE
Pin-Priority: 500
EOF

in_chroot() { chroot "$rootfs" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 HOME=/root "$@"; }

in_chroot apt-get update -qq >"$CACHE/apt.log" 2>&1 || {
	tail -n 20 "$CACHE/apt.log" >&2
	die "apt-get update in the image failed (log: $CACHE/apt.log)"
}
in_chroot apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >>"$CACHE/apt.log" 2>&1 || {
	tail -n 20 "$CACHE/apt.log" >&2
	die "apt-get install in the image failed (log: $CACHE/apt.log)"
}
in_chroot apt-get upgrade -y -qq >>"$CACHE/apt.log" 2>&1 || die "apt-get upgrade in the image failed (log: $CACHE/apt.log)"
rm -f "$rootfs/etc/apt/sources.list.d/ttyd-from-$TTYD_SUITE.list" "$rootfs/etc/apt/preferences.d/ttyd-from-$TTYD_SUITE" \
	"$rootfs/etc/apt/apt.conf.d/99rediacc-build"
in_chroot apt-get clean

install -m 755 "$DOCKER_CLI" "$rootfs/usr/bin/docker"
in_chroot docker --version >/dev/null || die "the docker CLI copied from $DOCKER_CLI does not run in the image"

in_chroot useradd --create-home --uid 1000 --user-group --shell /bin/bash vscode
install -d -m 755 -o 1000 -g 1000 "$rootfs/workspace"
for cmd in bash ttyd python3 tini ps ip docker; do
	in_chroot sh -c "command -v $cmd" >/dev/null || die "$cmd missing from the image"
done

cleanup
rm -f "$rootfs/usr/sbin/policy-rc.d"
: >"$rootfs/etc/resolv.conf"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/apt/* "$rootfs"/tmp/* \
	"$rootfs"/var/log/dpkg.log "$rootfs"/root/.bash_history
note "rootfs ready in $(elapsed "$step_t0") s"

say "docker import -> $ENV_IMAGE"
step_t0=$(date +%s.%N)
tar -C "$rootfs" --numeric-owner -cf - . | docker import \
	--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	--change 'ENV LANG=C.UTF-8' \
	--change 'USER root' \
	--change 'WORKDIR /workspace' \
	--change 'CMD ["bash"]' \
	--change "LABEL $LABEL=$recipe" \
	--change "LABEL org.opencontainers.image.title=rediacc-hub-env" \
	--change "LABEL org.opencontainers.image.description=\"Debian $SUITE with bash, ttyd, python3, tini and a docker CLI; user vscode (1000)\"" \
	--message "scripts/build-image.sh recipe $recipe" \
	- "$ENV_IMAGE" >/dev/null
remove_tree "$rootfs"
size=$(docker image inspect --format '{{.Size}}' "$ENV_IMAGE")
note "imported in $(elapsed "$step_t0") s"
say "built $ENV_IMAGE (recipe $recipe, $((size / 1000000)) MB) in $(script_elapsed) s"

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
source "$(dirname "${BASH_SOURCE[0]}")/rootfs.sh"
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

recipe=$(hash_files "${BASH_SOURCE[0]}" "$ROOT/scripts/rootfs.sh" "$DOCKER_CLI")
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
trap rootfs_unmount EXIT

debootstrap_cached "$base" "$SUITE"

say "building the rootfs in $rootfs"
step_t0=$(date +%s.%N)
rootfs_from "$base"
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
cat >"$rootfs/etc/apt/preferences.d/ttyd-from-$TTYD_SUITE" <<EOF
Package: *
Pin: release n=$TTYD_SUITE
Pin-Priority: 1

Package: ttyd
Pin: release n=$TTYD_SUITE
Pin-Priority: 500
EOF

chroot_apt_install "${PACKAGES[@]}"
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

rootfs_finish
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

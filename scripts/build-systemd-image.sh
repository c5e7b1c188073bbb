#!/usr/bin/env bash
# Build the image rediacc-hub/systemd-test:latest into the host dockerd: a Debian 12 (bookworm)
# whose PID 1 is systemd, with what the hub needs at run time (docker.io, iptables, tini, iproute2,
# python3) and a venv holding the hub's Python dependencies. tests/systemd/ boots it as a
# container on the host dockerd and runs the hub in it as an operator would (hub install,
# systemctl start rediacc-hub): the production path, on a machine whose own PID 1 is not systemd.
#
# The project itself is not copied in: the test bind-mounts the checkout read-only at
# /opt/rediacc-hub/src, which the venv has on its path (a .pth file, as `pip install -e` makes),
# and /opt/rediacc/criu (scripts/setup-host.sh's CRIU) read-only at the same path.
#
# The image carries a label with a hash of this recipe (this script and the dependency list of
# pyproject.toml); when the image in the daemon has the same hash the build is skipped. The
# debootstrap tree is cached in /var/cache/rediacc/systemd-build (CI pays for it once per machine).
# --force rebuilds the image (not the debootstrap cache).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/rootfs.sh"
require_root "$@"

CACHE=${REDIACC_SYSTEMD_IMAGE_CACHE:-/var/cache/rediacc/systemd-build}
SUITE=bookworm
IMAGE=rediacc-hub/systemd-test:latest
# docker.io for dockerd (its docker.service is masked: /var/lib/docker would be overlay on overlay;
# its containerd.service runs, as on every host with docker.io, so the hub's per-user daemons
# meet a system containerd there and must keep their own), iptables
# for the isolation rules, tini for tini-static (the --init CRIU restores need), iproute2 for the
# bridges, python3-venv for the hub's venv.
PACKAGES=(docker.io iptables tini iproute2 procps ca-certificates python3 python3-venv)
VENV=/opt/rediacc-hub/venv
SRC=/opt/rediacc-hub/src
LABEL=org.rediacc.hub.recipe
export DOCKER_HOST="unix://$HOST_DOCKER_SOCK"

force=""
[[ ${1:-} == --force ]] && force=1

docker_ping || die "the host dockerd does not answer: run scripts/start-host-dockerd.sh first"

# The hub's runtime dependencies, pinned to the versions in the project's own venv (.venv, made by
# scripts/setup-host.sh): the closure of pyproject.toml's dependencies, one `name==version` a
# line, installed with --no-deps (pip's resolver, left to choose, spun for an hour here).
deps=$("$ROOT/.venv/bin/python" - "$ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
from importlib import metadata

from packaging.requirements import Requirement

with open(sys.argv[1], "rb") as f:
    todo = [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]
pins = {}
while todo:
    req = todo.pop()
    name = req.name.lower().replace("_", "-")
    if name in pins or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    dist = metadata.distribution(req.name)
    pins[name] = dist.version
    todo += [Requirement(r) for r in dist.requires or ()]
print("\n".join(f"{n}=={v}" for n, v in sorted(pins.items())))
EOF
) || die "cannot list the hub's dependencies from .venv (run scripts/setup-host.sh)"
recipe=$( (cat "${BASH_SOURCE[0]}" "$ROOT/scripts/rootfs.sh" && echo "$deps") | sha256sum | cut -c1-16)

up_to_date() {
	[[ -z $force && $(docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" \
		"$IMAGE" 2>/dev/null) == "$recipe" ]]
}
if up_to_date; then
	note "$IMAGE is up to date (recipe $recipe)"
	exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if up_to_date; then
	note "$IMAGE was just built by another run (recipe $recipe)"
	exit 0
fi

base="$CACHE/$SUITE-systemd"
rootfs="$CACHE/rootfs"
trap rootfs_unmount EXIT

debootstrap_cached "$base" "$SUITE" --include=systemd,systemd-sysv,dbus

say "building the rootfs in $rootfs"
step_t0=$(date +%s.%N)
rootfs_from "$base"
# pip verifies PyPI against this machine's CA bundle (which may hold a site CA), not the chroot's.
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/tmp/host-ca.crt"

chroot_apt_install "${PACKAGES[@]}"
in_chroot apt-get clean

say "the hub's venv $VENV (its Python dependencies from PyPI)"
in_chroot python3 -m venv "$VENV"
mapfile -t dep_list <<<"$deps"
in_chroot "$VENV/bin/pip" install --quiet --no-cache-dir --no-deps --cert /tmp/host-ca.crt "${dep_list[@]}" \
	>"$CACHE/pip.log" 2>&1 || {
	tail -n 20 "$CACHE/pip.log" >&2
	die "pip install in the image failed (log: $CACHE/pip.log)"
}
# The checkout, bind-mounted at $SRC by the test, is importable (what `pip install -e` does), and
# `hub` is the project's console script (pyproject.toml: hub = "hubcli.app:main").
echo "$SRC" >"$rootfs$VENV/lib/python3.11/site-packages/rediacc_hub_src.pth"
cat >"$rootfs$VENV/bin/hub" <<EOF
#!$VENV/bin/python
import sys

from hubcli.app import main

sys.exit(main())
EOF
chmod 755 "$rootfs$VENV/bin/hub"
ln -sf "$VENV/bin/hub" "$rootfs/usr/local/bin/hub"
mkdir -p "$rootfs$SRC" "$rootfs/opt/rediacc/criu"

# As scripts/setup-host.sh configures the host: runc lets CRIU dump established TCP connections.
mkdir -p "$rootfs/etc/criu"
echo tcp-established >"$rootfs/etc/criu/runc.conf"
# The image's own dockerd is not run (the host's daemon is the test's); its containerd is, as
# docker.io runs it on a real host (hubcontrol.supervisor.private_containerd).
for unit in docker.service docker.socket; do
	ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
# Units that cannot work in a container (no consoles, no udev, no kernel modules to load).
for unit in getty@tty1.service serial-getty@.service console-getty.service systemd-udevd.service \
	systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount; do
	ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
in_chroot systemctl set-default multi-user.target >/dev/null 2>&1 || true
echo rediacc-systemd-test >"$rootfs/etc/hostname"

rootfs_finish # also takes /tmp/host-ca.crt out
note "rootfs ready in $(elapsed "$step_t0") s"

say "docker import -> $IMAGE"
step_t0=$(date +%s.%N)
tar -C "$rootfs" --numeric-owner -cf - . | docker import \
	--change 'ENV container=docker' \
	--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	--change 'CMD ["/sbin/init"]' \
	--change "LABEL $LABEL=$recipe" \
	--change "LABEL org.opencontainers.image.title=rediacc-hub-systemd-test" \
	--message "scripts/build-systemd-image.sh recipe $recipe" \
	- "$IMAGE" >/dev/null
remove_tree "$rootfs"
note "imported in $(elapsed "$step_t0") s"
say "built $IMAGE (recipe $recipe) in $(script_elapsed) s"

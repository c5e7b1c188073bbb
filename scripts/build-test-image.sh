#!/usr/bin/env bash
# Build one of the small images the end-to-end tests of users' own stacks run in, into the host
# dockerd, without any registry (Debian 13 packages from the mirror, like scripts/build-image.sh):
#
#   docker-cli  rediacc-hub/test-docker-cli:latest  Debian 13's docker-cli 26, docker-buildx and
#               docker-compose (a current CLI that builds with BuildKit by default), git, bash,
#               busybox (httpd, wget); user vscode (1000). Environments for `docker build`/buildx/compose tests, and the
#               git server and client of the on_create hook test.
#   nobash      rediacc-hub/test-nobash:latest      Debian 13's nodejs, with bash removed: /bin/sh
#               is dash, as on the seed's node:22-alpine example (busybox ash); user node (1000);
#               a small web app in /opt/app (a notes page kept in /workspace/notes.txt).
#
# Tests call this script from a module fixture: the image carries a label with a hash of this
# script, and when the host's image has the same hash the build is skipped. The Debian minbase
# tree is the one scripts/build-image.sh caches (made here too if it is missing).
#   usage: build-test-image.sh docker-cli|nobash [--force]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/rootfs.sh"
require_root "$@"

kind=${1:-}
force=""
[[ ${2:-} == --force ]] && force=1
case $kind in
docker-cli)
	IMAGE=rediacc-hub/test-docker-cli:latest
	PACKAGES=(bash busybox ca-certificates docker-cli docker-buildx docker-compose git procps)
	USER_NAME=vscode
	;;
nobash)
	IMAGE=rediacc-hub/test-nobash:latest
	PACKAGES=(nodejs)
	USER_NAME=node
	;;
*) die "usage: $0 docker-cli|nobash [--force]" ;;
esac

CACHE=${REDIACC_IMAGE_CACHE:-/var/cache/rediacc/image-build}
SUITE=trixie
LABEL=org.rediacc.hub.recipe
export DOCKER_HOST="unix://$HOST_DOCKER_SOCK"
docker_ping || die "the host dockerd does not answer: run scripts/start-host-dockerd.sh first"
docker() { /usr/bin/docker "$@"; }

recipe=$(printf '%s %s' "$kind" "$(hash_files "${BASH_SOURCE[0]}" "$ROOT/scripts/rootfs.sh")" | sha256sum | cut -c1-16)
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
flock 9 # shares build-image.sh's lock: one chroot build at a time on the cached tree
if up_to_date; then
	note "$IMAGE was just built by another run (recipe $recipe)"
	exit 0
fi

base="$CACHE/$SUITE-minbase"
rootfs="$CACHE/rootfs-$kind"
trap 'rootfs_unmount; remove_tree "$rootfs"' EXIT

debootstrap_cached "$base" "$SUITE"

say "building $IMAGE ($kind) in $rootfs"
rootfs_from "$base"
log="$CACHE/apt-$kind.log"
APT_LOG=$log chroot_apt_install "${PACKAGES[@]}"
in_chroot apt-get clean
in_chroot useradd --create-home --uid 1000 --user-group --shell /bin/sh "$USER_NAME"
install -d -m 755 -o 1000 -g 1000 "$rootfs/workspace"
case $kind in
docker-cli)
	for cmd in bash docker git; do in_chroot sh -c "command -v $cmd" >/dev/null || die "$cmd missing"; done
	in_chroot docker buildx version >/dev/null || die "docker buildx does not run in the image"
	in_chroot docker compose version >/dev/null || die "docker compose does not run in the image"
	;;
nobash)
	in_chroot node --version >/dev/null || die "node missing from the image"
	# what the seed's alpine image is like: no bash at all (dash stays /bin/sh)
	in_chroot dpkg --purge --force-remove-essential --force-depends bash >>"$log" 2>&1 ||
		die "removing bash failed (log: $log)"
	[[ ! -e $rootfs/bin/bash && ! -e $rootfs/usr/bin/bash ]] || die "bash is still in the image"
	in_chroot sh -c 'node -e "process.exit(0)"' || die "node does not run without bash"
	install -d -m 755 "$rootfs/opt/app"
	cat >"$rootfs/opt/app/server.js" <<'JS'
// A dev server as the seed's ephemeral example runs one (`... exec npm run dev -- --host IP`):
// a page with this process's boot id, the notes kept in /workspace/notes.txt and a form to add one.
const http = require("http");
const fs = require("fs");
const crypto = require("crypto");
const at = process.argv.indexOf("--host");
const host = at > 0 ? process.argv[at + 1] : "127.0.0.1";
const port = Number(process.env.PORT || 3000);
const boot = crypto.randomBytes(6).toString("hex");
const notes = "/workspace/notes.txt";
const esc = (s) => s.replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
http.createServer((req, res) => {
  if (req.method === "POST" && req.url === "/notes") {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      fs.appendFileSync(notes, (new URLSearchParams(body).get("note") || "") + "\n");
      res.writeHead(303, { Location: "/" });
      res.end();
    });
    return;
  }
  const list = fs.existsSync(notes) ? fs.readFileSync(notes, "utf8").split("\n").filter(Boolean) : [];
  const files = fs.readdirSync("/workspace").sort();
  res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
  res.end(`<!doctype html><title>notes</title><p id="boot">${boot}</p>` +
    `<ul id="notes">${list.map((n) => `<li>${esc(n)}</li>`).join("")}</ul>` +
    `<p id="files">${files.map(esc).join(" ")}</p>` +
    `<form method="post" action="/notes"><input name="note"><button>add</button></form>`);
}).listen(port, host, () => console.log(`listening on ${host}:${port}`));
JS
	;;
esac
rootfs_finish
rm -rf "$rootfs"/var/log/*

tar -C "$rootfs" --numeric-owner -cf - . | docker import \
	--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	--change 'ENV LANG=C.UTF-8' \
	--change 'WORKDIR /workspace' \
	--change 'CMD ["sh"]' \
	--change "LABEL $LABEL=$recipe" \
	--message "scripts/build-test-image.sh $kind, recipe $recipe" \
	- "$IMAGE" >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE (recipe $recipe, $((size / 1000000)) MB) in $(script_elapsed) s"

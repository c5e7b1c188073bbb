#!/usr/bin/env bash
# Build rediacc-hub/jupyterlab:latest into the host dockerd from images/jupyterlab/Dockerfile:
# JupyterLab from PyPI on the environment image (rediacc-hub/env, built first if missing; there is
# no registry to pull a python base from). The seed's Jupyter example runs on it word for word
# (tests/e2e/test_jupyter_browser.py, bench/resume.py --jupyter).
#
# The image carries a label with a hash of the recipe (this script, the Dockerfile and the base
# image's ID); when the host's image has the same hash the build is skipped. --force rebuilds.
# pip in the build trusts the host's CA bundle (copied into the build context, removed in the same
# layer): hosts that reach PyPI through an intercepting proxy work as the host itself does.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root "$@"

IMAGE=rediacc-hub/jupyterlab:latest
DOCKERFILE="$ROOT/images/jupyterlab/Dockerfile"
HOST_CA=${REDIACC_HOST_CA:-/etc/ssl/certs/ca-certificates.crt}
LABEL=org.rediacc.hub.recipe
export DOCKER_HOST="unix://$HOST_DOCKER_SOCK"
force=""
[[ ${1:-} == --force ]] && force=1
docker_ping || die "the host dockerd does not answer: run scripts/start-host-dockerd.sh first"
docker() { /usr/bin/docker "$@"; }
[[ -r $HOST_CA ]] || die "no CA bundle at $HOST_CA: install ca-certificates (apt-get install ca-certificates)"

"$ROOT/scripts/build-image.sh" # the base; skips itself when up to date
base_id=$(docker image inspect --format '{{.Id}}' "$ENV_IMAGE")
recipe=$( (hash_files "${BASH_SOURCE[0]}" "$DOCKERFILE" && echo "$base_id") | sha256sum | cut -c1-16)
up_to_date() {
	[[ -z $force && $(docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" \
		"$IMAGE" 2>/dev/null) == "$recipe" ]]
}
if up_to_date; then
	note "$IMAGE is up to date (recipe $recipe)"
	exit 0
fi
CACHE=${REDIACC_IMAGE_CACHE:-/var/cache/rediacc/image-build}
mkdir -p "$CACHE"
exec 9>"$CACHE/jupyterlab.lock"
flock 9 # one build at a time (test.sh and a test fixture may race); the winner's image may do
if up_to_date; then
	note "$IMAGE was just built by another run (recipe $recipe)"
	exit 0
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$DOCKERFILE" "$context/Dockerfile"
cp "$HOST_CA" "$context/host-ca.crt"
say "docker build $IMAGE (JupyterLab from PyPI on $ENV_IMAGE)"
log="$CACHE/jupyterlab-build.log"
DOCKER_BUILDKIT=0 docker build --force-rm --build-arg "BASE=$ENV_IMAGE" --build-arg "RECIPE=$recipe" \
	-t "$IMAGE" "$context" >"$log" 2>&1 || {
	tail -n 20 "$log" >&2
	die "docker build of $IMAGE failed (log: $log)"
}
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE (recipe $recipe, $((size / 1000000)) MB) in $(script_elapsed) s"

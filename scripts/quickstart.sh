#!/usr/bin/env bash
# THE first command of the README: a working hub on this machine, for trying it out.
#
#   ./scripts/quickstart.sh          install what is missing, then start (or report) the hub
#   ./scripts/quickstart.sh status   what is running
#   ./scripts/quickstart.sh stop     stop the user environments (through the hub), then the
#                                         hub and the OIDC provider this script started
#   ... stop --keep-environments          the same, but leave the environments running
#
# A stopped environment keeps its daemon's data-root (images, containers) and its network: the
# host-wide network-ID claim /var/lib/rediacc/netids/<id>, the bridges rdh<id> and rdh<id>e and
# their iptables rules (comment rdh:<id>), so the user's next visit gets the same addresses and
# images back. To remove all that for every stopped environment (workspaces stay), after stop:
#   .venv/bin/hub gc /var/lib/rediacc/hub-local/workspaces --max-age 0
#
# The workspace dir is put on BTRFS (the fast path: a new user's data-root is a snapshot of the
# template's seed, seconds whatever the image's size; docs/architecture.md, "Seed data-roots"):
# unless $QUICKSTART_DIR/workspaces already is on BTRFS, a sparse loop file
# $QUICKSTART_DIR/workspaces.btrfs (QUICKSTART_BTRFS_SIZE, default 64G) is formatted once and
# mounted there, again after a reboot. QUICKSTART_BTRFS=0 keeps the directory where it is (each new
# user then loads the image). To remove it: stop, then `umount` the directory and delete the file.
#
# Start: host setup, host dockerd, the local environment image, a local OpenID Connect provider on
# 127.0.0.1 (panva's oidc-provider, whose development login form accepts any name and password),
# a hub env file and hub.labels.yaml in /var/lib/rediacc/hub-local, then `hub start` in the
# background. Open http://term.localhost:7112/ and you get a web terminal (ttyd) in your own
# container, with your own dockerd behind `docker` in it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE=${QUICKSTART_DIR:-/var/lib/rediacc/hub-local}
LOGS=${QUICKSTART_LOG_DIR:-$LOG_DIR/hub-local}
HUB_PORT=${QUICKSTART_PORT:-7112}
OIDC_PORT=${QUICKSTART_OIDC_PORT:-9090}
BASE_DOMAIN=localhost
ROUTE_PREFIX=term
ROUTE_PORT=7681
OIDC_PIDFILE="$STATE/run/oidc.pid"
HUB_PIDFILE="$STATE/run/hub.pid"
HUB="$ROOT/.venv/bin/hub"

# PID from PIDFILE when that process is alive and its command line contains MARKER (a recycled PID
# belongs to someone else and is never touched).
live_pid() {
	local pidfile=$1 marker=$2 pid
	pid=$(cat "$pidfile" 2>/dev/null) || return 1
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" || return 1
	echo "$pid"
}

# Alive and not a zombie (an exited child whose parent has not reaped it yet is gone for us).
alive() {
	local state
	state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
	[[ -n $state && $state != Z ]]
}

stop_pid() {
	local name=$1 pidfile=$2 marker=$3 pid
	if ! pid=$(live_pid "$pidfile" "$marker"); then
		note "$name: not running"
		rm -f "$pidfile"
		return
	fi
	kill -TERM "$pid"
	local deadline=$((SECONDS + 20))
	while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
	if alive "$pid"; then
		warn "$name (pid $pid) did not stop within 20 s; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$pidfile"
	note "$name (pid $pid) stopped"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

hub_cli() {
	"$HUB" "$@" --url "http://127.0.0.1:$HUB_PORT" --token-file "$STATE/state/admin.token"
}

# Stop every user environment through the running hub (its API, as `hub stop USER` does): their
# containers and per-user daemons are the hub's to stop, not ours to kill.
stop_environments() {
	local users user
	users=$(hub_cli status --json | "$ROOT/.venv/bin/python" -c '
import json, sys
for u in json.load(sys.stdin)["users"]:
    if u["state"] != "stopped":
        print(u["user"])') || {
		warn "could not list the environments through the hub; they may still run"
		return
	}
	for user in $users; do
		if hub_cli stop "$user" >/dev/null; then
			note "environment of $user stopped"
		else
			warn "stopping the environment of $user failed (see $LOGS/hub.log)"
		fi
	done
}

cmd_stop() {
	require_root stop
	say "stopping the quick-start hub"
	if [[ ${1:-} == --keep-environments ]]; then
		note "leaving user environments running: the next quickstart picks them up"
	elif live_pid "$HUB_PIDFILE" "hub start" >/dev/null; then
		stop_environments
	elif compgen -G "$STATE/workspaces/*-docker" >/dev/null; then
		note "the hub is not running, so it cannot stop user environments it may have left running;"
		note "start the quick start again and stop it to end them"
	fi
	stop_pid "hub" "$HUB_PIDFILE" "hub start"
	stop_pid "OIDC provider" "$OIDC_PIDFILE" "provider.mjs"
}

cmd_status() {
	local pid
	if pid=$(live_pid "$OIDC_PIDFILE" provider.mjs); then
		note "OIDC provider: running (pid $pid) at http://127.0.0.1:$OIDC_PORT"
	else note "OIDC provider: not running"; fi
	if pid=$(live_pid "$HUB_PIDFILE" "hub start"); then
		note "hub: running (pid $pid) at http://$ROUTE_PREFIX.$BASE_DOMAIN:$HUB_PORT/ (log: $LOGS/hub.log)"
		hub_cli status || true
	else note "hub: not running"; fi
}

secret() { "$ROOT/.venv/bin/python" -c 'import secrets; print(secrets.token_hex(32))'; }

# The workspace dir on BTRFS (see the header): a loop file unless it is on BTRFS already.
workspaces_on_btrfs() {
	local dir=$STATE/workspaces image=$STATE/workspaces.btrfs fs
	mkdir -p "$dir"
	fs=$(stat -f -c %T "$dir")
	if [[ $fs == btrfs ]]; then
		note "workspaces on BTRFS ($dir): new users get snapshots of the template's seed"
		return
	fi
	if [[ ${QUICKSTART_BTRFS:-1} == 0 ]]; then
		note "workspaces on $fs (QUICKSTART_BTRFS=0): each new user loads the image"
		return
	fi
	if [[ -n $(ls -A "$dir") ]]; then
		warn "$dir is on $fs and not empty: it stays there, and each new user loads the image;"
		warn "move it away (after \`$0 stop\`) to get the BTRFS fast path"
		return
	fi
	if [[ ! -f $image ]]; then
		truncate -s "${QUICKSTART_BTRFS_SIZE:-64G}" "$image"
		mkfs.btrfs -q "$image" >/dev/null || die "mkfs.btrfs $image failed"
	fi
	mount -o loop "$image" "$dir" || die "mounting $image at $dir failed"
	chmod 700 "$dir"
	note "workspaces on BTRFS: $image (sparse) mounted at $dir"
}

write_config() {
	workspaces_on_btrfs
	mkdir -p "$STATE/run" "$STATE/workspaces" "$STATE/state" "$LOGS/audit"
	chmod 700 "$STATE/run"
	local secrets="$STATE/secrets.env"
	if [[ ! -s $secrets ]]; then
		(
			umask 077
			printf 'OIDC_CLIENT_SECRET=%s\nSESSION_SECRET=%s\n' "$(secret)" "$(secret)" >"$secrets"
		)
	fi
	# shellcheck disable=SC1090
	source "$secrets"
	(
		umask 077
		cat >"$STATE/hub.env" <<EOF
# Written by scripts/quickstart.sh: the local OIDC provider on 127.0.0.1:$OIDC_PORT.
HUB_DOMAIN=$BASE_DOMAIN
HUB_OAUTH_CLIENT_ID=hub
HUB_OAUTH_CLIENT_SECRET=$OIDC_CLIENT_SECRET
HUB_OAUTH_AUTHORIZE_URL=http://127.0.0.1:$OIDC_PORT/auth
HUB_OAUTH_TOKEN_URL=http://127.0.0.1:$OIDC_PORT/token
HUB_OAUTH_USERINFO_URL=http://127.0.0.1:$OIDC_PORT/me
HUB_OAUTH_USERINFO_PATH=preferred_username
HUB_SESSION_SECRET=$SESSION_SECRET
HUB_ADMIN_USERS=admin
EOF
	)
	cat >"$STATE/hub.labels.yaml" <<EOF
# Written by scripts/quickstart.sh (format: docs/configuration.md). One route, term.localhost,
# to a web terminal in each user's own container, with a dedicated dockerd per user.
version: 1
service: hub
labels:
  rediacc.hub.route.$ROUTE_PREFIX: "$ROUTE_PORT"
  rediacc.hub.image: $ENV_IMAGE
  rediacc.hub.command: ttyd --writable --port $ROUTE_PORT bash
  rediacc.hub.docker: per-user
EOF
}

start_oidc() {
	local pid
	if pid=$(live_pid "$OIDC_PIDFILE" provider.mjs); then
		note "OIDC provider already running (pid $pid)"
		return
	fi
	[[ -f $ROOT/tests/support/oidc/provider.mjs ]] ||
		die "tests/support/oidc/provider.mjs is missing from this checkout: the local OIDC provider cannot start"
	port_busy "$OIDC_PORT" &&
		die "port $OIDC_PORT is taken by another program; choose another with QUICKSTART_OIDC_PORT=<port>"
	local redirects="" p
	for p in "$ROUTE_PREFIX.$BASE_DOMAIN" "$BASE_DOMAIN"; do
		redirects+="${redirects:+,}\"http://$p:$HUB_PORT/_hub/oauth/callback\""
	done
	local options
	options=$(printf '{"host":"127.0.0.1","port":%s,"clients":[{"client_id":"hub","client_secret":"%s","redirect_uris":[%s]}],"skipConsent":true}' \
		"$OIDC_PORT" "$OIDC_CLIENT_SECRET" "$redirects")
	say "starting the OIDC provider on 127.0.0.1:$OIDC_PORT (log: $LOGS/oidc.log)"
	(cd "$ROOT/tests/support/oidc" && exec setsid node provider.mjs "$options" </dev/null >>"$LOGS/oidc.log" 2>&1) &
	pid=$!
	echo "$pid" >"$OIDC_PIDFILE"
	local deadline=$((SECONDS + 20))
	until port_busy "$OIDC_PORT"; do
		alive "$pid" || {
			tail -n 20 "$LOGS/oidc.log" >&2
			die "the OIDC provider exited during start-up (log: $LOGS/oidc.log)"
		}
		((SECONDS < deadline)) || die "the OIDC provider did not listen on $OIDC_PORT within 20 s (log: $LOGS/oidc.log)"
		sleep 0.1
	done
	note "OIDC provider running (pid $pid)"
}

hub_health() {
	curl -fsS --max-time 2 -H "Host: $ROUTE_PREFIX.$BASE_DOMAIN:$HUB_PORT" \
		"http://127.0.0.1:$HUB_PORT/_hub/health" >/dev/null 2>&1
}

start_hub() {
	local pid
	if pid=$(live_pid "$HUB_PIDFILE" "hub start"); then
		note "hub already running (pid $pid); \`$0 stop\` first to restart it with new settings"
		return
	fi
	if [[ ! -x $HUB ]] || ! "$HUB" start --help >/dev/null 2>&1; then
		warn "the hub itself is not available in this checkout yet (\`hub start\` is missing)."
		note "Done so far: host packages, CRIU, host dockerd, image $ENV_IMAGE, and the OIDC provider"
		note "on 127.0.0.1:$OIDC_PORT. Config written to $STATE/hub.env and $STATE/hub.labels.yaml."
		exit 3
	fi
	port_busy "$HUB_PORT" && die "port $HUB_PORT is taken by another program; choose another with QUICKSTART_PORT=<port>"
	local args=(start --labels "$STATE/hub.labels.yaml" --env-file "$STATE/hub.env" --port "$HUB_PORT"
		--base-domain "$BASE_DOMAIN" --workspace-dir "$STATE/workspaces"
		--docker-socket "unix://$HOST_DOCKER_SOCK" --state-dir "$STATE/state" --audit-dir "$LOGS/audit")
	# e.g. QUICKSTART_HUB_ARGS="--idle-timeout 5m --checkpoint" to watch idle environments suspend
	# shellcheck disable=SC2206
	args+=(${QUICKSTART_HUB_ARGS:-})
	say "starting the hub on port $HUB_PORT (log: $LOGS/hub.log)"
	note "hub ${args[*]}"
	(cd "$STATE" && PATH="$CRIU_PREFIX/bin:$PATH" exec setsid "$HUB" "${args[@]}" </dev/null >>"$LOGS/hub.log" 2>&1) &
	pid=$!
	echo "$pid" >"$HUB_PIDFILE"
	local deadline=$((SECONDS + 60))
	until hub_health; do
		alive "$pid" || {
			rm -f "$HUB_PIDFILE"
			tail -n 30 "$LOGS/hub.log" >&2
			die "the hub exited during start-up (log: $LOGS/hub.log); the OIDC provider still runs: \`$0 stop\` ends it"
		}
		((SECONDS < deadline)) || die "the hub did not answer /_hub/health within 60 s (log: $LOGS/hub.log)"
		sleep 0.2
	done
	note "hub running (pid $pid)"
}

cmd_start() {
	require_root "$@"
	"$ROOT/scripts/setup-host.sh"
	"$ROOT/scripts/start-host-dockerd.sh"
	"$ROOT/scripts/install-test-deps.sh" --oidc-only
	"$ROOT/scripts/build-image.sh"
	write_config
	start_oidc
	start_hub
	cat <<EOF

The hub is running ($(script_elapsed) s).

  Open       http://$ROUTE_PREFIX.$BASE_DOMAIN:$HUB_PORT/   (Chromium and Firefox resolve *.localhost themselves)
             Log in with any name and any password: the local OIDC provider's development form
             accepts them. You get a web terminal in your own container; \`docker\` there talks
             to your own dockerd.
  Dashboard  http://$ROUTE_PREFIX.$BASE_DOMAIN:$HUB_PORT/_hub/dashboard   (log in as "admin" to see everyone's)
  Logs       $LOGS/hub.log, $LOGS/oidc.log
  Config     $STATE/hub.labels.yaml, $STATE/hub.env
  Stop       $0 stop
EOF
}

case ${1:-start} in
start) cmd_start ;;
stop) cmd_stop "${2:-}" ;;
status) cmd_status ;;
-h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
*) die "unknown command '$1': use start (default), status or stop" ;;
esac

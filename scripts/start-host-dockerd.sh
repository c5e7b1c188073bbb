#!/usr/bin/env bash
# Make sure the host's dockerd answers on /var/run/docker.sock. A daemon that already answers is
# left alone (whoever started it owns it); otherwise one is started in the background, detached from
# this shell, with CRIU on its PATH, logging to /var/log/rediacc/host-dockerd.log.
#
# Where PID 1 is systemd and docker.service exists, prefer `systemctl start docker`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root "$@"

PIDFILE=/var/run/docker.pid
LOG="$LOG_DIR/host-dockerd.log"
WAIT_S=${HOST_DOCKERD_WAIT_S:-60}

if docker_ping; then
	note "host dockerd answers on $HOST_DOCKER_SOCK"
	exit 0
fi

if [[ $(cat /proc/1/comm 2>/dev/null) == systemd ]] && systemctl cat docker.service >/dev/null 2>&1; then
	say "systemctl start docker"
	systemctl start docker
else
	# A dockerd that is still starting (pidfile names a live dockerd) must not get a twin.
	pid=$(cat "$PIDFILE" 2>/dev/null || true)
	if [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]]; then
		say "dockerd (pid $pid) is running but not answering yet; waiting for it"
	else
		# dockerd refuses to start while its pidfile names any live process, and after a crash or a
		# reboot that PID may belong to something else now.
		if [[ -n $pid ]]; then
			note "removing the stale $PIDFILE (pid $pid is not a dockerd)"
			rm -f "$PIDFILE"
		fi
		command -v dockerd >/dev/null || die "dockerd not found: run scripts/setup-host.sh first"
		mkdir -p "$LOG_DIR"
		say "starting the host dockerd (log: $LOG)"
		PATH="$CRIU_PREFIX/bin:$PATH" setsid nohup dockerd --pidfile "$PIDFILE" \
			</dev/null >>"$LOG" 2>&1 &
		pid=$!
	fi
fi

deadline=$((SECONDS + WAIT_S))
until docker_ping; do
	# (our own child stays a zombie after it exits: /proc says Z, kill -0 would still succeed)
	if [[ -n ${pid:-} ]] && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo Z) == Z ]]; then
		tail -n 20 "$LOG" >&2 || true
		die "dockerd exited during start-up (full log: $LOG)"
	fi
	((SECONDS < deadline)) || die "dockerd did not answer /_ping on $HOST_DOCKER_SOCK within ${WAIT_S}s (log: $LOG)"
	sleep 0.2
done
note "host dockerd answers on $HOST_DOCKER_SOCK (pid ${pid:-?}, $(script_elapsed) s)"

#!/bin/sh
# A private Docker engine for the molecule scenarios, isolated from this machine.
#
#   tests/molecule/engine.sh run CMD [ARG...]   start the engine, run CMD with DOCKER_HOST
#                                               set, ALWAYS stop the engine; exit with CMD's
#                                               status
#   tests/molecule/engine.sh start              start it and leave it running (prints the
#                                               DOCKER_HOST to export), for working by hand
#   tests/molecule/engine.sh stop               stop what `start` started
#
# dockerd (Debian's docker.io) runs inside its own network, mount and PID namespaces:
# - network: its bridge and iptables rules exist only there, and no container can reach
#   the outside or be reached (no port is published anywhere on this machine);
# - mount: the overlay mounts of containers never appear on the real root;
# - PID: tini is the namespace's PID 1, so stopping it ends dockerd, containerd, the shims
#   and every container process at once, even after a crash of dockerd.
# Its data root is .cache/molecule/docker (images stay between runs, so warm runs skip
# the imports); its socket is .cache/molecule/docker.sock. A lock keeps two runs from
# sharing one engine; a second run waits for the first (bounded).
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STATE="$ROOT/.cache/molecule"
DATA="$STATE/docker"
SOCK="$STATE/docker.sock"
PIDFILE="$STATE/engine.pid"
LOG="$STATE/dockerd.log"
# containerd's socket path must stay under the 108-byte limit of a Unix socket address,
# so its runtime directory is short and outside the repository.
EXEC="/tmp/xc-docker-$(echo "$ROOT" | sha256sum | cut -c1-8)"
START_TIMEOUT=${XENCHANNEL_ENGINE_START_TIMEOUT:-90}
STOP_TIMEOUT=20

log() {
    echo "molecule/engine: $*" >&2
}

die() {
    log "$*"
    exit 1
}

need() {
    command -v "$1" >/dev/null 2>&1 ||
        die "$1 is missing; run tests/molecule/setup.sh (it installs Debian's docker.io)"
}

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

start() {
    [ "$(id -u)" -eq 0 ] || die "the engine needs root (namespaces, overlay mounts); rerun as root"
    need dockerd
    need unshare
    need tini
    mkdir -p "$DATA" "$EXEC"
    if running; then
        die "an engine from $PIDFILE is already running; run '$0 stop' first"
    fi
    rm -f "$SOCK"
    : >"$LOG"
    # The inner script runs as PID 1's child in the new namespaces: loopback up (the
    # bridge needs it), a tmpfs for containerd's runtime files, then dockerd.
    # shellcheck disable=SC2016  # expanded by the inner shell
    setsid unshare --net --mount --pid --fork --mount-proc --propagation private \
        tini -s -- sh -c '
            ip link set lo up 2>/dev/null || true
            mount -t tmpfs -o mode=0711 xc-docker-exec "$1"
            exec dockerd --data-root "$2" --exec-root "$1" -H "unix://$3" \
                --pidfile "$1/dockerd.pid" --storage-driver overlay2 \
                --log-level warn --userland-proxy=false
        ' engine "$EXEC" "$DATA" "$SOCK" >>"$LOG" 2>&1 </dev/null &
    outer=$!
    # The PID that matters is tini's (PID 1 inside): when it ends, the kernel ends every
    # process of the namespace. unshare itself only waits for it.
    waited=0
    until inner=$(pgrep -P "$outer" tini 2>/dev/null); do
        if [ "$waited" -ge 50 ] || ! kill -0 "$outer" 2>/dev/null; then
            die "unshare did not start tini within 5s (log: $LOG)"
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    echo "$inner" >"$PIDFILE"
    waited=0
    until [ -S "$SOCK" ] && DOCKER_HOST="unix://$SOCK" docker version >/dev/null 2>&1; do
        if ! running; then
            tail -n 20 "$LOG" >&2
            die "dockerd exited while starting (log: $LOG)"
        fi
        if [ "$waited" -ge "$START_TIMEOUT" ]; then
            tail -n 20 "$LOG" >&2
            stop
            die "dockerd did not answer on $SOCK within ${START_TIMEOUT}s (log: $LOG); raise XENCHANNEL_ENGINE_START_TIMEOUT if the machine is slow"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "engine up in ${waited}s: DOCKER_HOST=unix://$SOCK"
}

stop() {
    if [ ! -f "$PIDFILE" ]; then
        return 0
    fi
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
        # tini forwards SIGTERM and dockerd stops its containers; if that takes too long,
        # killing the namespace's PID 1 ends everything in it.
        kill -TERM "$pid" 2>/dev/null || true
        waited=0
        while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt "$STOP_TIMEOUT" ]; do
            sleep 1
            waited=$((waited + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "dockerd did not stop within ${STOP_TIMEOUT}s; killing its namespace"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
        fi
    fi
    rm -f "$PIDFILE" "$SOCK"
    rmdir "$EXEC" 2>/dev/null || true
}

[ $# -ge 1 ] || die "usage: $0 run CMD [ARG...] | start | stop"
action=$1
shift
mkdir -p "$STATE"
case "$action" in
run)
    [ $# -ge 1 ] || die "usage: $0 run CMD [ARG...]"
    exec 8>"$STATE/engine.lock"
    flock -w 3600 8 || die "another molecule run held $STATE/engine.lock for an hour; is one stuck?"
    start
    trap stop EXIT
    trap 'exit 130' INT TERM
    status=0
    DOCKER_HOST="unix://$SOCK" "$@" || status=$?
    exit "$status"
    ;;
start)
    start
    echo "export DOCKER_HOST=unix://$SOCK"
    ;;
stop)
    stop
    ;;
*)
    die "unknown action '$action'; use run, start or stop"
    ;;
esac

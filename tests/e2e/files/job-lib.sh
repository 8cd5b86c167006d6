# shellcheck shell=bash
# Helpers for the harness's dom0 jobs (sourced by run.sh; tests/e2e/boot.py writes run.sh).
# Everything a job prints reaches the serial console; results go to /job/result, which
# the harness reads from the job disk after power-off.
R=/job/result
CONSOLES=/var/log/xen/console

up() { cut -d' ' -f1 /proc/uptime; }
mark() { echo "MARK $* uptime=$(up)"; }

# The agent, started with the command its systemd unit (installed by the dom0_agent
# role) would run: this dom0 has no systemd.
start_agent() {
    local unit cmd
    unit=/etc/systemd/system/xenchannel-dom0-agent.service
    cmd=$(sed -n 's/^ExecStart=//p' "$unit")
    [ -n "$cmd" ] || { echo "job: no ExecStart= in $unit (did the dom0_agent role run?)"; return 1; }
    # The unit leaves the socket root to tmpfiles.d; /run is empty at every boot.
    install -d -m 0700 /run/xenchannel
    (umask 077; exec $cmd >"$R/agent.log" 2>&1) &
    AGENT_PID=$!
    mark agent-started pid="$AGENT_PID"
}

stop_agent() {
    [ -n "${AGENT_PID:-}" ] || return 0
    kill "$AGENT_PID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$AGENT_PID" 2>/dev/null
    AGENT_PID=
    mark agent-stopped
}

# Each VM's boot count in this job, and its console streamer and phase watcher.
declare -A BOOT STREAM WATCH

# xl create a VM from the config the domain role wrote, and stream its console to ours,
# each line prefixed with the VM's name. Every mark about the VM says vm= and boot=.
# Further arguments are xl's KEY=VALUE overrides of the config (an experiment's extra=).
create() {
    local vm=$1
    shift
    BOOT[$vm]=$((${BOOT[$vm]:-0} + 1))
    rm -f "$CONSOLES/guest-$vm.log"
    mark xl-create-start vm="$vm" boot="${BOOT[$vm]}"
    if ! xl create "/etc/xen/$vm.cfg" "$@"; then
        mark xl-create-failed vm="$vm" boot="${BOOT[$vm]}"
        return 1
    fi
    mark xl-create-done vm="$vm" boot="${BOOT[$vm]}"
    (tail -n +1 -F "$CONSOLES/guest-$vm.log" 2>/dev/null | sed -u "s/^/[$vm] /") &
    STREAM[$vm]=$!
    watch_phases "$vm"
}

# Mark the guest's boot phases as they appear on its console (in the background, until
# the VM is shut down): kernel, systemd, cloud-init's stages, multi-user.
watch_phases() {
    local vm=$1 log="$CONSOLES/guest-$1.log" seen="" entry name regex boot=${BOOT[$1]}
    local phases=(
        "guest-kernel|Linux version"
        "guest-systemd|Welcome to .*Debian"
        "guest-cloud-init-local|running 'init-local'"
        "guest-cloud-init-local-done|Finished.*cloud-init-local"
        "guest-cloud-init-network|running 'init'"
        "guest-multi-user|Reached target.*[Mm]ulti-[Uu]ser"
        "guest-cloud-init-final|Cloud-init v.* finished at"
    )
    (
        while true; do
            for entry in "${phases[@]}"; do
                name=${entry%%|*}
                regex=${entry#*|}
                case " $seen " in *" $name "*) continue ;; esac
                if grep -Eq "$regex" "$log" 2>/dev/null; then
                    mark "$name" vm="$vm" boot="$boot"
                    seen="$seen $name"
                fi
            done
            sleep 1
        done
    ) &
    WATCH[$vm]=$!
}

# Stop a VM's console streamer and phase watcher (after it is shut down).
unwatch() {
    local vm=$1 pid
    for pid in "${WATCH[$vm]:-}" "${STREAM[$vm]:-}"; do
        [ -n "$pid" ] && pkill -P "$pid" 2>/dev/null
        [ -n "$pid" ] && kill "$pid" 2>/dev/null
    done
    WATCH[$vm]=
    STREAM[$vm]=
}

# Wait (bounded) until the agent's status for the VM says want (delivered, applied).
wait_status() {
    local vm=$1 want=$2 name=$3 limit=$4 state="" end=$((SECONDS + $4))
    # Bounded by the clock, not by a count: each poll starts two Pythons, which takes
    # seconds under emulation.
    while [ $SECONDS -lt $end ]; do
        state=$(python3 -m xenchannel.dom0 status "$vm" --json 2>/dev/null | python3 -c '
import json, sys
try:
    print((json.load(sys.stdin).get("status") or {}).get("state") or "")
except ValueError:
    print("")')
        if [ "$state" = "$want" ]; then
            mark "$name" vm="$vm" boot="${BOOT[$vm]:-0}"
            return 0
        fi
        # A guest's report is final for this boot; waiting on would only cost time.
        if [ "$state" = failed ]; then
            mark "$name-failed" vm="$vm" boot="${BOOT[$vm]:-0}" state=failed
            return 1
        fi
        sleep 3
    done
    mark "$name-timeout" vm="$vm" boot="${BOOT[$vm]:-0}" after="${limit}s" state="${state:-none}"
    return 1
}

# Wait (bounded) until the VM's console shows an extended regex; mark it as NAME.
wait_console() {
    local vm=$1 regex=$2 name=$3 limit=$4 end=$((SECONDS + $4))
    while [ $SECONDS -lt $end ]; do
        if grep -Eq "$regex" "$CONSOLES/guest-$vm.log" 2>/dev/null; then
            mark "$name" vm="$vm" boot="${BOOT[$vm]:-0}"
            return 0
        fi
        sleep 1
    done
    mark "$name-timeout" vm="$vm" boot="${BOOT[$vm]:-0}" after="${limit}s"
    return 1
}

# Orderly shutdown (bounded), so the guest disk is clean for the harness to read.
shutdown_vm() {
    local vm=$1 limit=${2:-120}
    mark xl-shutdown-start vm="$vm" boot="${BOOT[$vm]:-0}"
    if timeout "$limit" xl shutdown -w "$vm"; then
        mark xl-shutdown-done vm="$vm" boot="${BOOT[$vm]:-0}"
    else
        xl destroy "$vm"
        mark xl-destroyed vm="$vm" boot="${BOOT[$vm]:-0}" after="${limit}s"
    fi
    unwatch "$vm"
    cp "$CONSOLES/guest-$vm.log" "$R/console-$vm-boot${BOOT[$vm]:-0}.log" 2>/dev/null
    # QEMU serves the VM's disks and channels (qdisk): its log says why one failed.
    cp "/var/log/xen/qemu-dm-$vm.log" "$R/qemu-dm-$vm-boot${BOOT[$vm]:-0}.log" 2>/dev/null
}

# The VM's disk as dom0 sees it (QEMU's qdisk serves dom0's /dev/vdX to the guest).
disk_of() {
    grep -o 'vdev=xvda[^"]*' "/etc/xen/$1.cfg" | grep -o 'target=/dev/[a-z0-9]*' | cut -d= -f2
}

# After shutdown: copy the guest probe's record of this boot (files/guest-report) off the
# VM's disk into $R/<vm>-boot<N>/, with debugfs (no mount; the disk is not in use).
snapshot() {
    local vm=$1 dest="$R/$1-boot${BOOT[$1]:-0}" dev
    dev=$(disk_of "$vm")
    mkdir -p "$dest"
    debugfs -R "rdump /var/lib/xenchannel-e2e $dest" "$dev" >"$dest.debugfs.log" 2>&1
    mark snapshot vm="$vm" boot="${BOOT[$vm]:-0}" disk="$dev"
}

# Ask the VM's in-guest agent over the channel, through the dom0 agent (bounded).
query() {
    local vm=$1
    if timeout 60 python3 -m xenchannel.dom0 query "$vm" --timeout 20 >"$R/$vm-query.json" \
        2>"$R/$vm-query.err"; then
        mark query-answered vm="$vm" boot="${BOOT[$vm]:-0}"
    else
        mark query-failed vm="$vm" boot="${BOOT[$vm]:-0}"
    fi
}

# The raw channel benchmark against the guest's echo service (files/channel-bench).
channel_bench() {
    local vm=$1 socket=$2
    mark channel-bench-start vm="$vm" boot="${BOOT[$vm]:-0}"
    if timeout 600 /usr/sbin/xenchannel-e2e-channel-bench "$socket" 300 >"$R/channel-bench.json"; then
        mark channel-bench-done vm="$vm" boot="${BOOT[$vm]:-0}"
    else
        mark channel-bench-failed vm="$vm" boot="${BOOT[$vm]:-0}"
    fi
    cat "$R/channel-bench.json"
}

# The NoCloud baseline: vm1's xl config (the domain role's), without the channel, on its
# own copy of the template, with a cidata ISO as the second disk, the way Xen Orchestra
# gives a VM its cloud config today. boot.py makes the ISO (/dev/vdf). Attached
# read-write: QEMU's qdisk backend never connected it read-only (state -1 in xenstore).
nocloud_config() {
    sed -e '/^channel/d' -e '/^uuid/d' -e 's/^name = .*/name = "nocloud"/' \
        -e 's|^disk = .*|disk = [ "format=raw,backendtype=qdisk,vdev=xvda,access=rw,target=/dev/vde", "format=raw,backendtype=qdisk,vdev=xvdb,access=rw,target=/dev/vdf" ]|' \
        /etc/xen/vm1.cfg >/etc/xen/nocloud.cfg
    cp /etc/xen/nocloud.cfg "$R/nocloud.cfg"
}

# dom0's view, for the report: xenstore's channel entries, the agent's status. TAG names
# the moment (the files are <name>-<tag>.*).
collect() {
    local tag=${1:-end}
    xenstore-ls -f /local/domain/0/backend/console >"$R/xenstore-backend-$tag.txt" 2>&1
    xl list >"$R/xl-list-$tag.txt" 2>&1
    python3 -m xenchannel.dom0 status --json >"$R/agent-status-$tag.json" \
        2>"$R/agent-status-$tag.err"
    rm -rf "$R/agent-state-$tag"
    cp -r /var/lib/xenchannel/state "$R/agent-state-$tag" 2>/dev/null
}

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

# xl create a VM from the config the domain role wrote, and stream its console to ours,
# each line prefixed with the VM's name.
# Further arguments are xl's KEY=VALUE overrides of the config (an experiment's extra=).
create() {
    local vm=$1
    shift
    rm -f "$CONSOLES/guest-$vm.log"
    mark xl-create-start vm="$vm"
    # Nothing after this can work without the VM: end the job (dom0 then powers off).
    xl create "/etc/xen/$vm.cfg" "$@" || { mark xl-create-failed vm="$vm"; exit 1; }
    mark xl-create-done vm="$vm"
    (tail -n +1 -F "$CONSOLES/guest-$vm.log" 2>/dev/null | sed -u "s/^/[$vm] /") &
    watch_phases "$vm"
}

# Mark the guest's boot phases as they appear on its console (in the background, bounded
# by the job's own timeout): kernel, systemd, cloud-init's stages, multi-user.
watch_phases() {
    local vm=$1 log="$CONSOLES/guest-$1.log" seen="" entry name regex
    local phases=(
        "guest-kernel|Linux version"
        "guest-systemd|Welcome to .*Debian"
        "guest-cloud-init-local|running 'init-local'"
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
                    mark "$name" vm="$vm"
                    seen="$seen $name"
                fi
            done
            sleep 1
        done
    ) &
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
            mark "$name" vm="$vm"
            return 0
        fi
        # A guest's report is final for this boot; waiting on would only cost time.
        if [ "$state" = failed ]; then
            mark "$name-failed" vm="$vm" state=failed
            return 1
        fi
        sleep 3
    done
    mark "$name-timeout" vm="$vm" after="${limit}s" state="${state:-none}"
    return 1
}

# Wait (bounded) until the VM's console shows an extended regex; mark it as NAME.
wait_console() {
    local vm=$1 regex=$2 name=$3 limit=$4 end=$((SECONDS + $4))
    while [ $SECONDS -lt $end ]; do
        if grep -Eq "$regex" "$CONSOLES/guest-$vm.log" 2>/dev/null; then
            mark "$name" vm="$vm"
            return 0
        fi
        sleep 1
    done
    mark "$name-timeout" vm="$vm" after="${limit}s"
    return 1
}

# Orderly shutdown (bounded), so the guest disk is clean for the harness to read.
shutdown_vm() {
    local vm=$1 limit=${2:-120}
    mark xl-shutdown-start vm="$vm"
    if timeout "$limit" xl shutdown -w "$vm"; then
        mark xl-shutdown-done vm="$vm"
    else
        xl destroy "$vm"
        mark xl-destroyed vm="$vm" after="${limit}s"
    fi
    cp "$CONSOLES/guest-$vm.log" "$R/console-$vm.log" 2>/dev/null
}

# dom0's view, for the report: xenstore's channel entries, the agent's status.
collect() {
    xenstore-ls -f /local/domain/0/backend/console >"$R/xenstore-backend.txt" 2>&1
    xl list >"$R/xl-list.txt" 2>&1
    python3 -m xenchannel.dom0 status --json >"$R/agent-status.json" 2>"$R/agent-status.err"
    cp -r /var/lib/xenchannel/state "$R/agent-state" 2>/dev/null
}

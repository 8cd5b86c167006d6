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
    (umask 077; exec $cmd >>"$R/agent.log" 2>&1) &
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

# Why a VM's current boot cannot go on ("" while it can): set when its xl create fails or
# the domain dies, so the steps after it mark themselves skipped with the reason at once
# instead of waiting out their bounds for a VM that is not there.
declare -A FAILED
# Whether the VM's current boot got past xl create (its disk then holds this boot's record).
declare -A STARTED

# Skip a step (mark NAME-skipped with the reason) when the VM's boot has failed.
skip_if_failed() {
    local vm=$1 name=$2
    [ -z "${FAILED[$vm]:-}" ] && return 1
    mark "$name-skipped" vm="$vm" boot="${BOOT[$vm]:-0}" reason="${FAILED[$vm]}"
    return 0
}

# Record that the VM's boot cannot go on, and mark it.
fail_vm() {
    local vm=$1 name=$2 reason=$3
    FAILED[$vm]=$reason
    mark "$name" vm="$vm" boot="${BOOT[$vm]:-0}" reason="$reason"
}

# The domain still exists (xl knows its name).
vm_exists() { xl domid "$1" >/dev/null 2>&1; }

# Xen frees a destroyed or shut-down domain's memory asynchronously (it scrubs the pages
# first), so `xl create` right after a shutdown can find too little and fail with "can't
# allocate low memory for domain". Wait (bounded) until the hypervisor has what the VM's
# config asks for plus a margin for the domain's own overhead (page tables, p2m, rings).
# One `xl info` per poll: under emulation on a busy machine each costs seconds.
MEMORY_MARGIN_MIB=64
wait_memory() {
    local vm=$1 limit=${2:-120} need info free total end
    need=$(sed -n 's/^memory *= *"\{0,1\}\([0-9][0-9]*\).*/\1/p' "/etc/xen/$vm.cfg" | head -n 1)
    need=$(( ${need:-512} + MEMORY_MARGIN_MIB ))
    end=$((SECONDS + limit))
    while :; do
        info=$(xl info 2>/dev/null)
        free=$(printf '%s\n' "$info" | sed -n 's/^free_memory *: *\([0-9][0-9]*\).*/\1/p')
        total=$(printf '%s\n' "$info" | sed -n 's/^total_memory *: *\([0-9][0-9]*\).*/\1/p')
        if [ -n "$total" ] && [ "$total" -lt "$need" ]; then
            fail_vm "$vm" xl-create-failed "the VM needs $need MiB and Xen has $total MiB in all"
            return 1
        fi
        if [ -n "$free" ] && [ "$free" -ge "$need" ]; then
            mark xen-memory-ready vm="$vm" boot="${BOOT[$vm]}" free_mib="$free" need_mib="$need"
            return 0
        fi
        if [ $SECONDS -ge $end ]; then
            fail_vm "$vm" xl-create-failed "Xen has ${free:-?} MiB free after ${limit}s, the VM needs $need MiB"
            return 1
        fi
        sleep 1
    done
}

# Failures of xl create that say nothing about the VM: libxl's compiled-in bounds on the
# device model (60 s to start, 10 s per QMP command) are short for QEMU in a dom0 under
# software emulation on a busy machine ("Post DM startup configs failed, rc=-9", i.e.
# ERROR_TIMEDOUT), and memory can still be short for a moment. These are retried.
TRANSIENT_CREATE='device model did not start|rc=-9|[Tt]imed out|Out of memory'
CREATE_ATTEMPTS=3

# xl create a VM from the config the domain role wrote, and stream its console to ours,
# each line prefixed with the VM's name. Every mark about the VM says vm= and boot=.
# Further arguments are xl's KEY=VALUE overrides of the config (an experiment's extra=).
create() {
    local vm=$1 log reason attempt=1
    shift
    BOOT[$vm]=$((${BOOT[$vm]:-0} + 1))
    FAILED[$vm]=
    STARTED[$vm]=
    mark xl-create-start vm="$vm" boot="${BOOT[$vm]}"
    while :; do
        log="$R/xl-create-$vm-boot${BOOT[$vm]}-try$attempt.log"
        wait_memory "$vm" 120 || return 1
        # A failed attempt's console must not pass for this one's.
        rm -f "$CONSOLES/guest-$vm.log"
        mark xl-create-exec vm="$vm" boot="${BOOT[$vm]}" attempt="$attempt"
        if xl create "/etc/xen/$vm.cfg" "$@" >"$log" 2>&1; then
            cat "$log"
            break
        fi
        cat "$log"
        # libxl's first error names the cause; the later ones are its clean-up.
        reason=$(grep -m 1 'error' "$log" | tr -s ' \t' ' ')
        reason=${reason:-see $log}
        # Nothing of a failed create may be left to hold the name or the memory.
        vm_exists "$vm" && xl destroy "$vm" >/dev/null 2>&1
        if [ "$attempt" -ge "$CREATE_ATTEMPTS" ] || ! grep -Eq "$TRANSIENT_CREATE" "$log"; then
            fail_vm "$vm" xl-create-failed "xl create failed (attempt $attempt): $reason"
            return 1
        fi
        mark xl-create-retry vm="$vm" boot="${BOOT[$vm]}" attempt="$attempt" reason="$reason"
        attempt=$((attempt + 1))
    done
    STARTED[$vm]=1
    mark xl-create-done vm="$vm" boot="${BOOT[$vm]}" attempts="$attempt"
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
    skip_if_failed "$vm" "$name" && return 1
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
        if ! vm_exists "$vm"; then
            fail_vm "$vm" "$name-died" "the domain died (see its console)"
            return 1
        fi
        sleep 3
    done
    mark "$name-timeout" vm="$vm" boot="${BOOT[$vm]:-0}" after="${limit}s" state="${state:-none}"
    return 1
}

# Wait (bounded) until the VM's console shows an extended regex; mark it as NAME.
wait_console() {
    local vm=$1 regex=$2 name=$3 limit=$4 end=$((SECONDS + $4)) next_check=$((SECONDS + 5))
    skip_if_failed "$vm" "$name" && return 1
    while [ $SECONDS -lt $end ]; do
        if grep -Eq "$regex" "$CONSOLES/guest-$vm.log" 2>/dev/null; then
            mark "$name" vm="$vm" boot="${BOOT[$vm]:-0}"
            return 0
        fi
        # xl itself costs a moment under emulation: ask whether the domain lives every 5 s.
        if [ $SECONDS -ge $next_check ]; then
            next_check=$((SECONDS + 5))
            if ! vm_exists "$vm"; then
                fail_vm "$vm" "$name-died" "the domain died (see its console)"
                return 1
            fi
        fi
        sleep 1
    done
    mark "$name-timeout" vm="$vm" boot="${BOOT[$vm]:-0}" after="${limit}s"
    return 1
}

# Orderly shutdown (bounded), so the guest disk is clean for the harness to read.
shutdown_vm() {
    local vm=$1 limit=${2:-120}
    if ! vm_exists "$vm"; then
        # Nothing to shut down (xl create failed, or the domain died): keep what it left.
        mark xl-shutdown-skipped vm="$vm" boot="${BOOT[$vm]:-0}" reason="${FAILED[$vm]:-no such domain}"
        unwatch "$vm"
        cp "$CONSOLES/guest-$vm.log" "$R/console-$vm-boot${BOOT[$vm]:-0}.log" 2>/dev/null
        cp "/var/log/xen/qemu-dm-$vm.log" "$R/qemu-dm-$vm-boot${BOOT[$vm]:-0}.log" 2>/dev/null
        return 1
    fi
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
    # The disk would still hold the previous boot's record: never pass it off as this one's.
    if [ -z "${STARTED[$vm]:-}" ]; then
        mark snapshot-skipped vm="$vm" boot="${BOOT[$vm]:-0}" reason="${FAILED[$vm]:-not started}"
        return 1
    fi
    dev=$(disk_of "$vm")
    mkdir -p "$dest"
    debugfs -R "rdump /var/lib/xenchannel-e2e $dest" "$dev" >"$dest.debugfs.log" 2>&1
    mark snapshot vm="$vm" boot="${BOOT[$vm]:-0}" disk="$dev"
}

# Ask the VM's in-guest agent over the channel, through the dom0 agent (bounded).
query() {
    local vm=$1
    skip_if_failed "$vm" query && return 1
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
    skip_if_failed "$vm" channel-bench && return 1
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

# A VM that xl cannot create (its kernel does not exist): the harness's own check that a
# failed create is reported with xl's reason and the steps after it are skipped at once.
broken_config() {
    sed -e '/^channel/d' -e '/^uuid/d' -e '/^disk/d' -e 's/^name = .*/name = "broken"/' \
        -e 's|^kernel = .*|kernel = "/nonexistent/vmlinuz"|' /etc/xen/vm1.cfg >/etc/xen/broken.cfg
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

# --------------------------------------------------------------------------- network

# dom0's side of the clones' network, as an operator sets up a Xen host: xenbr0 carries
# the static addresses (dom0 192.0.2.1), xenbr1 the DHCP ones (dom0 198.51.100.1, dnsmasq
# serving 198.51.100.100-199, with no router or DNS option so that a clone's default
# route stays the static one). libxl runs the vif-bridge hotplug script itself
# (run_hotplug_scripts, xl's default): this dom0 has no udev running for it.
DHCP_LEASES=/run/xenchannel-e2e-dnsmasq.leases
net_up() {
    modprobe bridge 2>/dev/null
    ip link set lo up
    if ! { ip link add xenbr0 type bridge forward_delay 0 stp_state 0 &&
        ip addr add 192.0.2.1/24 dev xenbr0 && ip link set xenbr0 up &&
        ip link add xenbr1 type bridge forward_delay 0 stp_state 0 &&
        ip addr add 198.51.100.1/24 dev xenbr1 && ip link set xenbr1 up; }; then
        mark net-up-failed reason="ip link could not make the bridges"
        return 1
    fi
    # dnsmasq-base: no configuration file, no DNS (port 0), leases with each client id.
    if ! dnsmasq --conf-file=/dev/null --port=0 --interface=xenbr1 --bind-interfaces \
        --dhcp-range=198.51.100.100,198.51.100.199,255.255.255.0,12h \
        --dhcp-option=3 --dhcp-option=6 --dhcp-authoritative \
        --dhcp-leasefile="$DHCP_LEASES" --log-dhcp --log-facility="$R/dnsmasq.log" \
        --pid-file=/run/xenchannel-e2e-dnsmasq.pid --user=root --group=root; then
        mark net-up-failed reason="dnsmasq did not start (see $R/dnsmasq.log)"
        return 1
    fi
    mark net-up bridges="xenbr0 xenbr1" dhcp=xenbr1
}


# Wait (bounded) until the agent judges the VM ready (its report: applied, every static
# address up, cloud-init without errors); keep its record as $R/<vm>-boot<N>-ready.json.
wait_ready() {
    local vm=$1 limit=$2 end=$((SECONDS + $2)) ready="" out
    out="$R/$vm-boot${BOOT[$vm]:-0}-ready.json"
    skip_if_failed "$vm" agent-ready && return 1
    while [ $SECONDS -lt $end ]; do
        python3 -m xenchannel.dom0 status "$vm" --json >"$out" 2>/dev/null
        ready=$(python3 -c '
import json, sys
try:
    print(json.load(open(sys.argv[1]))["summary"]["ready"])
except (OSError, ValueError, KeyError, TypeError):
    print("")' "$out")
        if [ "$ready" = yes ]; then
            mark agent-ready vm="$vm" boot="${BOOT[$vm]:-0}"
            return 0
        fi
        if [ "$ready" = failed ]; then
            mark agent-ready-failed vm="$vm" boot="${BOOT[$vm]:-0}"
            return 1
        fi
        if ! vm_exists "$vm"; then
            fail_vm "$vm" agent-ready-died "the domain died (see its console)"
            return 1
        fi
        sleep 3
    done
    mark agent-ready-timeout vm="$vm" boot="${BOOT[$vm]:-0}" after="${limit}s"
    return 1
}

# The address to reach a clone at, its IPv4 addresses and a known_hosts of the host keys
# it reported, into DIR: from the agent's status record (wait_ready's), or with "query"
# from a report query's answer.
net_facts() {
    python3 - "$@" <<'PY'
import json, sys
path, out = sys.argv[1], sys.argv[2]
source = sys.argv[3] if len(sys.argv) > 3 else "status"
with open(path) as f:
    record = json.load(f)
report = record.get("report") or {}
if source == "status":
    with open(out + "/address", "w") as f:
        f.write(record["summary"]["address"] + "\n")
    with open(out + "/ipv4", "w") as f:
        for interface in report.get("interfaces") or []:
            for a in interface.get("addresses") or []:
                if ":" not in a and not a.startswith("127."):
                    f.write(a.split("/")[0] + "\n")
with open(out + "/address") as f:
    address = f.read().strip()
with open(out + "/known_hosts", "w") as f:
    for key in report.get("host_keys") or []:
        f.write(f"{address} {key}\n")
with open(out + "/keys-source", "w") as f:
    f.write(source + "\n")
PY
}

# Wait (bounded) until ADDRESS accepts TCP connections on PORT.
wait_port() {
    local end=$((SECONDS + $3))
    while [ $SECONDS -lt $end ]; do
        timeout 5 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null && return 0
        sleep 2
    done
    return 1
}

# From dom0, with what the clone reported over its channel (wait_ready's record): ping
# every IPv4 address it reported, then ssh in at its address with the bundle's key
# (/root/.ssh/e2e-<vm>, put there by build.py) and strict host key checking against a
# known_hosts made of the reported host keys only, and run the clone's own account of
# itself. Results in $R/<vm>-boot<N>-net/.
net_check() {
    local vm=$1 user=$2 dir addr a rc
    dir="$R/$vm-boot${BOOT[$vm]:-0}-net"
    skip_if_failed "$vm" net-check && return 1
    mkdir -p "$dir"
    net_facts "$R/$vm-boot${BOOT[$vm]:-0}-ready.json" "$dir" || return 1
    # dnsmasq's leases (expiry, MAC, address, hostname, client id) while the clone holds
    # its own: dhcpcd releases it at shutdown, and dnsmasq then drops the line.
    cp "$DHCP_LEASES" "$dir/dnsmasq.leases" 2>/dev/null
    addr=$(cat "$dir/address")
    if [ ! -s "$dir/known_hosts" ]; then
        # The report the clone sent with its STATUS had no host keys: it was sent before
        # the clone made them. Once sshd listens (its keys exist then), ask the in-guest
        # agent for its report now, over the channel, and pin the keys it gives.
        mark host-keys-not-reported vm="$vm" boot="${BOOT[$vm]:-0}"
        wait_port "$addr" 22 180
        timeout 60 python3 -m xenchannel.dom0 query "$vm" --what report --timeout 20 \
            >"$dir/query.json" 2>"$dir/query.err"
        net_facts "$dir/query.json" "$dir" query || return 1
    fi
    while read -r a; do
        if ping -c 2 -W 10 "$a" >"$dir/ping-$a.txt" 2>&1; then
            mark ping-ok vm="$vm" boot="${BOOT[$vm]:-0}" address="$a"
        else
            mark ping-failed vm="$vm" boot="${BOOT[$vm]:-0}" address="$a"
        fi
    done <"$dir/ipv4"
    # The guest's own account: hostname, machine-id, and cloud-init's status where it
    # ran, else the in-guest agent's (it has no status command: its unit's state and
    # the instance it recorded). Expanded in the clone, not here:
    # shellcheck disable=SC2016
    timeout 120 ssh -i "/root/.ssh/e2e-$vm" -o BatchMode=yes -o StrictHostKeyChecking=yes \
        -o UserKnownHostsFile="$dir/known_hosts" -o GlobalKnownHostsFile=/dev/null \
        -o ConnectTimeout=60 "$user@$addr" \
        'echo "hostname=$(hostname)"; echo "machine-id=$(cat /etc/machine-id)";
         if command -v cloud-init >/dev/null; then cloud-init status --long;
         else echo "agent=$(systemctl is-active xenchannel-guest-agent.service)";
              cat /var/lib/xenchannel/applied.json 2>/dev/null; fi' \
        >"$dir/ssh.txt" 2>"$dir/ssh.err"
    rc=$?
    if [ $rc -eq 0 ]; then
        mark ssh-ok vm="$vm" boot="${BOOT[$vm]:-0}" address="$addr"
    else
        mark ssh-failed vm="$vm" boot="${BOOT[$vm]:-0}" address="$addr" rc=$rc
    fi
    cat "$dir/ssh.txt" "$dir/ssh.err"
}

# The guide's flow (docs/guide-provisioning.md, "Reaching a new VM without trusting on
# first use"), run by ansible-playbook in dom0 for one VM: channel_status wait_for
# ready, known_hosts from the reported keys, add_host at the reported address with
# StrictHostKeyChecking=yes, then a play over SSH.
guide_flow() {
    local vm=$1 user=$2 dir
    dir="$R/$vm-boot${BOOT[$vm]:-0}-guide"
    skip_if_failed "$vm" guide-flow && return 1
    mkdir -p "$dir"
    cp /etc/xenchannel-e2e/guide-flow.yml "$dir/guide-flow.yml"
    # dom0 itself by a local connection; not `-c local`, which would hold for the hosts
    # add_host adds too, and run the play "over SSH" in dom0.
    echo "localhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3" \
        >"$dir/inventory"
    mark guide-flow-start vm="$vm" boot="${BOOT[$vm]:-0}"
    if HOME=/root ANSIBLE_NOCOLOR=1 ANSIBLE_LOCAL_TEMP=/tmp/ansible-local \
        ANSIBLE_COLLECTIONS_PATH=/usr/share/ansible/collections \
        timeout 600 ansible-playbook -i "$dir/inventory" "$dir/guide-flow.yml" \
        -e "vm=$vm" -e "vm_user=$user" -e "ssh_key=/root/.ssh/e2e-$vm" \
        >"$dir/ansible.log" 2>&1; then
        mark guide-flow-done vm="$vm" boot="${BOOT[$vm]:-0}"
    else
        mark guide-flow-failed vm="$vm" boot="${BOOT[$vm]:-0}" rc=$?
    fi
    tail -n 40 "$dir/ansible.log"
}

#!/bin/sh
# List what a template must not hand on to its clones, one "ACTION<TAB>PATH" per line:
#   truncate   emptied in place (machine-id, logs): the file stays, its content goes
#   remove     deleted (host keys, leases, history, the agent's record, ...)
#   cloud-init removed by `cloud-init clean --logs --seed` (cloud-init's state and logs)
# Read-only: it never changes anything. Part of xenchannel.provision.template_prep.
# Usage: list-instance-state.sh CLOUD_INIT_CLEAN(0|1) [EXTRA_PATH...]
set -u
LC_ALL=C
export LC_ALL
NL='
'
CLEAN=${1:-1}
[ $# -gt 0 ] && shift

emit() {
    printf '%s\t%s\n' "$1" "$2"
}

# emit_found ACTION DIR FIND-ARGS...: files under DIR, never names holding a newline
# (they could not be told apart in this list).
emit_found() {
    action=$1 dir=$2
    shift 2
    [ -d "$dir" ] || return 0
    find "$dir" "$@" ! -name "*${NL}*" -print 2>/dev/null | while IFS= read -r path; do
        emit "$action" "$path"
    done
}

cloud_init=0
if [ "$CLEAN" = 1 ] && [ -x /usr/bin/cloud-init ]; then
    cloud_init=1
fi

# systemd makes a new machine-id at the next boot when the file is empty.
[ -s /etc/machine-id ] && emit truncate /etc/machine-id
# Debian links this to /etc/machine-id; a copy of its own would outlive the truncation.
if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then
    emit remove /var/lib/dbus/machine-id
fi
# Every clone must make its own host keys (ssh's first start or cloud-init does).
emit_found remove /etc/ssh -maxdepth 1 -type f -name 'ssh_host_*'
emit_found remove /etc/udev/rules.d -maxdepth 1 -type f -name '70-persistent-net.rules'
# The in-guest agent's record of the applied instance: a clone must apply its own.
emit_found remove /var/lib/xenchannel -maxdepth 1 -type f \
    \( -name applied.json -o -name user-data-script -o -name user-data-script.log \)
# A clone sharing the template's random seed would start from the same entropy.
emit_found remove /var/lib/systemd -maxdepth 1 -type f -name random-seed
# DHCP leases: isc-dhclient, dhcpcd, NetworkManager, systemd-networkd.
emit_found remove /var/lib/dhcp -maxdepth 1 -type f -name '*.leases'
emit_found remove /var/lib/dhclient -maxdepth 1 -type f -name '*.lease*'
emit_found remove /var/lib/dhcpcd -maxdepth 1 -type f -name '*.lease*'
emit_found remove /var/lib/NetworkManager -maxdepth 1 -type f -name '*.lease'
emit_found remove /var/lib/systemd/network -maxdepth 2 -type f -path '*/leases/*'
# Shell and tool history of root and of every user.
for home in /root /home/*; do
    emit_found remove "$home" -maxdepth 1 -type f \
        \( -name .bash_history -o -name .python_history -o -name .lesshst -o -name .viminfo \)
done
# Logs: archived journal files (user@..., system@...) and rotated logs go; the active
# journal stays, since journald recreates it at once; current logs are emptied in place (daemons
# keep them open), login records too.
emit_found remove /var/log/journal -type f \( -name '*@*.journal' -o -name '*.journal~' \)
emit_found remove /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \)
if [ "$cloud_init" = 1 ]; then
    emit_found truncate /var/log -type f -size +0 -name '*.log' ! -name 'cloud-init*.log'
    emit_found cloud-init /var/log -maxdepth 1 -type f -name 'cloud-init*.log'
    emit_found cloud-init /var/lib/cloud -mindepth 1 -maxdepth 1
else
    emit_found truncate /var/log -type f -size +0 -name '*.log'
fi
for record in wtmp btmp lastlog faillog; do
    [ -s "/var/log/$record" ] && emit truncate "/var/log/$record"
done
for path in "$@"; do
    [ -e "$path" ] || [ -L "$path" ] && emit remove "$path"
done
exit 0

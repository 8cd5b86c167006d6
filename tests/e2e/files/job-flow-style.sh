# shellcheck shell=bash
# Experiment: the default job, after rewriting the template's datasource_list on vm1's disk
# (from dom0, before xl create) into the one-line flow style ds-identify can read: what the
# cloud_init_datasource role would render with the fix proposed in docs/e2e.md.
mkdir -p /mnt/vm1
mount /dev/vdc /mnt/vm1 || exit 1
cfg=/mnt/vm1/etc/cloud/cloud.cfg.d/90-xenchannel.cfg
sed -i '/^datasource_list:$/,/^- None$/c\datasource_list: ["XenChannel", "NoCloud", "None"]' "$cfg"
grep -n datasource_list "$cfg"
umount /mnt/vm1
mark flow-style-applied
start_agent
create vm1
wait_console vm1 'Reached target.*[Mm]ulti-[Uu]ser' guest-multi-user-seen 900
wait_status vm1 applied agent-status-applied 240
collect
shutdown_vm vm1 300
stop_agent

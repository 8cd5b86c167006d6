# shellcheck shell=bash
# Experiment: the default job, with cloud-init's datasource named on the guest's kernel
# command line (ci.ds=XenChannel), which makes ds-identify skip datasource_list. It shows
# how far the flow gets past the ds-identify finding in docs/e2e.md; not a fix.
start_agent
create vm1 'extra="console=hvc0 root=/dev/xvda ci.ds=XenChannel"'
wait_console vm1 'Reached target.*[Mm]ulti-[Uu]ser' guest-multi-user-seen 900
wait_status vm1 applied agent-status-applied 240
collect
shutdown_vm vm1 300
stop_agent

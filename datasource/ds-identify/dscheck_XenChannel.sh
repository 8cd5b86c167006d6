# ds-identify check for cloud-init's XenChannel datasource (xenchannel project).
# ds-identify calls dscheck_<Name> for each name in datasource_list; without this
# function cloud-init 25.x's default policy disables cloud-init on a guest whose
# datasource_list holds XenChannel and another source. Installed by
# datasource/install-ds-identify-check.sh, which inserts it into ds-identify.
#
# ds-identify runs as a systemd generator, before udev: /dev/xen-channel and
# /dev/virtio-ports may not exist yet. So, in this order:
#   /dev/xen-channel/<name> or /dev/virtio-ports/<name> exists    -> found
#   a virtio port named <name> in sysfs (no udev needed)          -> found
#   a Xen guest with a secondary PV console (console-N on xenbus) -> found
#     (its name is in xenstore, which udev's helper reads later; the datasource
#     then waits for the link: wait_timeout, 2 s, and while udev is still busy
#     up to udev_timeout, 60 s, more)
#   otherwise, a Xen guest without one too                        -> not found
# A Xen channel is a xenbus device console-N; the primary console never is one, and the
# kernel enumerates xenbus devices before any generator runs. A clone of the same
# template created without the channel (a NoCloud config disk instead, say) is then not
# claimed by XenChannel, so the other source is found and cloud-init pays no wait.
# The channel name defaults to org.xenchannel.provision.0; set
# DI_XENCHANNEL_NAME (e.g. in /usr/libexec/ds-identify-env on 25.x) for another.
# POSIX sh plus `local`, like ds-identify itself; every path is under PATH_ROOT.
dscheck_XenChannel() {
    local name="${DI_XENCHANNEL_NAME:-org.xenchannel.provision.0}" f=""
    if [ -e "${PATH_ROOT}/dev/xen-channel/${name}" ] ||
        [ -e "${PATH_ROOT}/dev/virtio-ports/${name}" ]; then
        return "${DS_FOUND}"
    fi
    # ds-identify runs with globbing off (set -f): find, not a glob. The port
    # directories are symlinks into /sys/devices, hence -L.
    f="${PATH_ROOT}/sys/class/virtio-ports"
    if [ -d "$f" ] && find -L "$f" -mindepth 2 -maxdepth 2 -name name -type f \
        -exec grep -qxF -- "$name" {} \; -print 2>/dev/null | grep -q .; then
        return "${DS_FOUND}"
    fi
    f="${PATH_ROOT}/sys/bus/xen/devices"
    if [ -d "$f" ] && find -L "$f" -mindepth 1 -maxdepth 1 -name 'console-*' 2>/dev/null |
        grep -q .; then
        return "${DS_FOUND}"
    fi
    return "${DS_NOT_FOUND}"
}

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
# DI_XENCHANNEL_NAME (e.g. in /usr/libexec/ds-identify-env on 25.x) for another. A
# value that is not a channel name (the rule of runtime/xenchannel/channel_name.py,
# which xenchannel_valid_name below decides as it does: tests/integration/
# test_udev_setup.py runs both against it) is never looked up as a path: it is a
# warning naming the variable and the fix, and XenChannel is not found.
# POSIX sh plus `local`, like ds-identify itself; every path is under PATH_ROOT.
XENCHANNEL_MAX_NAME=128

xenchannel_valid_label() {
    case $1 in
    '' | [!a-z0-9]* | *[!a-z0-9]) return 1 ;;
    esac
    return 0
}

xenchannel_valid_name() {
    local version="" labels="" label="" count=0
    case $1 in
    '' | *[!a-z0-9._-]* | [!a-z]*) return 1 ;;
    esac
    [ "${#1}" -le "$XENCHANNEL_MAX_NAME" ] || return 1
    version=${1##*.}
    labels=${1%.*}
    [ "$labels" != "$1" ] || return 1
    case $version in
    0) ;;
    '' | 0* | *[!0-9]*) return 1 ;;
    esac
    while :; do
        label=${labels%%.*}
        xenchannel_valid_label "$label" || return 1
        count=$((count + 1))
        [ "$label" != "$labels" ] || break
        labels=${labels#*.}
    done
    [ "$count" -ge 2 ]
}

dscheck_XenChannel() {
    local name="${DI_XENCHANNEL_NAME:-org.xenchannel.provision.0}" f=""
    if ! xenchannel_valid_name "$name"; then
        warn "XenChannel: DI_XENCHANNEL_NAME '$(printf '%s' "$name" |
            tr -c 'A-Za-z0-9._-' '?' | cut -c 1-64)' is not a channel name; set it to" \
            "a versioned reverse domain name such as org.xenchannel.provision.0, or unset it"
        return "${DS_NOT_FOUND}"
    fi
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

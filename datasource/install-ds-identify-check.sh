#!/bin/sh
# Usage: install-ds-identify-check.sh ROOT
#        install-ds-identify-check.sh --locate ROOT
# Insert dscheck_XenChannel (ds-identify/dscheck_XenChannel.sh, beside this script)
# into ROOT's ds-identify, before ds-identify's main invocation (its `noop()` function,
# present in cloud-init 22.4 to 26.x). Idempotent: a block between marker lines is
# replaced, not added twice. A cloud-init package upgrade replaces ds-identify, so run
# this again afterwards (e.g. from a dpkg trigger or the image build). Exits non-zero,
# changing nothing, if the anchor is not found.
#
# Which ds-identify: the one cloud-init's own systemd generator runs (its
# `dsidentify="..."` line; Debian and Ubuntu: /usr/lib/cloud-init/ds-identify, RHEL and
# its rebuilds, Fedora: /usr/libexec/cloud-init/ds-identify). Without a generator, the
# first of those two that exists. --locate prints that path and changes nothing; it
# exits 3 when ROOT has no ds-identify at all.
set -eu

LOCATE=0
if [ "${1:-}" = --locate ]; then
    LOCATE=1
    shift
fi
if [ $# -ne 1 ]; then
    echo "usage: $0 [--locate] ROOT" >&2
    exit 2
fi
ROOT=${1%/}
HERE=$(cd "$(dirname "$0")" && pwd)
CHECK="$HERE/ds-identify/dscheck_XenChannel.sh"
BEGIN="# >>> xenchannel dscheck_XenChannel >>>"
END="# <<< xenchannel dscheck_XenChannel <<<"

# The ds-identify ROOT's cloud-init runs, printed as a path under ROOT.
locate() {
    for generator in "$ROOT/usr/lib/systemd/system-generators/cloud-init-generator" \
        "$ROOT/lib/systemd/system-generators/cloud-init-generator"; do
        [ -f "$generator" ] || continue
        named=$(sed -n 's/^[[:space:]]*dsidentify=["'"'"']\{0,1\}\([^"'"'"' ]*\).*/\1/p' \
            "$generator" | head -n 1)
        case "$named" in
        /*) ;;
        *) continue ;; # a generator without the line (or a stand-in such as /bin/true)
        esac
        if [ -f "$ROOT$named" ]; then
            echo "$ROOT$named"
            return 0
        fi
        echo "$0: $generator runs $named, which is not in $ROOT;" \
            "reinstall cloud-init there" >&2
        return 3
    done
    for candidate in usr/lib/cloud-init/ds-identify usr/libexec/cloud-init/ds-identify; do
        if [ -f "$ROOT/$candidate" ]; then
            echo "$ROOT/$candidate"
            return 0
        fi
    done
    echo "$0: no ds-identify in $ROOT/usr/lib/cloud-init or $ROOT/usr/libexec/cloud-init" \
        "(is cloud-init installed in $ROOT?)" >&2
    return 3
}

TARGET=$(locate) || exit $?
if [ "$LOCATE" = 1 ]; then
    echo "$TARGET"
    exit 0
fi
grep -q '^noop() {' "$TARGET" || {
    echo "$0: no 'noop() {' line in $TARGET: unknown ds-identify layout, not changed" >&2
    exit 1
}

tmp="$TARGET.xenchannel.$$"
trap 'rm -f "$tmp"' EXIT
awk -v begin="$BEGIN" -v end="$END" -v check="$CHECK" '
    $0 == begin { skip = 1; next }
    $0 == end { skip = 0; next }
    skip { next }
    /^noop\(\) \{/ && !done {
        print begin
        while ((getline line < check) > 0) print line
        print end
        done = 1
    }
    { print }
' "$TARGET" >"$tmp"
if cmp -s "$tmp" "$TARGET"; then
    exit 0
fi
chmod --reference="$TARGET" "$tmp" 2>/dev/null || chmod 0755 "$tmp"
mv "$tmp" "$TARGET"

#!/bin/sh
# Usage: install-ds-identify-check.sh ROOT
# Insert dscheck_XenChannel (ds-identify/dscheck_XenChannel.sh, beside this script)
# into ROOT/usr/lib/cloud-init/ds-identify, before ds-identify's main invocation
# (its `noop()` function, present in cloud-init 22.4 to 25.x). Idempotent: a block
# between marker lines is replaced, not added twice. A cloud-init package upgrade
# replaces ds-identify, so run this again afterwards (e.g. from a dpkg trigger or
# the image build). Exits non-zero, changing nothing, if the anchor is not found.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 ROOT" >&2
    exit 2
fi
ROOT=${1%/}
HERE=$(cd "$(dirname "$0")" && pwd)
CHECK="$HERE/ds-identify/dscheck_XenChannel.sh"
TARGET="$ROOT/usr/lib/cloud-init/ds-identify"
BEGIN="# >>> xenchannel dscheck_XenChannel >>>"
END="# <<< xenchannel dscheck_XenChannel <<<"

[ -f "$TARGET" ] || {
    echo "$0: $TARGET not found (is cloud-init installed in $ROOT?)" >&2
    exit 1
}
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

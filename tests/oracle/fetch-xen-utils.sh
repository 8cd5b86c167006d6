#!/bin/sh
# Fetch Debian bookworm's libxlutil (Xen 4.17's xl config parser) and the shared
# libraries it links against into .cache/xen-utils/, without installing anything.
# Idempotent: once the library and all its dependencies are unpacked it only prints
# the path. Prints the absolute path of libxlutil.so.4.17 on stdout; progress on stderr.
#
# libxlutil ships in libxenmisc4.17 (xen-utils-4.17 holds xl itself, which links it);
# the rest are the Xen libraries libxenlight pulls in, plus yajl. zlib, liblzma,
# libzstd and libuuid are part of every Debian base system.
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE="$ROOT/.cache/xen-utils"
DEBS="$CACHE/debs"
TREE="$CACHE/root"
PACKAGES="libxenmisc4.17 libxentoolcore1 libxentoollog1 libxencall1 libxenevtchn1
libxengnttab1 libxenforeignmemory1 libxendevicemodel1 libxenhypfs1 libxenstore4 libyajl2"

find_so() {
    find "$TREE" -name 'libxlutil.so.4.17' 2>/dev/null | head -n 1
}

complete() {
    so=$(find_so)
    [ -n "$so" ] || return 1
    # Every DT_NEEDED library must resolve inside the tree or on the system.
    ! LD_LIBRARY_PATH=$(dirname "$so") ldd "$so" 2>/dev/null | grep -q 'not found'
}

if complete; then
    find_so
    exit 0
fi

mkdir -p "$DEBS" "$TREE"
cd "$DEBS"
missing=""
for pkg in $PACKAGES; do
    ls "${pkg}"_*.deb >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    if ! apt-get download $missing >&2; then
        echo "apt-get download failed; refreshing the package lists once" >&2
        apt-get update >&2
        # shellcheck disable=SC2086
        apt-get download $missing >&2
    fi
fi
for deb in ./*.deb; do
    dpkg -x "$deb" "$TREE"
done

if ! complete; then
    so=$(find_so)
    echo "libxlutil or one of its libraries is still missing under $TREE:" >&2
    [ -n "$so" ] && LD_LIBRARY_PATH=$(dirname "$so") ldd "$so" | grep 'not found' >&2
    exit 1
fi
find_so

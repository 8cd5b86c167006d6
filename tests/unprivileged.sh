#!/bin/sh
# Run a command the way `make check` promises its tests run: with no capabilities and no
# network. Run by root (as in `make test` and CI), the command gets a network namespace of
# its own with only loopback up, and a bounding set emptied of every capability, so a
# test that needs root or the network fails there instead of passing by accident. Run by
# anyone else, the command runs as that user already is: without root's powers.
set -eu

if [ "$(id -u)" != 0 ]; then
    exec "$@"
fi
for tool in unshare setpriv ip; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "unprivileged.sh: $tool not found; install util-linux and iproute2 (apt-get install util-linux iproute2)" >&2
        exit 2
    fi
done
# shellcheck disable=SC2016 # "$@" is expanded by the inner sh, as meant
exec unshare --net -- sh -c 'ip link set lo up && exec setpriv --bounding-set=-all --inh-caps=-all -- "$@"' unprivileged "$@"

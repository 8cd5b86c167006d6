#!/bin/sh
# Everything the molecule scenarios need that a fresh machine lacks. Idempotent and quiet
# once done; progress goes to stderr. Needs root (or sudo) for the Debian packages.
#
# 1. Debian packages: docker.io (dockerd, containerd, runc, tini; run privately by
#    tests/molecule/engine.sh) and debootstrap (tests/images/build.sh).
# 2. The Ansible collections molecule's docker driver needs, community.docker and
#    ansible.posix. Galaxy is unreachable, so they are taken from the PyPI package
#    `ansible` (pinned below), which bundles them: its wheel is downloaded into
#    .cache/molecule/wheels and only those two collections are unpacked into
#    .cache/molecule/collections. They are NOT installed into .venv on purpose: the roles
#    may use only ansible.builtin and this collection, and a venv holding all of
#    `ansible` would hide a role that strays.
# 3. The container images (systemd and guest flavours of each of MOLECULE_SUITES) as
#    tarballs under .cache/images/ (tests/images/build.sh; imported into the engine by
#    tests/molecule/run.sh).
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# The releases the scenarios run on: bookworm, the release the README names. trixie's
# roles, systemd and cloud-init run for real in the real-Xen tier (docs/e2e.md), so its
# images are not built here unless asked for (MOLECULE_SUITES="bookworm trixie").
MOLECULE_SUITES=${MOLECULE_SUITES:-bookworm}
CACHE="$ROOT/.cache/molecule"
ANSIBLE_BUNDLE="ansible==12.3.0"
COLLECTIONS="community/docker ansible/posix"
PACKAGES="docker.io debootstrap"
PIP="$ROOT/.venv/bin/pip"

log() {
    echo "molecule/setup: $*" >&2
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root (or sudo) to run: $*"
        return 1
    fi
}

installed() {
    dpkg-query -W -f '${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# --- 1. Debian packages -------------------------------------------------------------
missing=""
for pkg in $PACKAGES; do
    installed "$pkg" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    log "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    # The package's maintainer scripts would start a system dockerd through init.d; only
    # the private engine may run, so policy-rc.d forbids service starts during install.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 0755 "$policy"
        made_policy=1
    fi
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    if ! as_root apt-get install -y --no-install-recommends $missing >&2; then
        log "install failed; refreshing the package lists once"
        as_root apt-get update >&2
        # shellcheck disable=SC2086
        as_root apt-get install -y --no-install-recommends $missing >&2
    fi
    if [ "$made_policy" = 1 ]; then
        as_root rm -f "$policy"
    fi
fi

# --- 2. community.docker and ansible.posix from the pinned `ansible` wheel ----------
have_collections() {
    for c in $COLLECTIONS; do
        [ -f "$CACHE/collections/ansible_collections/$c/MANIFEST.json" ] || return 1
    done
    [ "$(cat "$CACHE/collections/.bundle" 2>/dev/null)" = "$ANSIBLE_BUNDLE" ]
}

if ! have_collections; then
    [ -x "$PIP" ] || { log "$PIP is missing; run 'make venv' first"; exit 1; }
    mkdir -p "$CACHE/wheels"
    version=${ANSIBLE_BUNDLE#ansible==}
    wheel="$CACHE/wheels/ansible-$version-py3-none-any.whl"
    if [ ! -f "$wheel" ]; then
        log "downloading $ANSIBLE_BUNDLE (for its community.docker and ansible.posix)"
        "$PIP" download --quiet --disable-pip-version-check --no-deps \
            -d "$CACHE/wheels" "$ANSIBLE_BUNDLE" >&2
    fi
    rm -rf "$CACHE/collections"
    # shellcheck disable=SC2086  # one argument per collection is intended
    "$ROOT/.venv/bin/python" - "$wheel" "$CACHE/collections" $COLLECTIONS <<'EOF'
import sys
import zipfile

wheel, dest, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
prefixes = tuple("ansible_collections/%s/" % c for c in wanted)
with zipfile.ZipFile(wheel) as z:
    members = [n for n in z.namelist() if n.startswith(prefixes)]
    if not members:
        sys.exit("%s holds none of %s; pin an ansible release that bundles them" % (wheel, wanted))
    z.extractall(dest, members)
EOF
    echo "$ANSIBLE_BUNDLE" >"$CACHE/collections/.bundle"
fi

# --- 3. image tarballs --------------------------------------------------------------
for suite in $MOLECULE_SUITES; do
    for flavour in systemd guest; do
        ENGINE=none sh "$ROOT/tests/images/build.sh" "$suite" "$flavour" >/dev/null
    done
done

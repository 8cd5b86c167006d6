#!/bin/sh
# Fetch Debian's cloud-init packages into the repository's cache so the datasource
# tests can import the REAL cloud-init of two versions (tests/datasource/):
#   .cache/cloud-init/22.4/  bookworm's cloud-init 22.4.2 (the system's own apt)
#   .cache/cloud-init/25.1/  trixie's cloud-init 25.1.x (a PRIVATE apt configuration
#                            under .cache/cloud-init/apt-trixie; the system's sources
#                            are never edited)
#   .cache/cloud-init/guest-units/  bookworm's ifupdown and openssh-server (the system's
#                            apt), only for their systemd units: what a cloud-init guest
#                            orders against (tests/integration/test_unit_ordering.py)
#   .cache/cloud-init/{23.4,24.4,26.2}/  upstream releases (tests/fixtures/cloud-init/),
#                            installed by their own build systems into a throwaway root:
#                            tests/setup-cloud-init-upstream.py, run with the venv's python
#                            (or $XENCHANNEL_CLOUD_INIT_PYTHON) says how
# Each Debian directory holds the .deb and `root/` (dpkg -x). Python code is then under
# root/usr/lib/python3/dist-packages; ds-identify under root/usr/lib/cloud-init/.
# Nothing is installed on the system and no cloud-init command is run.
# Idempotent: prints nothing when everything is already cached. Progress -> stderr.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE="$ROOT/.cache/cloud-init"

log() {
    echo "setup-cloud-init: $*" >&2
}

have_tree() {
    [ -f "$1/root/usr/lib/python3/dist-packages/cloudinit/version.py" ] &&
        [ -f "$1/root/usr/lib/cloud-init/ds-identify" ]
}

extract() {
    rm -rf "$1/root"
    mkdir -p "$1/root"
    dpkg -x "$1"/cloud-init_*.deb "$1/root"
}

# --- bookworm: 22.4 from the system's apt ------------------------------------------
fetch_bookworm() {
    dir="$CACHE/22.4"
    mkdir -p "$dir"
    if ! ls "$dir"/cloud-init_22.4*.deb >/dev/null 2>&1; then
        log "downloading bookworm's cloud-init"
        if ! (cd "$dir" && apt-get download cloud-init >&2); then
            log "apt-get download failed; refreshing the system's package lists once"
            if [ "$(id -u)" -eq 0 ]; then apt-get update >&2; else sudo apt-get update >&2; fi
            (cd "$dir" && apt-get download cloud-init >&2)
        fi
        ls "$dir"/cloud-init_22.4*.deb >/dev/null 2>&1 || {
            log "the system's apt did not give cloud-init 22.4 (is this bookworm?)"
            return 1
        }
    fi
    extract "$dir"
}

# --- trixie: 25.1 through a private apt configuration ------------------------------
fetch_trixie() {
    dir="$CACHE/25.1"
    apt_dir="$CACHE/apt-trixie"
    mkdir -p "$dir" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    if ! ls "$dir"/cloud-init_25.1*.deb >/dev/null 2>&1; then
        log "downloading trixie's cloud-init (private apt configuration)"
        echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main' \
            >"$apt_dir/sources.list"
        set -- -o "Dir::Etc::sourcelist=$apt_dir/sources.list" \
            -o "Dir::Etc::sourceparts=-" \
            -o "Dir::State::Lists=$apt_dir/lists" \
            -o "Dir::Cache=$apt_dir/cache" \
            -o "APT::Sandbox::User=root"
        if ! ls "$apt_dir"/lists/*_Packages* >/dev/null 2>&1; then
            apt-get "$@" update >&2
        fi
        if ! (cd "$dir" && apt-get "$@" download cloud-init >&2); then
            apt-get "$@" update >&2
            (cd "$dir" && apt-get "$@" download cloud-init >&2)
        fi
        # The .deb is all that is needed from now on; trixie's lists are about 20 MB.
        rm -rf "$apt_dir"
        ls "$dir"/cloud-init_25.1*.deb >/dev/null 2>&1 || {
            log "trixie no longer carries cloud-init 25.1: see $dir"
            return 1
        }
    fi
    extract "$dir"
}

# --- a guest's other units: ifupdown and openssh-server, from the system's apt -------
GUEST_PACKAGES="ifupdown openssh-server"

have_guest_units() {
    [ -f "$1/root/lib/systemd/system/networking.service" ] &&
        [ -f "$1/root/lib/systemd/system/ssh.service" ]
}

fetch_guest_units() {
    dir="$CACHE/guest-units"
    mkdir -p "$dir"
    need=""
    for pkg in $GUEST_PACKAGES; do
        ls "$dir/${pkg}"_*.deb >/dev/null 2>&1 || need="$need $pkg"
    done
    if [ -n "$need" ]; then
        log "downloading$need"
        # shellcheck disable=SC2086  # word splitting of the package list is intended
        if ! (cd "$dir" && apt-get download $need >&2); then
            log "apt-get download failed; refreshing the system's package lists once"
            if [ "$(id -u)" -eq 0 ]; then apt-get update >&2; else sudo apt-get update >&2; fi
            # shellcheck disable=SC2086
            (cd "$dir" && apt-get download $need >&2)
        fi
    fi
    rm -rf "$dir/root"
    mkdir -p "$dir/root"
    for deb in "$dir"/*.deb; do
        dpkg -x "$deb" "$dir/root"
    done
}

have_tree "$CACHE/22.4" || fetch_bookworm
have_tree "$CACHE/25.1" || fetch_trixie
have_guest_units "$CACHE/guest-units" || fetch_guest_units
"${XENCHANNEL_CLOUD_INIT_PYTHON:-$ROOT/.venv/bin/python}" "$ROOT/tests/setup-cloud-init-upstream.py"

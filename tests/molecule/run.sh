#!/bin/sh
# Run molecule scenarios against local Debian containers, from a fresh machine:
#
#   tests/molecule/run.sh                 every scenario (molecule/*/molecule.yml)
#   tests/molecule/run.sh guest default   the named ones
#   MOLECULE_COMMAND=converge tests/molecule/run.sh guest
#                                         another molecule command (default: test)
#
# 1. tests/molecule/setup.sh installs docker.io and debootstrap, fetches community.docker
#    and builds the image tarballs (all cached under .cache/).
# 2. The collection is linked as ansible_collections/xenchannel/provision in a temporary
#    directory (never inside the repository, where tools walking the tree would loop).
# 3. tests/molecule/engine.sh starts a private dockerd, the images are imported into it
#    when missing, molecule runs each scenario with molecule/resources/base.yml as its
#    base config, and the engine is stopped whatever happens.
# Exit status: 0 when every scenario passed; molecule's output says which failed.
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# The releases the scenarios run on: bookworm, the release the README names. trixie's
# roles, systemd and cloud-init run for real in the real-Xen tier (docs/e2e.md), so its
# images are not built here unless asked for (MOLECULE_SUITES="bookworm trixie").
MOLECULE_SUITES=${MOLECULE_SUITES:-bookworm}
HERE="$ROOT/tests/molecule"
BIN="$ROOT/.venv/bin"
COMMAND=${MOLECULE_COMMAND:-test}

log() {
    echo "molecule/run: $*" >&2
}

scenarios() {
    for file in "$ROOT"/molecule/*/molecule.yml; do
        [ -f "$file" ] && basename "$(dirname "$file")"
    done
}

if [ "${1:-}" = --inside-engine ]; then
    # Second half, inside `engine.sh run`: DOCKER_HOST points at the private engine.
    shift
    for suite in $MOLECULE_SUITES; do
        for flavour in systemd guest; do
            ENGINE=docker sh "$ROOT/tests/images/build.sh" "$suite" "$flavour" >/dev/null
        done
    done
    cd "$ROOT"
    failed=""
    for scenario in "$@"; do
        log "molecule $COMMAND -s $scenario"
        start=$(date +%s)
        if "$BIN/molecule" --base-config "$ROOT/molecule/resources/base.yml" \
            "$COMMAND" -s "$scenario"; then
            log "$scenario: passed in $(($(date +%s) - start))s"
        else
            log "$scenario: FAILED after $(($(date +%s) - start))s"
            failed="$failed $scenario"
        fi
    done
    if [ -n "$failed" ]; then
        log "failed:$failed"
        exit 1
    fi
    exit 0
fi

[ -x "$BIN/molecule" ] || {
    log "$BIN/molecule is missing; run 'make venv' (requirements/dev.txt pins molecule)"
    exit 1
}
if [ $# -eq 0 ]; then
    # shellcheck disable=SC2046  # one argument per scenario name is intended
    set -- $(scenarios)
fi
for scenario in "$@"; do
    [ -f "$ROOT/molecule/$scenario/molecule.yml" ] || {
        log "no scenario '$scenario': molecule/$scenario/molecule.yml does not exist (have: $(scenarios | tr '\n' ' '))"
        exit 1
    }
done

sh "$HERE/setup.sh"

TREE=$(mktemp -d /tmp/xc-molecule-collections.XXXXXX)
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    # The link first, so that nothing can ever walk into the repository.
    rm -f "$TREE/ansible_collections/xenchannel/provision"
    rm -rf "$TREE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$TREE/ansible_collections/xenchannel"
ln -s "$ROOT" "$TREE/ansible_collections/xenchannel/provision"

export XENCHANNEL_MOLECULE_COLLECTIONS="$TREE:$ROOT/.cache/molecule/collections"
export PATH="$BIN:$PATH"
export ANSIBLE_NOCOLOR=1 PY_COLORS=0 ANSIBLE_FORCE_COLOR=0
status=0
sh "$HERE/engine.sh" run sh "$0" --inside-engine "$@" || status=$?
exit "$status"

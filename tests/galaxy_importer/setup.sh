#!/bin/sh
# Install galaxy-importer into its own venv, .cache/galaxy-importer/venv, from the pins in
# requirements/galaxy-importer.txt (it pins attrs<24, which .venv's other tools outgrew).
# Idempotent: a stamp holding the requirements file's checksum skips the install when
# nothing changed. Prints the venv's bin directory on stdout; progress on stderr.
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
REQS="$ROOT/requirements/galaxy-importer.txt"
VENV="$ROOT/.cache/galaxy-importer/venv"
STAMP="$VENV/.installed"

# Without pyenv (a fresh Debian machine) the substitution fails, and under set -e a failed
# substitution in an assignment ends the script: "|| true" keeps going to python3.11.
if [ -z "${PYTHON:-}" ]; then
    PYTHON=$(pyenv root 2>/dev/null || true)/versions/3.11.7/bin/python3.11
fi
[ -x "$PYTHON" ] || PYTHON=python3.11

want=$(sha256sum "$REQS" | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    echo "$VENV/bin"
    exit 0
fi

echo "setup-galaxy-importer: installing $REQS into $VENV" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --only-binary :all: -r "$REQS" >&2
echo "$want" >"$STAMP"
echo "$VENV/bin"

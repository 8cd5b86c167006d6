#!/bin/sh
# Build the documentation site: `make docs`, and tests/docs/test_docs_site.py.
#
#   docs/site/build.sh [OUT [COLLECTION]]
#
# OUT defaults to .cache/docs-site; COLLECTION, the collection's source tree, to this
# repository (tests/docs/ passes a small made-up one to see a role documented).
#
# OUT/rst/collections/  module, plugin and role reference that antsibull-docs generates
#                       from DOCUMENTATION and roles/*/meta/argument_specs.yml
# OUT/rst/guides/       the hand-written guides, docs/*.md (read by myst-parser)
# OUT/html/index.html   the site
# OUT/sphinx-warnings.log  every warning Sphinx printed (the build does not stop on them:
#                       intersphinx inventories come from docs.ansible.com, which may be
#                       unreachable; the test decides which warnings are acceptable)
#
# Uses the tools in .venv (make venv). Nothing outside OUT and a temporary directory
# is written.
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SITE="$ROOT/docs/site"
OUT=${1:-$ROOT/.cache/docs-site}
COLLECTION=$(cd "${2:-$ROOT}" && pwd)
BIN=$ROOT/.venv/bin

for tool in antsibull-docs sphinx-build; do
    if [ ! -x "$BIN/$tool" ]; then
        echo "docs/site/build.sh: $BIN/$tool is missing; run make venv (requirements/dev.txt and requirements/docs.txt)" >&2
        exit 2
    fi
done

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -rf "$OUT/rst" "$OUT/html" "$OUT/doctrees"
# antsibull-docs refuses a destination that others can write to.
mkdir -m 0755 "$OUT/rst"

# antsibull-docs finds collections only as ansible_collections/<namespace>/<name>; a link
# from a temporary directory, as testbed/ansible_run.py does, keeps the repository as is.
TREE=$(mktemp -d "${TMPDIR:-/tmp}/xc-docs-site-XXXXXX")
cleanup() {
    # The link first, so that nothing can ever walk into the repository.
    rm -f "$TREE/ansible_collections/xenchannel/provision"
    rm -rf "$TREE"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM
mkdir -p "$TREE/ansible_collections/xenchannel"
ln -s "$COLLECTION" "$TREE/ansible_collections/xenchannel/provision"

# Run with a private Ansible home and no user configuration, like the tests.
env ANSIBLE_COLLECTIONS_PATH="$TREE" ANSIBLE_HOME="$TREE/ansible-home" \
    ANSIBLE_LOCAL_TEMP="$TREE/tmp" ANSIBLE_CONFIG="$TREE/none.cfg" ANSIBLE_NOCOLOR=1 \
    PATH="$BIN:$PATH" \
    "$BIN/antsibull-docs" --config-file "$SITE/antsibull-docs.cfg" collection \
    --use-current --fail-on-error --cleanup everything --dest-dir "$OUT/rst" \
    xenchannel.provision

cp "$SITE/index.rst" "$OUT/rst/index.rst"

# The guides link source files as ../path, which works on GitHub and in the repository
# but points outside the site; those links go to the repository's web view instead.
# Their unlabelled code blocks are diagrams and frame layouts, not the YAML that
# highlight_language means for the generated pages: a leading highlight directive
# makes them plain text.
REPO_URL=$(sed -n 's/^repository: *//p' "$COLLECTION/galaxy.yml")
mkdir "$OUT/rst/guides"
for guide in "$COLLECTION"/docs/*.md; do
    [ -f "$guide" ] || continue
    {
        # shellcheck disable=SC2016 # backquotes of a Markdown fence, not a command
        printf '```{highlight} text\n```\n\n'
        sed "s#](\.\./\([^)]*\))#]($REPO_URL/blob/main/\1)#g" "$guide"
    } >"$OUT/rst/guides/$(basename "$guide")"
done

# No -W: an unreachable intersphinx inventory is a warning, not a broken site.
"$BIN/sphinx-build" -b html -E -q -c "$SITE" -d "$OUT/doctrees" \
    -w "$OUT/sphinx-warnings.log" "$OUT/rst" "$OUT/html"
echo "docs/site/build.sh: $OUT/html/index.html"

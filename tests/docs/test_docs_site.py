"""The documentation site builds, holds every reference page and guide, and warns of nothing.

docs/site/build.sh (``make docs``) has antsibull-docs generate the module, plugin and role
pages from DOCUMENTATION and roles/*/meta/argument_specs.yml, copies the guides in
docs/*.md, and has Sphinx build the HTML. Which pages must exist is computed from the
repository here, never listed by hand. The build is also run on a small made-up
collection whose one role has an argument spec, so that role pages are known to be
generated whatever roles the repository has at the time.

Sphinx's warnings are all failures except intersphinx's: the inventories of
docs.python.org and docs.ansible.com may be unreachable, and then Sphinx says so and
cannot resolve the labels of Ansible's own docs (such as ``common_return_values``).
A label of this collection that does not resolve is never accepted.
"""

import ast
import glob
import os
import re
import shutil
import subprocess
import textwrap
from html import unescape
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, "docs", "site", "build.sh")
PAGES = os.path.join("html", "collections", "xenchannel", "provision")
INVENTORIES = ("https://docs.python.org/3/", "https://docs.ansible.com/projects/ansible/devel/")
UNREACHABLE = "WARNING: failed to reach any of the inventories with the following issues:"
UNDEFINED_LABEL = re.compile(r": WARNING: undefined label: '([^']+)' \[ref\.ref\]$")
OUR_LABELS = "ansible_collections.xenchannel.provision."
SMART_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
FETCH = tuple(f"intersphinx inventory '{url}objects.inv' not fetchable" for url in INVENTORIES)


def _build(out: str, collection: str = ROOT) -> str:
    proc = subprocess.run(
        ["sh", BUILD, out, collection],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"docs/site/build.sh failed:\n{output}"
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield _build(str(tmp_path_factory.mktemp("docs-site")))


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _module_doc(path: str) -> Dict[str, Any]:
    """A module's DOCUMENTATION, read from its source without importing it."""
    for node in ast.parse(_read(path)).body:
        if (
            isinstance(node, ast.Assign)
            and getattr(node.targets[0], "id", None) == "DOCUMENTATION"
            and isinstance(node.value, ast.Constant)
        ):
            doc: Dict[str, Any] = yaml.safe_load(node.value.value)
            return doc
    raise AssertionError(f"{path} has no DOCUMENTATION string")


def _plugins(pattern: str, suffix: str) -> List[Tuple[str, str]]:
    return sorted(
        (os.path.basename(path)[: -len(suffix)], path)
        for path in glob.glob(os.path.join(ROOT, pattern))
        if not os.path.basename(path).startswith("_")
    )


def _role_specs(collection: str) -> Dict[str, Dict[str, Any]]:
    specs = {}
    for path in sorted(glob.glob(os.path.join(collection, "roles", "*", "meta"))):
        for name in ("argument_specs.yml", "argument_specs.yaml"):
            if os.path.exists(os.path.join(path, name)):
                with open(os.path.join(path, name)) as handle:
                    role = os.path.basename(os.path.dirname(path))
                    specs[role] = yaml.safe_load(handle)["argument_specs"]
    return specs


def _text(html: str) -> str:
    """The page's text, tags dropped and whitespace folded, for "does it say X" checks.

    Sphinx turns quotes into typographic ones (html_use_smartypants); they are turned back.
    """
    text = unescape(re.sub(r"<[^>]+>", " ", html)).translate(SMART_QUOTES)
    return " ".join(text.split())


def _check_role_pages(site: str, collection: str) -> List[str]:
    problems = []
    for role, entry_points in _role_specs(collection).items():
        page = os.path.join(site, PAGES, f"{role}_role.html")
        if not os.path.exists(page):
            problems.append(f"role {role}: no page {page}")
            continue
        text = _text(_read(page))
        for entry_point, spec in entry_points.items():
            for option in spec.get("options") or {}:
                if option not in text:
                    problems.append(f"role {role}: {entry_point} option {option} not on its page")
    return problems


def test_module_pages_come_from_documentation(site: str) -> None:
    modules = _plugins("plugins/modules/*.py", ".py")
    assert modules, "plugins/modules/ has no module"
    for name, path in modules:
        page = os.path.join(site, PAGES, f"{name}_module.html")
        assert os.path.exists(page), f"module {name}: no page {page}"
        doc, text = _module_doc(path), _text(_read(page))
        assert doc["short_description"] in text, f"{page} lacks the short_description"
        missing = [option for option in doc.get("options") or {} if option not in text]
        assert not missing, f"{page} lacks the options {missing}"


def test_filter_and_lookup_pages_exist(site: str) -> None:
    plugins = [
        (f"{name}_filter.html", path) for name, path in _plugins("plugins/filter/*.yml", ".yml")
    ] + [(f"{name}_lookup.html", path) for name, path in _plugins("plugins/lookup/*.py", ".py")]
    missing = [
        page for page, _plugin in plugins if not os.path.exists(os.path.join(site, PAGES, page))
    ]
    assert not missing, f"no page for {missing}"


def test_role_pages_come_from_argument_specs(site: str) -> None:
    problems = _check_role_pages(site, ROOT)
    assert not problems, "\n".join(problems)


def test_a_role_with_an_argument_spec_gets_a_page(tmp_path: Any) -> None:
    collection = tmp_path / "collection"
    files = {
        "galaxy.yml": _read(os.path.join(ROOT, "galaxy.yml")),
        "meta/runtime.yml": "requires_ansible: '>=2.19.0'\n",
        "roles/made_up/tasks/main.yml": "- name: Nothing\n  ansible.builtin.meta: noop\n",
        "roles/made_up/meta/argument_specs.yml": textwrap.dedent(
            """\
            argument_specs:
              main:
                short_description: A role made up by tests/docs
                description: Its page must show this and its option.
                options:
                  made_up_domain:
                    description: The domain to provision.
                    type: str
                    required: true
            """
        ),
    }
    for name, content in files.items():
        path = collection / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    out = _build(str(tmp_path / "site"), str(collection))
    assert _check_role_pages(out, str(collection)) == []
    text = _text(_read(os.path.join(out, PAGES, "made_up_role.html")))
    assert "A role made up by tests/docs" in text
    assert "Its page must show this and its option." in text
    assert "The domain to provision." in text


def test_guides_are_in_the_site_and_link_each_other(site: str) -> None:
    guides = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    assert guides, "docs/ has no guide"
    index = _read(os.path.join(site, "html", "index.html"))
    for guide in guides:
        stem = os.path.basename(guide)[:-3]
        page = os.path.join(site, "html", "guides", f"{stem}.html")
        assert os.path.exists(page), f"{guide}: no page {page}"
        assert f'href="guides/{stem}.html"' in index, f"index.html does not link {stem}"
        broken = _broken_links(page)
        assert not broken, f"{guide}: links that lead nowhere in the site: {broken}"
        # build.sh points links to ../<file> at the repository's web view; the file must exist.
        sources = re.findall(r"\]\(\.\./([^)#]+)", _read(guide))
        gone = [path for path in sources if not os.path.exists(os.path.join(ROOT, path))]
        assert not gone, f"{guide} links files the repository does not have: {gone}"


def _broken_links(page: str) -> List[str]:
    """Relative links of a page whose target file is not in the site.

    A link between guides that myst could not resolve stays a link to a .md file,
    and a link to a source file (../runtime/...) would leave the site: both land here.
    """
    broken = []
    for href in re.findall(r'href="([^"]*)"', _read(page)):
        target = href.split("#")[0].split("?")[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:|^/", target):
            continue
        if not os.path.isfile(os.path.normpath(os.path.join(os.path.dirname(page), target))):
            broken.append(href)
    return broken


def _warnings(site: str) -> List[str]:
    """Sphinx's warnings, one entry per warning with its continuation lines."""
    entries: List[str] = []
    for line in _read(os.path.join(site, "sphinx-warnings.log")).splitlines():
        if "WARNING:" in line or "ERROR:" in line or not entries:
            entries.append(line)
        else:
            entries[-1] += "\n" + line
    return [entry for entry in entries if entry.strip()]


def test_sphinx_warns_of_nothing_but_unreachable_inventories(site: str) -> None:
    unreachable = []
    rest = []
    for entry in _warnings(site):
        head, *details = entry.splitlines()
        if head == UNREACHABLE and details and all(line.startswith(FETCH) for line in details):
            unreachable.extend(details)
        else:
            rest.append(entry)
    ansible_unreachable = any(INVENTORIES[1] in line for line in unreachable)
    problems = []
    for entry in rest:
        match = UNDEFINED_LABEL.search(entry)
        # Ansible's own labels resolve only through its inventory; ours must always.
        if match and ansible_unreachable and not match.group(1).startswith(OUR_LABELS):
            continue
        problems.append(entry)
    assert not problems, "Sphinx warned:\n" + "\n".join(problems)


@pytest.mark.system  # shellcheck comes from `make system`
def test_build_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail(
            "shellcheck is not installed: run `sh tests/setup-system-packages.sh`", pytrace=False
        )
    proc = subprocess.run(
        [shellcheck, "-s", "sh", BUILD], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

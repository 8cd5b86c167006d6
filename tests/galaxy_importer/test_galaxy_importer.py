"""galaxy-importer, the checks Galaxy runs on upload, passes on the built collection tarball.

The tarball is built with ansible-galaxy from the pinned ansible-core, as for publishing.
galaxy-importer (its own venv, made by tests/galaxy_importer/setup.sh from
requirements/galaxy-importer.txt) then loads every plugin's docs with ansible-doc, lints
the collection with ansible-lint's production profile, renders README.md and docs/*.md,
and checks galaxy.yml, meta/runtime.yml and the changelog. Its ansible-test step is off
(galaxy-importer.cfg says why). Any WARNING or ERROR line fails the test unless it is
listed in ACCEPTED (by its start) with its reason.
"""

import glob
import json
import os
import shutil
import subprocess
from typing import Any, Dict, List

import pytest

from testbed.ansible_run import build_collection

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
IMPORTER_BIN = os.path.join(ROOT, ".cache", "galaxy-importer", "venv", "bin")
SETUP_SCRIPT = os.path.join(HERE, "setup.sh")
SETUP = "sh tests/galaxy_importer/setup.sh"
# Importer output lines accepted (by their start), each with why.
ACCEPTED: Dict[str, str] = {
    # The importer counts the entries of tests/sanity/ignore-2.19.txt, whatever they
    # say; every entry there carries its reason inline, and the count changes with them.
    "WARNING: Ignore files skip ansible-test sanity tests, found ignore-2.19.txt with": (
        "each ignore entry is justified inline in tests/sanity/ignore-2.19.txt"
    ),
}


def _names(pattern: str, strip: int) -> List[str]:
    return sorted(
        os.path.basename(path)[:-strip]
        for path in glob.glob(os.path.join(ROOT, pattern))
        if not os.path.basename(path).startswith("_")
    )


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    python = os.path.join(IMPORTER_BIN, "python")
    if not os.path.exists(python):
        pytest.fail(f"{python} is missing; run `{SETUP}` (make system)", pytrace=False)
    work = tmp_path_factory.mktemp("galaxy-importer")
    tarball = build_collection(str(work))
    env = {
        "HOME": str(work),
        "LANG": "C.UTF-8",
        # galaxy-importer runs ansible-doc and ansible-lint by name, through /usr/bin/env.
        "PATH": IMPORTER_BIN + ":/usr/bin:/bin",
        "GALAXY_IMPORTER_CONFIG": os.path.join(HERE, "galaxy-importer.cfg"),
        "GALAXY_IMPORTER_TMP_ROOT_DIR": str(work),
        "GALAXY_IMPORTER_ANSIBLE_LOCAL_TMP": str(work / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    proc = subprocess.run(
        [python, "-m", "galaxy_importer.main", tarball],
        cwd=str(work),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = proc.stdout + proc.stderr
    # Shown with -s, and by the first test below when the import fails.
    print(output)
    result: Dict[str, Any] = {"output": output, "returncode": proc.returncode}
    if proc.returncode == 0:
        with open(work / "importer_result.json") as handle:
            result.update(json.load(handle))
    return result


def _succeeded(imported: Dict[str, Any]) -> None:
    if imported["returncode"] != 0:
        pytest.fail(
            "galaxy-importer failed; its output is in test_importer_reports_no_warning_or_error",
            pytrace=False,
        )


def test_importer_reports_no_warning_or_error(imported: Dict[str, Any]) -> None:
    output = imported["output"]
    findings = [
        line
        for line in output.splitlines()
        if line.startswith(("WARNING", "ERROR", "Traceback"))
        and not line.startswith(tuple(ACCEPTED))
    ]
    assert not findings, "galaxy-importer:\n" + "\n".join(findings) + "\n\n" + output
    assert imported["returncode"] == 0, output
    assert "Importer processing completed successfully" in output, output


def test_importer_finds_every_module_plugin_and_role(imported: Dict[str, Any]) -> None:
    _succeeded(imported)
    found: Dict[str, List[str]] = {}
    for item in imported["contents"]:
        found.setdefault(item["content_type"], []).append(item["name"])
    assert sorted(set(found.get("module", []))) == _names("plugins/modules/*.py", 3)
    assert sorted(set(found.get("lookup", []))) == _names("plugins/lookup/*.py", 3)
    roles = sorted(
        name for name in os.listdir(os.path.join(ROOT, "roles")) if not name.endswith(".md")
    )
    assert sorted(set(found.get("role", []))) == roles
    undocumented = [
        f"{item['content_type']} {item['content_name']}"
        for item in imported["docs_blob"]["contents"]
        if item["content_type"] in ("module", "lookup", "filter") and not item["doc_strings"]
    ]
    assert not undocumented, f"ansible-doc gave galaxy-importer no docs for {undocumented}"


def test_importer_renders_readme_and_guides(imported: Dict[str, Any]) -> None:
    _succeeded(imported)
    blob = imported["docs_blob"]
    assert blob["collection_readme"]["name"] == "README.md"
    assert "<h1>xenchannel.provision</h1>" in blob["collection_readme"]["html"]
    rendered = sorted(doc["name"] for doc in blob["documentation_files"])
    assert rendered == sorted(os.path.basename(p) for p in glob.glob(ROOT + "/docs/*.md"))
    assert imported["requires_ansible"], "meta/runtime.yml has no requires_ansible"


def test_setup_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail(
            "shellcheck is not installed: run `sh tests/setup-system-packages.sh`", pytrace=False
        )
    proc = subprocess.run(
        [shellcheck, "-s", "sh", SETUP_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

"""plugins/modules/runtime_package.py, driven through the real AnsibleModule machinery.

The archive and manifest the action plugin would send are made here with the same shape
(a .tar.gz of package-relative names, SHA-256 per name): the module runs on target
Pythons where the controller-side action plugin cannot be imported. The packing itself is
tested in tests/unit/plugins/action/.
"""

import grp
import hashlib
import io
import os
import pwd
import stat
import tarfile
from typing import Any, Dict, Optional

import pytest
from ansible_collections.xenchannel.provision.plugins.modules import runtime_package

from tests.unit.plugins.modules._harness import fail_module, run_module

PACKAGE: Dict[str, bytes] = {
    "__init__.py": b'"""xenchannel."""\n',
    "protocol.py": b"VERSION = 1\n",
    "session.py": b"class Hello: pass\n",
    "inotify.py": b"IN_CREATE = 0x100\n",
    "dom0/__init__.py": b"",
    "dom0/agent.py": b"def main():\n    pass\n",
    "guest/__init__.py": b"",
    "guest/agent.py": b"def main():\n    return 0\n",
    "guest/apply/__init__.py": b"",
    "guest/apply/files.py": b"STEP = 'files'\n",
}
# Not root in a developer's run: every test installs as the user running it.
OWNER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


def manifest_of(files: Dict[str, bytes]) -> Dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def archive(path: str, files: Dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            tar.addfile(info, io.BytesIO(files[name]))
    return path


@pytest.fixture
def sent(tmp_path: Any) -> Dict[str, Any]:
    """What the action plugin sends for PACKAGE, and a dest beside it."""
    return {
        "dest": str(tmp_path / "site" / "xenchannel"),
        "src": archive(str(tmp_path / "runtime.tar.gz"), PACKAGE),
        "manifest": manifest_of(PACKAGE),
        "components": ["dom0", "guest"],
        "owner": OWNER,
        "group": GROUP,
    }


def run(sent: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    return run_module(runtime_package.main, {**sent, **extra})


def tree(dest: str) -> Dict[str, Optional[bytes]]:
    """Everything under dest: file contents, directories as None."""
    found: Dict[str, Optional[bytes]] = {}
    for top, dirs, files in os.walk(dest):
        for name in dirs:
            found[os.path.relpath(os.path.join(top, name), dest) + "/"] = None
        for name in files:
            path = os.path.join(top, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, dest)] = handle.read()
    return found


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_installs_every_file_0644_in_0755_directories(sent: Dict[str, Any]) -> None:
    result = run(sent)
    dest = sent["dest"]
    assert result["changed"] is True
    assert result["dest"] == dest
    assert result["installed"] == sorted([*PACKAGE, "./", "dom0/", "guest/", "guest/apply/"])
    assert result["updated"] == [] and result["removed"] == []
    files = {name: data for name, data in tree(dest).items() if data is not None}
    assert files == PACKAGE
    assert all(mode(os.path.join(dest, name)) == 0o644 for name in PACKAGE)
    for directory in ("", "dom0", "guest", "guest/apply"):
        assert mode(os.path.join(dest, directory)) == 0o755
    assert os.stat(os.path.join(dest, "guest/agent.py")).st_uid == os.getuid()
    # Nothing of the atomic writes is left behind.
    assert sorted(tree(dest)) == sorted([*PACKAGE, "dom0/", "guest/", "guest/apply/"])


def test_second_run_is_not_a_change_and_rewrites_nothing(sent: Dict[str, Any]) -> None:
    run(sent)
    agent = os.path.join(sent["dest"], "guest/agent.py")
    before = os.stat(agent)
    second = run(sent)
    assert second["changed"] is False
    assert second["installed"] == second["updated"] == second["removed"] == []
    assert os.stat(agent).st_ino == before.st_ino


def test_check_mode_reports_and_writes_nothing(sent: Dict[str, Any]) -> None:
    # The action plugin sends no archive in check mode; the manifest is enough.
    check = run({**sent, "src": None}, _ansible_check_mode=True)
    assert check["changed"] is True
    assert "guest/agent.py" in check["installed"]
    assert not os.path.exists(os.path.dirname(sent["dest"]))
    run(sent)
    with open(os.path.join(sent["dest"], "protocol.py"), "wb") as handle:
        handle.write(b"VERSION = 0\n")
    check = run(sent, _ansible_check_mode=True)
    assert check["changed"] is True and check["updated"] == ["protocol.py"]
    assert tree(sent["dest"])["protocol.py"] == b"VERSION = 0\n"


def test_a_changed_file_is_replaced_and_a_wrong_mode_corrected(sent: Dict[str, Any]) -> None:
    run(sent)
    dest = sent["dest"]
    protocol = os.path.join(dest, "protocol.py")
    with open(protocol, "wb") as handle:
        handle.write(b"edited by hand\n")
    files = os.path.join(dest, "guest/apply/files.py")
    os.chmod(files, 0o600)
    os.chmod(os.path.join(dest, "dom0"), 0o700)
    inode = os.stat(files).st_ino
    result = run(sent)
    assert result["changed"] is True
    assert result["updated"] == ["dom0/", "guest/apply/files.py", "protocol.py"]
    assert result["installed"] == [] and result["removed"] == []
    assert tree(dest)["protocol.py"] == PACKAGE["protocol.py"]
    assert mode(protocol) == 0o644 and mode(files) == 0o644
    assert mode(os.path.join(dest, "dom0")) == 0o755
    assert os.stat(files).st_ino == inode, "only the mode was wrong: not rewritten"


def test_files_no_longer_shipped_go_and_python_caches_stay(sent: Dict[str, Any]) -> None:
    run(sent)
    dest = sent["dest"]
    stale = os.path.join(dest, "guest/old_module.py")
    with open(stale, "w") as handle:
        handle.write("raise SystemExit(1)\n")
    os.makedirs(os.path.join(dest, "legacy/__pycache__"))
    with open(os.path.join(dest, "legacy/__init__.py"), "w") as handle:
        handle.write("")
    with open(os.path.join(dest, "legacy/__pycache__/__init__.cpython-311.pyc"), "wb") as handle:
        handle.write(b"\0")
    cache = os.path.join(dest, "guest/__pycache__/agent.cpython-311.pyc")
    os.makedirs(os.path.dirname(cache))
    with open(cache, "wb") as handle:
        handle.write(b"\0")
    old_pyc = os.path.join(dest, "protocol.pyc")
    with open(old_pyc, "wb") as handle:
        handle.write(b"\0")
    result = run(sent, _ansible_diff=True)
    assert result["changed"] is True
    assert result["removed"] == ["guest/old_module.py", "legacy/"]
    assert not os.path.lexists(stale) and not os.path.lexists(os.path.join(dest, "legacy"))
    assert os.path.exists(cache) and os.path.exists(old_pyc)
    assert "guest/old_module.py" in result["diff"]["before"]
    assert "guest/old_module.py" not in result["diff"]["after"]
    assert run(sent)["changed"] is False


def test_one_component_installs_it_alone_and_drops_the_others_files(
    sent: Dict[str, Any], tmp_path: Any
) -> None:
    run(sent)  # both components, as an older collection installed everything
    guest = {name: data for name, data in PACKAGE.items() if not name.startswith("dom0/")}
    only_guest = {
        **sent,
        "src": archive(str(tmp_path / "guest.tar.gz"), guest),
        "manifest": manifest_of(guest),
        "components": ["guest"],
    }
    result = run(only_guest)
    assert result["changed"] is True and result["components"] == ["guest"]
    assert result["removed"] == ["dom0/"] and result["installed"] == []
    assert sorted(tree(sent["dest"])) == sorted([*guest, "guest/", "guest/apply/"])
    assert run(only_guest)["changed"] is False


def test_a_manifest_beyond_its_components_is_refused(sent: Dict[str, Any]) -> None:
    result = fail_module(runtime_package.main, {**sent, "components": ["guest"]})
    assert "names dom0/__init__.py, which is not part of the components guest" in result["msg"]
    assert not os.path.exists(os.path.dirname(sent["dest"]))


@pytest.mark.parametrize(
    ("components", "sentence"),
    [
        pytest.param(None, "missing required arguments: components", id="missing"),
        pytest.param(["gest"], "components must be one or more of: dom0, guest", id="typo"),
    ],
)
def test_components_must_be_given_and_ours(
    sent: Dict[str, Any], components: Any, sentence: str
) -> None:
    result = fail_module(runtime_package.main, {**sent, "components": components})
    assert sentence in result["msg"]
    assert not os.path.exists(os.path.dirname(sent["dest"]))


def test_things_in_the_way_are_replaced(sent: Dict[str, Any]) -> None:
    run(sent)
    dest = sent["dest"]
    os.unlink(os.path.join(dest, "protocol.py"))
    os.mkdir(os.path.join(dest, "protocol.py"))  # a directory where a file belongs
    apply_dir = os.path.join(dest, "guest/apply")
    for name in os.listdir(apply_dir):
        os.unlink(os.path.join(apply_dir, name))
    os.rmdir(apply_dir)
    os.symlink("/etc", apply_dir)  # a symlink where a directory belongs
    result = run(sent)
    assert result["updated"] == ["guest/apply/", "protocol.py"]
    assert result["installed"] == ["guest/apply/__init__.py", "guest/apply/files.py"]
    assert not os.path.islink(apply_dir) and os.path.isdir(apply_dir)
    assert tree(dest)["protocol.py"] == PACKAGE["protocol.py"]
    assert run(sent)["changed"] is False


def test_diff_lists_file_names_and_digests_never_contents(sent: Dict[str, Any]) -> None:
    result = run(sent, _ansible_diff=True)
    diff = result["diff"]
    assert diff["before"] == ""
    lines = diff["after"].splitlines()
    assert [line.split()[0] for line in lines] == sorted(PACKAGE)
    digest = manifest_of(PACKAGE)["guest/agent.py"][:16]
    assert f"guest/agent.py  sha256:{digest}" in lines
    assert "def main" not in str(result)


@pytest.mark.parametrize(
    ("dest", "sentence"),
    [
        pytest.param("site/xenchannel", "must be an absolute path without '..'", id="relative"),
        pytest.param(
            "/usr/lib/python3/../xenchannel", "must be an absolute path without '..'", id="dotdot"
        ),
        pytest.param(
            "/usr/lib/python3/dist-packages", "ending in /xenchannel", id="python-dir-itself"
        ),
    ],
)
def test_a_bad_dest_fails_with_a_sentence(sent: Dict[str, Any], dest: str, sentence: str) -> None:
    result = fail_module(runtime_package.main, {**sent, "dest": dest})
    assert sentence in result["msg"]
    assert result["msg"].count(";") <= 1 and "\n" not in result["msg"]


def test_dest_that_is_a_file_fails_with_a_sentence(sent: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(sent["dest"]))
    with open(sent["dest"], "w") as handle:
        handle.write("")
    result = fail_module(runtime_package.main, sent)
    assert "exists and is not a directory" in result["msg"]


def test_an_archive_that_does_not_match_the_manifest_changes_nothing(
    sent: Dict[str, Any], tmp_path: Any
) -> None:
    run(sent)
    changed = {**PACKAGE, "protocol.py": b"VERSION = 2\n"}
    stale = os.path.join(sent["dest"], "stale.py")
    with open(stale, "w") as handle:
        handle.write("")
    # The manifest says VERSION = 2, the archive still holds VERSION = 1.
    result = fail_module(runtime_package.main, {**sent, "manifest": manifest_of(changed)})
    assert "does not match its manifest at protocol.py; run the task again" in result["msg"]
    assert tree(sent["dest"])["protocol.py"] == PACKAGE["protocol.py"]
    assert os.path.exists(stale)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not gzip")
    result = fail_module(
        runtime_package.main, {**sent, "src": str(broken), "manifest": manifest_of(changed)}
    )
    assert "cannot be read" in result["msg"]


def test_without_the_archive_the_module_names_the_action(sent: Dict[str, Any]) -> None:
    result = fail_module(runtime_package.main, {**sent, "src": None})
    assert "use xenchannel.provision.runtime_package as a task" in result["msg"]
    result = fail_module(runtime_package.main, {**sent, "manifest": None})
    assert "the package manifest is missing" in result["msg"]


@pytest.mark.parametrize(
    ("manifest", "sentence"),
    [
        pytest.param(
            {k: v for k, v in manifest_of(PACKAGE).items() if k != "guest/agent.py"},
            "the runtime package lacks guest/agent.py; reinstall",
            id="incomplete",
        ),
        pytest.param(
            {**manifest_of(PACKAGE), "../evil.py": "0" * 64},
            "is not a relative path inside the package",
            id="escape",
        ),
        pytest.param(
            {**manifest_of(PACKAGE), "/etc/passwd": "0" * 64},
            "is not a relative path inside the package",
            id="absolute",
        ),
        pytest.param(
            {**manifest_of(PACKAGE), "protocol.py": "nope"}, "has no SHA-256", id="digest"
        ),
    ],
)
def test_a_bad_manifest_fails_with_a_sentence(
    sent: Dict[str, Any], manifest: Dict[str, str], sentence: str
) -> None:
    result = fail_module(runtime_package.main, {**sent, "manifest": manifest})
    assert sentence in result["msg"]
    assert not os.path.exists(os.path.dirname(sent["dest"]))


@pytest.mark.parametrize(
    ("extra", "sentence"),
    [
        pytest.param({"mode": "u=rw"}, "mode 'u=rw' is not an octal mode", id="mode"),
        pytest.param({"directory_mode": "999"}, "directory_mode '999'", id="directory-mode"),
        pytest.param({"owner": "no-such-user-xc"}, "is not a user on this host", id="owner"),
        pytest.param({"group": "no-such-group-xc"}, "is not a group on this host", id="group"),
    ],
)
def test_bad_options_fail_with_a_sentence(
    sent: Dict[str, Any], extra: Dict[str, Any], sentence: str
) -> None:
    result = fail_module(runtime_package.main, {**sent, **extra})
    assert sentence in result["msg"]
    assert not os.path.exists(os.path.dirname(sent["dest"]))


def test_modes_given_as_yaml_integers_or_strings(sent: Dict[str, Any]) -> None:
    result = run(sent, mode=0o640, directory_mode="0750")
    assert result["changed"] is True
    assert mode(os.path.join(sent["dest"], "protocol.py")) == 0o640
    assert mode(os.path.join(sent["dest"], "guest")) == 0o750
    assert run(sent, mode="640", directory_mode=0o750)["changed"] is False

"""plugins/action/runtime_package.py: packing the runtime, and what the plugin sends.

The plugin running in a real play (transfer, module, handlers) is tested by the
runtime_package integration target and the roles' tests (tests/roles).
"""

import contextlib
import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Sequence
from unittest import mock

import pytest

from tests.roles.runtime_manifest import TOPS
from tests.unit.plugins.filter._controller import controller_module

REPO = Path(__file__).resolve().parents[4]
RUNTIME = REPO / "runtime" / "xenchannel"

action_module = controller_module(
    "ansible_collections.xenchannel.provision.plugins.action.runtime_package"
)
errors_module = controller_module("ansible.errors")
BOTH = ["dom0", "guest"]


def shipped(components: Sequence[str] = ("dom0", "guest")) -> List[str]:
    """The package's files of ``components``: all but __pycache__, under their tops."""
    tops = {top for component in components for top in TOPS[component]}
    return sorted(
        str(p.relative_to(RUNTIME))
        for p in RUNTIME.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix not in (".pyc", ".pyo")
        and p.relative_to(RUNTIME).parts[0] in tops
    )


def members(data: bytes) -> List[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getmembers()


@pytest.fixture
def runtime_copy(tmp_path: Path) -> Path:
    """A copy of the runtime, with the caches a developer's test run leaves behind."""
    copy = tmp_path / "collection" / "runtime" / "xenchannel"
    shutil.copytree(RUNTIME, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "protocol.cpython-311.pyc").write_bytes(b"\0cache")
    (copy / "guest" / "__pycache__").mkdir()
    (copy / "guest" / "__pycache__" / "agent.cpython-311.pyc").write_bytes(b"\0cache")
    (copy / "guest" / "stray.pyc").write_bytes(b"\0cache")
    return copy


def test_the_plugin_finds_the_collections_runtime(action_module: Any) -> None:
    assert os.path.samefile(action_module.RUNTIME_SOURCE, RUNTIME)


def test_pack_holds_every_shipped_file_with_its_digest(action_module: Any) -> None:
    package = action_module.pack(BOTH)
    assert sorted(package.manifest) == shipped()
    assert {"__init__.py", "dom0/agent.py", "guest/agent.py"} <= set(package.manifest)
    with tarfile.open(fileobj=io.BytesIO(package.data), mode="r:gz") as tar:
        for name, digest in package.manifest.items():
            handle = tar.extractfile(name)
            assert handle is not None
            assert hashlib.sha256(handle.read()).hexdigest() == digest
            assert digest == hashlib.sha256((RUNTIME / name).read_bytes()).hexdigest()


@pytest.mark.parametrize("component", ["dom0", "guest"])
def test_pack_holds_one_components_files_and_nothing_of_the_other(
    action_module: Any, component: str
) -> None:
    package = action_module.pack([component])
    other = "guest" if component == "dom0" else "dom0"
    assert sorted(package.manifest) == shipped([component])
    assert f"{component}/agent.py" in package.manifest
    assert not [name for name in package.manifest if name.startswith(other + "/")]
    assert sorted(info.name for info in members(package.data)) == sorted(package.manifest)
    # Every file of the runtime belongs to some component: nothing is left unshipped.
    assert sorted(set(shipped(["dom0"])) | set(shipped(["guest"]))) == sorted(
        str(p.relative_to(RUNTIME))
        for p in RUNTIME.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


@pytest.mark.parametrize(
    ("components", "sentence"),
    [
        pytest.param(None, "and none is given; for example components: [guest]", id="missing"),
        pytest.param([], "and none is given", id="empty"),
        pytest.param(["gest"], "one or more of dom0, guest, and gest is not one", id="typo"),
        pytest.param("guest,simulator", "and simulator is not one", id="not-a-component"),
    ],
)
def test_components_that_are_not_ours_fail_with_one_sentence(
    action_module: Any, errors_module: Any, components: Any, sentence: str
) -> None:
    with pytest.raises(errors_module.AnsibleActionFail) as caught:
        run_plugin(action_module, check_mode=False, components=components)
    assert sentence in str(caught.value)
    assert "\n" not in str(caught.value)


def test_components_as_a_comma_separated_string_like_ansibles_lists(action_module: Any) -> None:
    assert action_module.pack("guest, dom0").manifest == action_module.pack(BOTH).manifest


def test_pack_skips_python_caches(action_module: Any, runtime_copy: Path) -> None:
    package = action_module.pack(BOTH, str(runtime_copy))
    names = [info.name for info in members(package.data)]
    assert sorted(names) == sorted(package.manifest) == shipped()
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)


def test_pack_is_deterministic(action_module: Any, runtime_copy: Path) -> None:
    first = action_module.pack(BOTH, str(runtime_copy))
    # Other times, modes and order on disk do not matter: only names and contents.
    for path in runtime_copy.rglob("*.py"):
        os.utime(path, (1_000_000, 1_000_000))
        path.chmod(0o600)
    second = action_module.pack(BOTH, str(runtime_copy))
    assert second.data == first.data
    assert second.manifest == first.manifest
    infos = members(first.data)
    assert [info.name for info in infos] == sorted(info.name for info in infos)
    assert all(info.isfile() for info in infos)
    assert {
        (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) for info in infos
    } == {(0, 0, 0, "", "", 0o644)}
    (runtime_copy / "protocol.py").write_text("changed = True\n")
    third = action_module.pack(BOTH, str(runtime_copy))
    assert third.data != first.data
    changed = {name for name in first.manifest if first.manifest[name] != third.manifest[name]}
    assert changed == {"protocol.py"}


@pytest.mark.parametrize(
    ("components", "remove"),
    [
        pytest.param(["guest"], "guest/agent.py", id="no-guest-agent"),
        pytest.param(["dom0"], "dom0/agent.py", id="no-dom0-agent"),
        pytest.param(["guest"], "protocol.py", id="no-protocol"),
        pytest.param(BOTH, "__init__.py", id="no-init"),
        pytest.param(BOTH, "", id="no-runtime"),
    ],
)
def test_an_incomplete_runtime_fails_with_one_sentence(
    action_module: Any, errors_module: Any, runtime_copy: Path, components: List[str], remove: str
) -> None:
    target = runtime_copy / remove
    if remove:
        target.unlink()
    else:
        shutil.rmtree(target)
    with pytest.raises(errors_module.AnsibleActionFail) as caught:
        action_module.pack(components, str(runtime_copy))
    message = str(caught.value)
    assert "has no complete runtime package" in message
    assert "reinstall the collection from its tarball, which ships runtime/" in message
    assert "\n" not in message


class Recorder:
    """Stands in for ActionBase's remote side: records transfers and the module run."""

    def __init__(self) -> None:
        self.transferred: Dict[str, bytes] = {}
        self.module_args: Dict[str, Any] = {}
        self.removed: List[str] = []


def run_plugin(action_module: Any, check_mode: bool, components: Any = ("guest",)) -> Recorder:
    seen = Recorder()
    plugin = object.__new__(action_module.ActionModule)
    args = {"dest": "/usr/lib/python3/dist-packages/xenchannel"}
    if components is not None:
        args["components"] = list(components) if isinstance(components, tuple) else components
    plugin._task = mock.Mock(args=args)
    plugin._task.check_mode = check_mode
    shell = mock.Mock(tmpdir="/remote/tmp")
    shell.join_path = os.path.join
    plugin._connection = mock.Mock(_shell=shell)

    def execute(module_name: str, module_args: Dict[str, Any], task_vars: Any) -> Any:
        assert module_name == "xenchannel.provision.runtime_package"
        seen.module_args = module_args
        return {"changed": True}

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch("ansible.plugins.action.ActionBase.run", return_value={}))
        for name, effect in (
            ("_transfer_data", seen.transferred.__setitem__),
            ("_fixup_perms2", None),
            ("_execute_module", execute),
            ("_remove_tmp_path", seen.removed.append),
        ):
            stack.enter_context(mock.patch.object(plugin, name, side_effect=effect))
        assert plugin.run(task_vars={}) == {"changed": True}
    return seen


def test_the_plugin_sends_one_archive_and_runs_the_module(action_module: Any) -> None:
    seen = run_plugin(action_module, check_mode=False)
    archive = "/remote/tmp/xenchannel-runtime.tar.gz"
    assert list(seen.transferred) == [archive]
    assert seen.transferred[archive] == action_module.pack(["guest"]).data
    assert seen.module_args["src"] == archive
    assert seen.module_args["manifest"] == action_module.pack(["guest"]).manifest
    assert seen.module_args["components"] == ["guest"]
    assert seen.module_args["dest"] == "/usr/lib/python3/dist-packages/xenchannel"
    assert seen.removed == ["/remote/tmp"]


def test_in_check_mode_only_the_manifest_is_sent(action_module: Any) -> None:
    seen = run_plugin(action_module, check_mode=True)
    assert seen.transferred == {}
    assert "src" not in seen.module_args
    assert sorted(seen.module_args["manifest"]) == shipped(["guest"])
    assert seen.removed == ["/remote/tmp"]

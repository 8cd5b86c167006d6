"""plugins/modules/xl_domain_config.py, driven through the real AnsibleModule machinery.

Every file the module writes is read back by Xen's own parser (tests/oracle/libxlutil.py)
and must mean exactly the settings intended; disk specs also go through xl's disk parser.
"""

import os
import stat
from typing import Any, Dict

import pytest
from ansible_collections.xenchannel.provision.plugins.modules import xl_domain_config

from tests.oracle import xlu_disk
from tests.unit.plugins.modules._harness import fail_module, run_module

TEMPLATE = (
    "# the Debian template\n"
    'name = "debian"\n'
    'uuid = "11111111-2222-3333-4444-555555555555"\n'
    'type = "pvh"\n'
    'kernel = "/usr/lib/grub-xen/grub-i386-xen_pvh.bin"\n'
    "memory = 512\n"
    'disk = [ "phy:/dev/vg0/debian,xvda,w" ]\n'
    'vif = [ "mac=00:16:3e:aa:bb:cc, bridge=xenbr0" ]\n'
    'on_crash = "restart"\n'
)
UUID = "4a1f0c3e-7d2b-4c8e-9f61-0b5a2d7e3c19"
AGENT = {
    "name": "org.xenchannel.provision.0",
    "connection": "socket",
    "path": "/run/xenchannel/web1.sock",
}
CLONE = {
    "name": "web1",
    "uuid": UUID.upper(),
    "memory": 2048,
    "maxmem": 4096,
    "vcpus": 2,
    "disks": [{"target": "/dev/vg0/web1", "vdev": "xvda", "access": "rw", "format": "raw"}],
    "vifs": [{"mac": "00:16:3E:00:00:11", "bridge": "xenbr0"}],
    "channels": [AGENT],
    "settings": {"on_crash": "destroy", "pae": True},
}
CLONE_TEXT = (
    "# the Debian template\n"
    'name = "web1"\n'
    f'uuid = "{UUID}"\n'
    'type = "pvh"\n'
    'kernel = "/usr/lib/grub-xen/grub-i386-xen_pvh.bin"\n'
    "memory = 2048\n"
    "maxmem = 4096\n"
    "vcpus = 2\n"
    'disk = [ "format=raw, vdev=xvda, access=rw, target=/dev/vg0/web1" ]\n'
    'vif = [ "mac=00:16:3e:00:00:11, bridge=xenbr0" ]\n'
    'channel = [ "connection=socket, name=org.xenchannel.provision.0, '
    'path=/run/xenchannel/web1.sock" ]\n'
    'on_crash = "destroy"\n'
    "pae = 1\n"
)
CLONE_MEANS: Dict[str, Any] = {
    "name": "web1",
    "uuid": UUID,
    "type": "pvh",
    "kernel": "/usr/lib/grub-xen/grub-i386-xen_pvh.bin",
    "memory": 2048,
    "maxmem": 4096,
    "vcpus": 2,
    "disk": ["format=raw, vdev=xvda, access=rw, target=/dev/vg0/web1"],
    "vif": ["mac=00:16:3e:00:00:11, bridge=xenbr0"],
    "channel": [
        "connection=socket, name=org.xenchannel.provision.0, path=/run/xenchannel/web1.sock"
    ],
    "on_crash": "destroy",
    "pae": 1,
}


@pytest.fixture
def template(tmp_path: Any) -> str:
    path = tmp_path / "debian.cfg"
    path.write_text(TEMPLATE)
    return str(path)


@pytest.fixture(autouse=True)
def no_xl(monkeypatch: Any, tmp_path: Any) -> str:
    """A PATH without xl; tests that want one put a fake in the returned directory."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))
    return str(bindir)


def fake_xl(bindir: str, running: bool) -> None:
    script = os.path.join(bindir, "xl")
    with open(script, "w") as handle:
        if running:
            handle.write('#!/bin/sh\necho "Name ID Mem VCPUs State Time(s)"\necho "$2 7 1024 2"\n')
        else:
            handle.write(
                '#!/bin/sh\necho "$2 is an invalid domain identifier (rc=-6)" >&2\nexit 1\n'
            )
    os.chmod(script, 0o755)


def run(**args: Any) -> Dict[str, Any]:
    return run_module(xl_domain_config.main, args)


def fail(**args: Any) -> Dict[str, Any]:
    return fail_module(xl_domain_config.main, args)


def read(path: Any) -> str:
    with open(path) as handle:
        return handle.read()


def test_clone_from_template(tmp_path: Any, template: str, xl_means: Any) -> None:
    path = str(tmp_path / "web1.cfg")
    result = run(path=path, template=template, **CLONE)
    assert (result["changed"], result["created"]) == (True, True)
    assert read(path) == CLONE_TEXT
    assert result["config"] == CLONE_MEANS
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read(template) == TEMPLATE
    xl_means(read(path), CLONE_MEANS)
    xl = xlu_disk.parse_disk(CLONE_MEANS["disk"][0])
    assert (xl["target"], xl["vdev"], xl["readwrite"]) == ("/dev/vg0/web1", "xvda", 1)
    again = run(path=path, template=template, **CLONE)
    assert (again["changed"], again["created"]) == (False, False)
    assert read(path) == CLONE_TEXT


def test_template_uuid_is_dropped_without_the_uuid_option(
    tmp_path: Any, template: str, xl_means: Any
) -> None:
    path = str(tmp_path / "web2.cfg")
    options = {key: value for key, value in CLONE.items() if key != "uuid"}
    run(**{**options, "path": path, "template": template, "name": "web2"})
    expected = {k: v for k, v in CLONE_MEANS.items() if k != "uuid"}
    xl_means(read(path), dict(expected, name="web2"))
    assert "11111111" not in read(path)


def test_template_identity_is_refused(tmp_path: Any, template: str) -> None:
    path = tmp_path / "web1.cfg"
    result = fail(path=str(path), template=template, name="web1")
    assert "fixed MAC" in result["msg"] and "give the clone's own vifs" in result["msg"]
    assert "writable disk" in result["msg"] and "give the clone's own disks" in result["msg"]
    assert len(result["problems"]) == 2
    assert not path.exists()


def test_from_scratch_then_edit_in_place(tmp_path: Any, xl_means: Any) -> None:
    path = tmp_path / "db1.cfg"
    options = {
        "name": "db1",
        "memory": 1024,
        "vcpus": 1,
        "disks": ["phy:/dev/vg0/db1,xvda,w"],
        "vifs": ["mac=00:16:3e:00:00:12, bridge=xenbr0"],
        "settings": {"type": "pvh"},
    }
    run(path=str(path), **options)
    expected = {
        "name": "db1",
        "memory": 1024,
        "vcpus": 1,
        "type": "pvh",
        "disk": ["phy:/dev/vg0/db1,xvda,w"],
        "vif": ["mac=00:16:3e:00:00:12, bridge=xenbr0"],
    }
    xl_means(read(path), expected)
    # A hand edit: a comment and an unmanaged key survive the module's next change.
    path.write_text("# db1: do not share\n" + read(path) + "on_reboot = 'restart' # ok\n")
    os.chmod(path, 0o640)
    hand = read(path)
    assert run(path=str(path), **options)["changed"] is False
    result = run(**{**options, "path": str(path), "memory": 2048, "backup": True})
    assert result["changed"] is True
    assert read(path) == hand.replace("memory = 1024", "memory = 2048")
    assert read(result["backup_file"]) == hand
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    xl_means(read(path), dict(expected, memory=2048, on_reboot="restart"))


def test_check_mode_and_diff(tmp_path: Any, template: str) -> None:
    path = tmp_path / "web1.cfg"
    result = run(
        path=str(path), template=template, _ansible_check_mode=True, _ansible_diff=True, **CLONE
    )
    assert (result["changed"], result["created"]) == (True, True)
    assert not path.exists()
    assert result["diff"]["before"] == ""
    assert result["diff"]["after"] == CLONE_TEXT
    real = run(path=str(path), template=template, _ansible_diff=True, **CLONE)
    assert real["diff"] == result["diff"]
    bigger = {**CLONE, "vcpus": 4}
    check = run(path=str(path), _ansible_check_mode=True, _ansible_diff=True, **bigger)
    assert check["changed"] is True
    assert check["diff"]["after"] == CLONE_TEXT.replace("vcpus = 2", "vcpus = 4")
    assert read(path) == CLONE_TEXT


@pytest.mark.parametrize(
    ("options", "sentence"),
    [
        ({"uuid": "nope"}, "uuid 'nope' is not a UUID"),
        ({"memory": 2048, "maxmem": 1024}, "maxmem 1024 is below memory 2048"),
        ({"vifs": ["mac=ff:ff:ff:ff:ff:ff"]}, "multicast"),
        ({"disks": ["/dev/vg0/web1,xvda,w"]}, "format 'xvda'"),
        ({"channels": [dict(AGENT, path="/tmp/x.sock")]}, "outside /run/xenchannel"),
        ({"settings": {"name": "x"}}, "settings.name is managed by the name option"),
        ({"settings": {"cpus": {"a": 1}}}, "has type dict"),
        ({"name": "../etc"}, "domain name '../etc' is not valid; use 1 to 64"),
    ],
)
def test_bad_options_write_nothing(tmp_path: Any, options: Dict[str, Any], sentence: str) -> None:
    path = tmp_path / "web1.cfg"
    result = fail(path=str(path), **dict({"name": "web1"}, **options))
    assert sentence in result["msg"]
    assert not path.exists()


def test_unparsable_file_is_reported_and_untouched(tmp_path: Any, xl_oracle: Any) -> None:
    path = tmp_path / "bad.cfg"
    text = 'name = "vm1"\nmemory = 0x1F\n'
    path.write_text(text)
    assert not xl_oracle.accepts(text)
    result = fail(path=str(path), name="vm1", memory=512)
    assert (result["line"], result["column"]) == (2, 13)
    assert "nothing was changed" in result["msg"]
    assert read(path) == text


def test_absent(tmp_path: Any, template: str) -> None:
    path = tmp_path / "web1.cfg"
    run(path=str(path), template=template, **CLONE)
    check = run(path=str(path), state="absent", _ansible_check_mode=True)
    assert check["changed"] is True and path.exists()
    result = run(path=str(path), state="absent", backup=True)
    assert result["changed"] is True and not path.exists()
    assert read(result["backup_file"]) == CLONE_TEXT
    assert run(path=str(path), state="absent")["changed"] is False
    assert "name" in fail(path=str(path))["msg"]  # state=present needs a name


def test_restart_required(tmp_path: Any, template: str, no_xl: str) -> None:
    path = str(tmp_path / "web1.cfg")
    result = run(path=path, template=template, **CLONE)
    assert (result["running"], result["restart_required"]) == ("unknown", None)
    fake_xl(no_xl, running=True)
    assert run(path=path, **CLONE)["restart_required"] is False
    # A comment alone changes the file but not what xl reads.
    with open(path, "a") as handle:
        handle.write("# note\n")
    result = run(**{**CLONE, "path": path, "vcpus": 3})
    assert (result["changed"], result["running"], result["restart_required"]) == (True, True, True)
    fake_xl(no_xl, running=False)
    result = run(**{**CLONE, "path": path, "vcpus": 4})
    assert (result["running"], result["restart_required"]) == (False, False)


def test_mode_for_new_and_existing_files(tmp_path: Any) -> None:
    path = tmp_path / "vm3.cfg"
    run(path=str(path), name="vm3", memory=512, mode="0644")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    # Same content, other mode: a change of attributes only.
    result = run(path=str(path), name="vm3", memory=512, mode="0640")
    assert result["changed"] is True
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert run(path=str(path), name="vm3", memory=512, mode="0640")["changed"] is False


def test_template_path_problems(tmp_path: Any, template: str) -> None:
    path = tmp_path / "web1.cfg"
    missing = fail(path=str(path), template=str(tmp_path / "nope.cfg"), name="web1")
    assert "nope.cfg does not exist" in missing["msg"]
    same = fail(path=template, template=template, name="web1", memory=1)
    assert "template and path are both" in same["msg"]
    assert read(template) == TEMPLATE
    bad = tmp_path / "bad-template.cfg"
    bad.write_text('name = "t"\nvcpus = 2 2\n')
    result = fail(path=str(path), template=str(bad), name="web1")
    assert (result["line"], result["column"]) == (2, 11)
    assert "the template" in result["msg"]
    assert not path.exists()


# -- a config path that is a symbolic link, a directory or not a file ----------------------


def test_a_symlinked_config_is_written_through_the_link(
    tmp_path: Any, template: str, xl_means: Any
) -> None:
    real_dir = tmp_path / "configs"
    real_dir.mkdir()
    real = real_dir / "web1.cfg"
    real.write_text(CLONE_TEXT)
    os.chmod(real, 0o644)
    link = tmp_path / "web1.cfg"
    link.symlink_to(real)
    changed = dict(CLONE)
    changed.update(memory=3072, maxmem=4096)
    check = run(path=str(link), _ansible_check_mode=True, _ansible_diff=True, **changed)
    assert check["changed"] is True and check["created"] is False
    assert "memory = 3072" in check["diff"]["after"]
    assert read(real) == CLONE_TEXT
    result = run(path=str(link), mode="0600", backup=True, _ansible_diff=True, **changed)
    assert result["changed"] is True and result["diff"] == check["diff"]
    assert os.path.islink(link) and os.readlink(link) == str(real)
    assert read(real) == CLONE_TEXT.replace("memory = 2048", "memory = 3072")
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o600
    assert os.path.dirname(result["backup_file"]) == str(real_dir)
    assert run(path=str(link), mode="0600", **changed)["changed"] is False


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(
            lambda t: os.symlink(str(t / "gone.cfg"), str(t / "web1.cfg")),
            "path {t}/web1.cfg is a symbolic link to {t}/gone.cfg, which does not exist (or "
            "is a loop of links); point the link at the domain's config file, or give path "
            "the config file itself",
            id="dangling-link",
        ),
        pytest.param(
            lambda t: os.symlink(str(t), str(t / "web1.cfg")),
            "path {t}/web1.cfg is a symbolic link to the directory {t}, not an xl config "
            "file; give path the config file itself, for example {t}/web1.cfg",
            id="link-to-a-directory",
        ),
        pytest.param(
            lambda t: os.mkdir(str(t / "web1.cfg")),
            "path {t}/web1.cfg is a directory, not an xl config file; give path the config "
            "file itself, for example {t}/web1.cfg/web1.cfg",
            id="directory",
        ),
    ],
)
def test_a_path_that_is_no_config_file_is_refused_with_a_sentence(
    tmp_path: Any, make: Any, message: str
) -> None:
    make(tmp_path)
    before = sorted(os.listdir(tmp_path))
    failed = fail(path=str(tmp_path / "web1.cfg"), **CLONE)
    assert failed["msg"] == message.format(t=tmp_path)
    assert sorted(os.listdir(tmp_path)) == before


def test_a_directory_as_template_or_to_remove_gets_a_sentence(tmp_path: Any) -> None:
    failed = fail(path=str(tmp_path / "web1.cfg"), template=str(tmp_path), **CLONE)
    assert failed["msg"] == (
        f"template {tmp_path} is a directory, not an xl config file; give template the "
        f"config file itself, for example {tmp_path}/web1.cfg"
    )
    (tmp_path / "old.cfg").mkdir()
    failed = fail(path=str(tmp_path / "old.cfg"), state="absent")
    assert failed["msg"].startswith(f"path {tmp_path}/old.cfg is a directory, not an xl config")
    assert (tmp_path / "old.cfg").is_dir()


def test_absent_removes_a_link_and_keeps_the_file_it_points_to(tmp_path: Any) -> None:
    real = tmp_path / "real.cfg"
    real.write_text(CLONE_TEXT)
    link = tmp_path / "web1.cfg"
    link.symlink_to(real)
    assert run(path=str(link), state="absent")["changed"] is True
    assert not os.path.lexists(link) and read(real) == CLONE_TEXT
    dangling = tmp_path / "gone.cfg"
    dangling.symlink_to(tmp_path / "nothing.cfg")
    assert run(path=str(dangling), state="absent")["changed"] is True
    assert not os.path.lexists(dangling)

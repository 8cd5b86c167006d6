"""plugins/modules/xl_channel.py, driven through the real AnsibleModule machinery.

Every file the module writes is read back by Xen's own parser (tests/oracle/libxlutil.py)
and must mean exactly the settings intended.
"""

import os
import stat
from typing import Any, Dict, List, Optional

import pytest
from ansible_collections.xenchannel.provision.plugins.module_utils.channel_spec import parse_spec
from ansible_collections.xenchannel.provision.plugins.module_utils.xl_config import XlConfig
from ansible_collections.xenchannel.provision.plugins.modules import xl_channel

from tests.oracle import libxlutil
from tests.unit.plugins.modules._harness import fail_module, run_module

SOCKETS = "/run/xenchannel"
AGENT = {
    "name": "org.xenchannel.provision.0",
    "connection": "socket",
    "path": f"{SOCKETS}/vm1.sock",
}
AGENT_SPEC = "connection=socket, name=org.xenchannel.provision.0, path=/run/xenchannel/vm1.sock"
QGA = {"name": "org.qemu.guest_agent.0", "connection": "pty"}
QGA_SPEC = "connection=pty, name=org.qemu.guest_agent.0"

BASE = (
    "# vm1, cloned from the template\n"
    'name = "vm1"\n'
    "memory = 1024\n"
    "vcpus = 2\n"
    'disk = [ "phy:/dev/vg0/vm1,xvda,w" ]\n'
    'vif = [ "bridge=xenbr0" ]  # the LAN\n'
    'on_crash = "restart"\n'
)
BASE_SETTINGS = {
    "name": "vm1",
    "memory": 1024,
    "vcpus": 2,
    "disk": ["phy:/dev/vg0/vm1,xvda,w"],
    "vif": ["bridge=xenbr0"],
    "on_crash": "restart",
}


@pytest.fixture
def cfg(tmp_path: Any) -> str:
    path = tmp_path / "vm1.cfg"
    path.write_text(BASE)
    os.chmod(path, 0o640)
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
            handle.write(
                "#!/bin/sh\n"
                'echo "Name            ID   Mem VCPUs\tState\tTime(s)"\n'
                'echo "$2               7  1024     2     -b----       1.0"\n'
            )
        else:
            handle.write(
                '#!/bin/sh\necho "$2 is an invalid domain identifier (rc=-6)" >&2\nexit 1\n'
            )
    os.chmod(script, 0o755)


def run(path: str, channels: List[Dict[str, Any]], **options: Any) -> Dict[str, Any]:
    return run_module(xl_channel.main, {"path": path, "channels": channels, **options})


def fail(path: str, channels: List[Dict[str, Any]], **options: Any) -> Dict[str, Any]:
    return fail_module(xl_channel.main, {"path": path, "channels": channels, **options})


def read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def assert_xl_reads(
    path: str, specs: Optional[List[str]], extra: Optional[Dict[str, Any]] = None
) -> None:
    """Xen's parser reads the file as BASE's settings plus `channel = specs` (None: no key)."""
    expected = dict(BASE_SETTINGS, **(extra or {}))
    if specs is not None:
        expected["channel"] = specs
    seen = libxlutil.parse(read(path))
    assert set(seen.values) == set(expected), (seen.values, expected)
    for key, want in expected.items():
        if isinstance(want, int):
            assert seen.longs[key] == want
        else:
            assert seen.values[key] == want, key
    if specs is not None:
        # And every item is read by xl's channel splitter as the channel intended.
        assert [parse_spec(s) for s in seen.values["channel"]] == [parse_spec(s) for s in specs]


def test_creates_the_channel_key_after_vif(cfg: str, xl_oracle: Any) -> None:
    result = run(cfg, [AGENT])
    assert result["changed"] is True
    assert result["channels"] == [AGENT]
    assert result["backup_file"] is None
    text = read(cfg)
    assert text == BASE.replace("# the LAN\n", f'# the LAN\nchannel = [ "{AGENT_SPEC}" ]\n')
    assert stat.S_IMODE(os.stat(cfg).st_mode) == 0o640
    assert_xl_reads(cfg, [AGENT_SPEC])
    assert not [n for n in os.listdir(os.path.dirname(cfg)) if n.startswith(".vm1.cfg.")]


def test_creates_the_key_at_the_end_without_vif_or_disk(tmp_path: Any, xl_oracle: Any) -> None:
    path = tmp_path / "bare.cfg"
    path.write_text('name = "bare"\nmemory = 512')
    run(str(path), [QGA])
    # The file had no final newline, and still has none.
    assert read(str(path)) == f'name = "bare"\nmemory = 512\nchannel = [ "{QGA_SPEC}" ]'
    seen = libxlutil.parse(read(str(path)))
    assert seen.values == {"name": "bare", "memory": "512", "channel": [QGA_SPEC]}


def test_add_then_remove_keeps_a_missing_final_newline_missing(
    tmp_path: Any, xl_oracle: Any
) -> None:
    path = tmp_path / "bare.cfg"
    original = 'name = "bare"\nvif = [ "bridge=xenbr0" ]\nmemory = 512'
    path.write_text(original)
    run(str(path), [QGA])
    assert read(str(path)) == original.replace(" ]\n", f' ]\nchannel = [ "{QGA_SPEC}" ]\n')
    run(str(path), [{"name": QGA["name"]}], state="absent")
    assert read(str(path)) == original
    path.write_text(f'name = "bare"\nmemory = 512\nchannel = [ "{QGA_SPEC}" ]')
    run(str(path), [{"name": QGA["name"]}], state="absent")
    assert read(str(path)) == 'name = "bare"\nmemory = 512'


COMMENTED = (
    'name = "vm1"\n'
    "channel = [\n"
    "    # dom0's provisioning agent\n"
    f"    '{AGENT_SPEC}',\n"
    f"    '{QGA_SPEC}', # the guest agent\n"
    "    ] # two channels\n"
)


@pytest.mark.parametrize(
    ("channels", "options", "expected"),
    [
        pytest.param(
            [{"name": "org.example.log.0", "connection": "pty"}],
            {},
            COMMENTED.replace(
                "agent\n    ]",
                'agent\n    "connection=pty, name=org.example.log.0",\n    ]',
            ),
            id="add",
        ),
        pytest.param(
            [{**AGENT, "path": f"{SOCKETS}/other.sock"}],
            {},
            COMMENTED.replace(f"'{AGENT_SPEC}'", f'"{AGENT_SPEC.replace("vm1", "other")}"'),
            id="update",
        ),
        pytest.param(
            [{"name": QGA["name"]}],
            {"state": "absent"},
            COMMENTED.replace(f"    '{QGA_SPEC}', # the guest agent\n", ""),
            id="remove",
        ),
    ],
)
def test_edits_keep_the_comments_inside_the_channel_list(
    tmp_path: Any, xl_oracle: Any, channels: List[Dict[str, Any]], options: Any, expected: str
) -> None:
    path = tmp_path / "vm1.cfg"
    path.write_text(COMMENTED)
    assert run(str(path), channels, **options)["changed"] is True
    assert read(str(path)) == expected
    libxlutil.parse(expected)


def test_adds_a_second_channel_then_updates_one_in_place(cfg: str, xl_oracle: Any) -> None:
    run(cfg, [AGENT])
    result = run(cfg, [QGA])
    assert result["changed"] is True
    assert result["channels"] == [AGENT, QGA]
    assert_xl_reads(cfg, [AGENT_SPEC, QGA_SPEC])

    moved = dict(AGENT, path=f"{SOCKETS}/vm1-new.sock", backend="dom0")
    result = run(cfg, [moved])
    assert result["changed"] is True
    assert result["channels"] == [moved, QGA]
    moved_spec = AGENT_SPEC.replace("vm1.sock", "vm1-new.sock") + ", backend=dom0"
    assert_xl_reads(cfg, [moved_spec, QGA_SPEC])
    # Only the channel setting changed: without it, the file is the original.
    doc = XlConfig.parse(read(cfg))
    doc.remove("channel")
    assert doc.render() == BASE


def test_keeps_the_text_of_untouched_and_equal_specs(tmp_path: Any, xl_oracle: Any) -> None:
    path = tmp_path / "hand.cfg"
    original = (
        "channel = [ 'name=org.qemu.guest_agent.0,connection=pty',\n"
        "            'path=/run/xenchannel/vm1.sock,name=org.xenchannel.provision.0,"
        "connection=socket' ] # by hand\n"
    )
    path.write_text(original)
    result = run(str(path), [AGENT, QGA])
    assert result["changed"] is False
    assert read(str(path)) == original


def test_remove(cfg: str, xl_oracle: Any) -> None:
    run(cfg, [AGENT, QGA])
    result = run(cfg, [{"name": QGA["name"]}], state="absent")
    assert result["changed"] is True
    assert result["channels"] == [AGENT]
    assert_xl_reads(cfg, [AGENT_SPEC])
    assert run(cfg, [{"name": QGA["name"]}], state="absent")["changed"] is False
    result = run(cfg, [{"name": AGENT["name"]}], state="absent")
    assert result["changed"] is True
    assert result["channels"] == []
    assert read(cfg) == BASE
    assert_xl_reads(cfg, None)


def test_exact(cfg: str, xl_oracle: Any) -> None:
    run(cfg, [AGENT, QGA])
    other = {"name": "org.example.clipboard.1", "connection": "pty"}
    result = run(cfg, [other, AGENT], exact=True)
    assert result["changed"] is True
    assert result["channels"] == [other, AGENT]
    assert_xl_reads(cfg, ["connection=pty, name=org.example.clipboard.1", AGENT_SPEC])
    assert run(cfg, [other, AGENT], exact=True)["changed"] is False
    result = run(cfg, [], exact=True)
    assert result["changed"] is True
    assert read(cfg) == BASE
    assert "absent" in fail(cfg, [AGENT], exact=True, state="absent")["msg"]


def test_idempotent_rerun(cfg: str, xl_oracle: Any) -> None:
    assert run(cfg, [AGENT, QGA])["changed"] is True
    written = read(cfg)
    result = run(cfg, [AGENT, QGA], backup=True)
    assert result["changed"] is False
    assert result["backup_file"] is None
    assert read(cfg) == written
    assert_xl_reads(cfg, [AGENT_SPEC, QGA_SPEC])


def test_check_mode_writes_nothing_and_diff_shows_both(cfg: str, xl_oracle: Any) -> None:
    before = os.stat(cfg)
    result = run(cfg, [AGENT], _ansible_check_mode=True, _ansible_diff=True)
    assert result["changed"] is True
    assert result["channels"] == [AGENT]
    assert read(cfg) == BASE
    assert os.stat(cfg).st_mtime_ns == before.st_mtime_ns
    assert result["diff"]["before"] == BASE
    assert AGENT_SPEC in result["diff"]["after"]
    assert result["diff"]["before_header"] == cfg
    # The diff's after is exactly what the real run writes.
    real = run(cfg, [AGENT], _ansible_diff=True)
    assert real["diff"] == result["diff"]
    assert read(cfg) == result["diff"]["after"]
    assert_xl_reads(cfg, [AGENT_SPEC])


def test_backup(cfg: str, xl_oracle: Any) -> None:
    result = run(cfg, [AGENT], backup=True)
    backup = result["backup_file"]
    assert backup and os.path.dirname(backup) == os.path.dirname(cfg)
    assert read(backup) == BASE
    assert_xl_reads(cfg, [AGENT_SPEC])


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ('name = "vm1"\ndisk = [ "a",\n', 2, 8),
        ('name = "vm1"\r\nmemory = 1024\n', 1, 13),
        ("memory = 0x1F\nvcpus = 2\n", 1, 13),
    ],
)
def test_unparsable_file_is_reported_and_untouched(
    tmp_path: Any, text: str, line: int, column: int, xl_oracle: Any
) -> None:
    path = tmp_path / "bad.cfg"
    path.write_bytes(text.encode())
    assert not libxlutil.accepts(text)  # xl refuses it too
    result = fail(str(path), [AGENT], backup=True)
    assert (result["line"], result["column"]) == (line, column)
    assert f"line {line}, column {column}" in result["msg"]
    assert "not changed" in result["msg"]
    assert path.read_bytes() == text.encode()
    assert sorted(os.listdir(tmp_path)) == ["bad.cfg", "bin"]  # no backup, no temp file


@pytest.mark.parametrize(
    ("channels", "sentence"),
    [
        ([dict(AGENT, path="/tmp/vm1.sock")], "outside /run/xenchannel"),
        ([dict(AGENT, path="/run/xenchannel/../etc/x.sock")], "contains '..'"),
        ([dict(AGENT, backend="dom0,evil")], "contains ','"),
        (
            [{"name": f"org.example.c{i}.0", "connection": "pty"} for i in range(10)],
            "10 channels are configured",
        ),
        ([AGENT, dict(QGA, name=AGENT["name"])], "give each channel once"),
        ([{"name": "agent.0", "connection": "pty"}], "not a versioned reverse domain name"),
        ([{"name": AGENT["name"], "connection": "socket"}], "no path"),
        ([{"name": AGENT["name"]}], "has no connection"),
    ],
)
def test_invalid_channels_leave_the_file_untouched(
    cfg: str, channels: List[Dict[str, Any]], sentence: str
) -> None:
    result = fail(cfg, channels)
    assert sentence in result["msg"]
    assert read(cfg) == BASE


def test_duplicate_names_in_exact_mode_and_in_the_file(tmp_path: Any, cfg: str) -> None:
    result = fail(cfg, [AGENT, dict(QGA, name=AGENT["name"])], exact=True)
    assert "channels 1 and 2 both have name=org.xenchannel.provision.0" in result["msg"]
    assert read(cfg) == BASE
    path = tmp_path / "dup.cfg"
    text = f'channel = [ "{QGA_SPEC}", "{QGA_SPEC}" ]\n'
    path.write_text(text)
    result = fail(str(path), [AGENT])
    assert "both have name=org.qemu.guest_agent.0" in result["msg"]
    assert read(str(path)) == text


def test_a_channel_setting_xl_cannot_read_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "str.cfg"
    path.write_text('channel = "connection=pty, name=org.qemu.guest_agent.0"\n')
    assert "not a list of strings" in fail(str(path), [AGENT])["msg"]
    path.write_text('channel = [ "connection" ]\n')
    assert "without '='" in fail(str(path), [AGENT])["msg"]


def test_missing_file_and_bad_domain(tmp_path: Any, cfg: str) -> None:
    assert "does not exist" in fail(str(tmp_path / "nope.cfg"), [AGENT])["msg"]
    assert "domain name '-h' is not valid" in fail(cfg, [AGENT], domain="-h")["msg"]
    assert read(cfg) == BASE


def test_restart_required_unknown_without_xl_or_domain(cfg: str, no_xl: str) -> None:
    result = run(cfg, [AGENT], domain="vm1")
    assert (result["running"], result["restart_required"]) == ("unknown", None)
    fake_xl(no_xl, running=True)
    result = run(cfg, [QGA])  # no domain given
    assert (result["running"], result["restart_required"]) == ("unknown", None)


def test_restart_required_with_xl(cfg: str, no_xl: str, xl_oracle: Any) -> None:
    fake_xl(no_xl, running=True)
    result = run(cfg, [AGENT], domain="vm1")
    assert result["changed"] is True
    assert (result["running"], result["restart_required"]) == (True, True)
    result = run(cfg, [AGENT], domain="vm1")
    assert result["changed"] is False
    assert (result["running"], result["restart_required"]) == (True, False)
    assert_xl_reads(cfg, [AGENT_SPEC])

    fake_xl(no_xl, running=False)
    result = run(cfg, [QGA], domain="vm1")
    assert result["changed"] is True
    assert (result["running"], result["restart_required"]) == (False, False)
    assert_xl_reads(cfg, [AGENT_SPEC, QGA_SPEC])


def test_xl_failing_otherwise_is_unknown_with_a_warning(cfg: str, no_xl: str) -> None:
    script = os.path.join(no_xl, "xl")
    with open(script, "w") as handle:
        handle.write(
            "#!/bin/sh\necho 'xc: error: Could not obtain handle on privcmd' >&2\nexit 1\n"
        )
    os.chmod(script, 0o755)
    result = run(cfg, [AGENT], domain="vm1")
    assert (result["running"], result["restart_required"]) == ("unknown", None)
    assert any("privcmd" in w for w in result["warnings"])


# -- a config path that is a symbolic link, a directory or not a file ----------------------


def test_a_symlinked_config_is_edited_through_the_link(tmp_path: Any, xl_oracle: Any) -> None:
    real_dir = tmp_path / "configs"
    real_dir.mkdir()
    real = real_dir / "vm1.cfg"
    real.write_text(BASE)
    os.chmod(real, 0o640)
    link = tmp_path / "vm1.cfg"
    link.symlink_to(os.path.join("configs", "vm1.cfg"))
    check = run(str(link), [AGENT], _ansible_check_mode=True, _ansible_diff=True)
    assert check["changed"] is True
    assert check["diff"]["before"] == BASE and AGENT_SPEC in check["diff"]["after"]
    assert read(str(real)) == BASE and os.path.islink(link)
    result = run(str(link), [AGENT], backup=True, _ansible_diff=True)
    assert result["changed"] is True and result["diff"] == check["diff"]
    # The link stays a link, and the file it points at holds the change.
    assert os.path.islink(link) and os.readlink(link) == os.path.join("configs", "vm1.cfg")
    assert_xl_reads(str(real), [AGENT_SPEC])
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o640
    assert os.path.dirname(result["backup_file"]) == str(real_dir)
    assert read(result["backup_file"]) == BASE
    assert run(str(link), [AGENT])["changed"] is False


def _fifo(tmp_path: Any) -> str:
    path = str(tmp_path / "fifo.cfg")
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(
            lambda t: os.symlink(str(t / "gone.cfg"), str(t / "vm1.cfg")),
            "is a symbolic link to {t}/gone.cfg, which does not exist (or is a loop of links); "
            "point the link at the domain's config file, or give path the config file itself",
            id="dangling-link",
        ),
        pytest.param(
            lambda t: os.symlink(str(t), str(t / "vm1.cfg")),
            "is a symbolic link to the directory {t}, not an xl config file; give path the "
            "config file itself, for example {t}/web1.cfg",
            id="link-to-a-directory",
        ),
        pytest.param(
            lambda t: os.symlink(_fifo(t), str(t / "vm1.cfg")),
            "is a symbolic link to {t}/fifo.cfg, which is a FIFO, not an xl config file; "
            "give path a regular file (or a symbolic link to one)",
            id="link-to-a-fifo",
        ),
        pytest.param(
            lambda t: os.mkdir(str(t / "vm1.cfg")),
            "is a directory, not an xl config file; give path the config file itself, for "
            "example {t}/vm1.cfg/web1.cfg",
            id="directory",
        ),
    ],
)
def test_a_path_that_is_no_config_file_is_refused_with_a_sentence(
    tmp_path: Any, make: Any, message: str
) -> None:
    make(tmp_path)
    path = str(tmp_path / "vm1.cfg")
    before = sorted(os.listdir(tmp_path))
    failed = fail(path, [AGENT])
    assert failed["msg"] == f"path {path} " + message.format(t=tmp_path)
    assert "Errno" not in failed["msg"]
    assert sorted(os.listdir(tmp_path)) == before

"""plugins/module_utils/domain_config.py, held to Xen's own parsers.

Disk specs are checked against libxlutil's `xlu_disk_parse` (tests/oracle/xlu_disk.py):
every spec `parse_disk` accepts, xl accepts with the same target and vdev; the specs it
refuses among the basics it checks, xl refuses too. Whole configs `build_config` writes
are read back by libxlutil's config parser.
"""

import itertools
from typing import Any, Dict, List

import pytest
from ansible_collections.xenchannel.provision.plugins.module_utils.domain_config import (
    DomainConfigError,
    build_config,
    check_template,
    disk_spec,
    disk_writable,
    normalise_mac,
    normalise_uuid,
    parse_disk,
    parse_vif,
    vif_spec,
    wanted_settings,
)
from ansible_collections.xenchannel.provision.plugins.module_utils.xl_config import XlConfig

from tests.oracle import xlu_disk

# Accepted by xl: (spec, target, vdev, writable).
GOOD_DISKS = [
    ("/dev/vg/guest-volume,,hda", "/dev/vg/guest-volume", "hda", 1),
    ("/dev/vg/guest-volume,raw,hda,rw", "/dev/vg/guest-volume", "hda", 1),
    (
        "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
        "/dev/vg/guest-volume",
        "hda",
        1,
    ),
    ("raw:/dev/vg/guest-volume,hda,w", "/dev/vg/guest-volume", "hda", 1),
    ("phy:/dev/vg0/vm1,xvda,w", "/dev/vg0/vm1", "xvda", 1),
    ("file:/srv/vm1.img,xvda,r", "/srv/vm1.img", "xvda", 0),
    ("/root/image.iso,,hdc,cdrom", "/root/image.iso", "hdc", 0),
    ("/root/image.iso,raw,hdc,devtype=cdrom", "/root/image.iso", "hdc", 0),
    ("vdev=xvda, target=/srv/a,b=c", "/srv/a,b=c", "xvda", 1),
    ("discard, specification=xen, vdev=xvdb, target=/dev/vg0/b", "/dev/vg0/b", "xvdb", 1),
    ("/x,qcow2,xvda", "/x", "xvda", 1),
]
# Refused by xl, and by parse_disk with a sentence containing the second item.
BAD_DISKS = [
    ("/dev/vg0/vm1,xvda,w", "format 'xvda'"),
    ("bogus=1, vdev=xvda, target=/x", "'bogus'"),
    ("/x,,xvda,rw,extra", "too many positional"),
    ("/x", "no vdev"),
    ("vdev=xvda, access=x, target=/x", "access='x'"),
    ("/x,raw,xvda,w,target=/y", "target twice"),
]


@pytest.mark.parametrize(("spec", "target", "vdev", "rw"), GOOD_DISKS)
def test_disk_specs_xl_accepts(spec: str, target: str, vdev: str, rw: int, xl_oracle: Any) -> None:
    mine = parse_disk(spec)
    xl = xlu_disk.parse_disk(spec)
    assert (xl["target"], xl["vdev"].split(":")[0], xl["readwrite"]) == (target, vdev, rw)
    assert (mine["target"], mine["vdev"].split(":")[0]) == (target, vdev)


@pytest.mark.parametrize(("spec", "sentence"), BAD_DISKS)
def test_disk_specs_xl_refuses(spec: str, sentence: str, xl_oracle: Any) -> None:
    with pytest.raises(xlu_disk.DiskParseError):
        xlu_disk.parse_disk(spec)
    with pytest.raises(DomainConfigError, match=sentence.replace("(", r"\(")):
        parse_disk(spec)


# Pieces of disk specs; every sequence of up to three, joined by commas, is a spec.
CORPUS_PIECES = [
    "/dev/vg0/a",
    "phy:/dev/vg0/a",
    "tap2:tapdisk:aio:/x",
    "raw",
    "qcow2",
    "bogus",
    "xvda",
    "hdc:cdrom",
    "w",
    "ro",
    "",
    "cdrom",
    "discard",
    "vdev=xvdb",
    "access=r",
    "format=vhd",
    "devtype=cdrom",
    "target=/t,x=1",
    "backendtype=phy",
    "x=1",
    " vdev=xvdc",
]


def test_every_disk_spec_parse_disk_accepts_means_the_same_to_xl(xl_oracle: Any) -> None:
    """parse_disk is never looser than xl and never reads a spec differently.

    It is stricter on purpose in a few corners (a parameter given twice, a deprecated
    prefix anywhere but on the target, an empty target or vdev); those it refuses.
    """
    accepted = 0
    for n in (1, 2, 3):
        for combo in itertools.product(CORPUS_PIECES, repeat=n):
            spec = ",".join(combo)
            if not spec.strip():
                continue
            try:
                mine = parse_disk(spec)
            except DomainConfigError:
                continue
            accepted += 1
            xl = xlu_disk.parse_disk(spec)  # raises if xl refuses what parse_disk accepted
            assert (mine.get("target") or "", mine["vdev"]) == (xl["target"] or "", xl["vdev"]), (
                spec
            )
            writable = disk_writable(spec)
            assert writable == bool(xl["readwrite"]), spec
    assert accepted > 500  # the corpus exercises acceptance, not only refusals


def test_disk_dicts_are_written_with_target_last(xl_oracle: Any) -> None:
    spec = disk_spec({"target": "/srv/odd,name=x.img", "vdev": "xvda", "format": "raw"})
    assert spec == "format=raw, vdev=xvda, target=/srv/odd,name=x.img"
    xl = xlu_disk.parse_disk(spec)
    assert (xl["target"], xl["vdev"], xl["readwrite"]) == ("/srv/odd,name=x.img", "xvda", 1)
    cdrom = disk_spec({"vdev": "hdc", "devtype": "cdrom", "format": "empty"})
    assert xlu_disk.parse_disk(cdrom)["is_cdrom"] == 1


@pytest.mark.parametrize(
    ("item", "sentence"),
    [
        ({"vdev": "xvda"}, "has no target"),
        ({"target": "/x"}, "has no vdev"),
        ({"target": "/x", "vdev": "xvda", "access": "rw,x"}, "contains ',' or '='"),
        ({"target": '/x"y', "vdev": "xvda"}, "quote"),
        ({"target": "/x", "vdev": "xvda", "size": 1}, "unknown key(s) size"),
        ("phy:/dev/x,'xvda',w", "quote"),
        (7, "has type int"),
    ],
)
def test_bad_disk_items(item: Any, sentence: str) -> None:
    with pytest.raises(DomainConfigError) as info:
        disk_spec(item, "disks item 1")
    assert sentence in str(info.value)
    assert str(info.value).startswith("disks item 1")


def test_vifs_and_macs() -> None:
    assert vif_spec({"bridge": "xenbr0", "mac": "00:16:3E:0A:0B:0C"}) == (
        "mac=00:16:3e:0a:0b:0c, bridge=xenbr0"
    )
    assert parse_vif(" mac=00:16:3E:0A:0B:0C ,bridge=xenbr0") == {
        "mac": "00:16:3e:0a:0b:0c",
        "bridge": "xenbr0",
    }
    for bad, sentence in [
        ("mac=01:16:3e:00:00:01", "multicast"),
        ("mac=00:16:3e:00:00", "six hex pairs"),
        ("bridge", "without '='"),
        ("colour=red", "'colour'"),
        ("bridge=a, bridge=b", "bridge twice"),
    ]:
        with pytest.raises(DomainConfigError, match=sentence):
            parse_vif(bad)
    with pytest.raises(DomainConfigError, match="contains ',' or '='"):
        vif_spec({"bridge": "xenbr0,mac=x"})
    assert normalise_mac("00:16:3E:AA:BB:CC", "x") == "00:16:3e:aa:bb:cc"


def test_uuid() -> None:
    assert normalise_uuid("4A1F0C3E-7D2B-4C8E-9F61-0B5A2D7E3C19") == (
        "4a1f0c3e-7d2b-4c8e-9f61-0b5a2d7e3c19"
    )
    for bad in ("4a1f0c3e7d2b4c8e9f610b5a2d7e3c19", "4a1f0c3e-7d2b-4c8e-9f61-0b5a2d7e3c1", 5):
        with pytest.raises(DomainConfigError, match="is not a UUID"):
            normalise_uuid(bad)


def test_wanted_settings_reports_every_problem() -> None:
    with pytest.raises(DomainConfigError) as info:
        wanted_settings(
            name="-bad",
            uuid="x",
            memory=0,
            vcpus=2,
            disks=[{"target": "/a", "vdev": "xvda"}, "phy:/b,xvda,w"],
            vifs=["mac=00:16:3e:00:00:01", "mac=00:16:3E:00:00:01"],
            channels=[{"name": "org.xenchannel.provision.0", "connection": "socket"}],
            settings={"vif": [], "Bad": 1},
        )
    text = " | ".join(info.value.problems)
    for sentence in [
        "domain name '-bad' is not valid; use 1 to 64 letters",
        "uuid 'x' is not a UUID",
        "memory 0 is not a positive integer",
        "both use vdev xvda",
        "both have mac 00:16:3e:00:00:01",
        "connection=socket but no path",
        "settings.vif is managed by the vifs option",
        "settings key 'Bad' is not an xl setting name",
    ]:
        assert sentence in text
    with pytest.raises(DomainConfigError, match="maxmem 512 is below memory 1024"):
        wanted_settings(memory=1024, maxmem=512)


TEMPLATE = (
    "# the Debian template\n"
    'name = "debian"\n'
    'uuid = "11111111-2222-3333-4444-555555555555"\n'
    'type = "pvh"\n'
    "memory = 512\n"
    'disk = [ "phy:/dev/vg0/debian,xvda,w", "/srv/iso/tools.iso,,xvdc,cdrom" ]\n'
    'vif = [ "mac=00:16:3e:aa:bb:cc, bridge=xenbr0" ]\n'
    'channel = [ "connection=socket, name=org.xenchannel.provision.0, '
    'path=/run/xenchannel/debian.sock" ]\n'
    'pci = [ "0000:03:00.0" ]\n'
)


def test_template_identity_is_refused_until_overridden() -> None:
    doc = XlConfig.parse(TEMPLATE)
    problems = check_template(doc, {}, "t.cfg")
    assert len(problems) == 4
    assert "fixed MAC" in problems[0] and "give the clone's own vifs" in problems[0]
    assert "writable disk 'phy:/dev/vg0/debian,xvda,w'" in problems[1]  # not the cdrom
    assert "socket channel" in problems[2]
    assert "settings.pci" in problems[3]
    given = {"vifs": [], "disks": [], "channels": [], "settings": {"pci": None}}
    assert check_template(doc, given, "t.cfg") == []


def test_build_config_keeps_equal_items_and_everything_else(xl_means: Any) -> None:
    text = (
        "# hand-written\n"
        "name = 'vm1'   # keep me\n"
        "memory = 0x400\n"
        "disk = [ 'phy:/dev/vg0/vm1,xvda,w' ]\n"
        "vif = [ 'bridge=xenbr0,mac=00:16:3E:00:00:01' ]\n"
        "on_crash = 'restart'\n"
    )
    doc = XlConfig.parse(text)
    wanted = wanted_settings(
        name="vm1",
        memory=1024,
        disks=["phy:/dev/vg0/vm1,xvda,w"],
        vifs=[{"mac": "00:16:3e:00:00:01", "bridge": "xenbr0"}],
    )
    assert build_config(doc, wanted) is False
    assert doc.render() == text
    wanted = wanted_settings(
        name="vm1",
        uuid="4a1f0c3e-7d2b-4c8e-9f61-0b5a2d7e3c19",
        vcpus=2,
        channels=[{"name": "org.qemu.guest_agent.0", "connection": "pty"}],
        settings={"on_crash": None, "extra": ["a", 1]},
    )
    assert build_config(doc, wanted) is True
    expected = text.replace(
        "# keep me\n", '# keep me\nuuid = "4a1f0c3e-7d2b-4c8e-9f61-0b5a2d7e3c19"\n'
    )
    expected = expected.replace("memory = 0x400\n", "memory = 0x400\nvcpus = 2\n")
    expected = expected.replace(
        "mac=00:16:3E:00:00:01' ]\n",
        'mac=00:16:3E:00:00:01\' ]\nchannel = [ "connection=pty, name=org.qemu.guest_agent.0" ]\n',
    )
    expected = expected.replace("on_crash = 'restart'\n", "") + 'extra = [ "a", 1 ]\n'
    assert doc.render() == expected
    xl_means(
        doc.render(),
        {
            "name": "vm1",
            "uuid": "4a1f0c3e-7d2b-4c8e-9f61-0b5a2d7e3c19",
            "memory": 1024,
            "vcpus": 2,
            "disk": ["phy:/dev/vg0/vm1,xvda,w"],
            "vif": ["bridge=xenbr0,mac=00:16:3E:00:00:01"],
            "channel": ["connection=pty, name=org.qemu.guest_agent.0"],
            "extra": ["a", 1],
        },
    )


def test_from_scratch_order(xl_means: Any) -> None:
    doc = XlConfig("")
    wanted: List[Any] = wanted_settings(
        name="vm2",
        memory=512,
        vcpus=1,
        settings={"type": "pvh"},
        disks=[{"target": "/dev/vg0/vm2", "vdev": "xvda"}],
    )
    build_config(doc, wanted, anchored=False)
    assert doc.render() == (
        'name = "vm2"\nmemory = 512\nvcpus = 1\ntype = "pvh"\n'
        'disk = [ "vdev=xvda, target=/dev/vg0/vm2" ]\n'
    )
    expected: Dict[str, Any] = {
        "name": "vm2",
        "memory": 512,
        "vcpus": 1,
        "type": "pvh",
        "disk": ["vdev=xvda, target=/dev/vg0/vm2"],
    }
    xl_means(doc.render(), expected)

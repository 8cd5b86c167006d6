"""DataSourceXenChannel against the real cloud-init of this process (see the outer
test_cloud_init_versions.py), with a real dom0 agent and channel simulator."""

import gzip
import json
import logging
import os
import pickle
import threading
import time

import DataSourceXenChannel as dsmod
import pytest
from cloudinit import sources, version

from testbed.stack import delivered
from xenchannel.protocol import Bundle

FAST = {"connect_timeout": 1.5, "transfer_timeout": 10.0, "wait_timeout": 1.0}


def test_runs_the_expected_cloud_init():
    assert version.version_string().startswith(os.environ["XENCHANNEL_CLOUD_INIT_VERSION"])
    assert os.environ["XENCHANNEL_CLOUD_INIT_VERSION"] in sources.__file__
    # An upstream release runs with the requirements it declares (23.4: jsonschema<=4.20.0),
    # not the venv's.
    deps = os.environ.get("XENCHANNEL_CLOUD_INIT_DEPS")
    if deps:
        import jsonschema  # noqa: PLC0415 - whichever copy this process's path gives

        assert jsonschema.__file__.startswith(deps), jsonschema.__file__


def test_registration():
    assert dsmod.get_datasource_list([sources.DEP_FILESYSTEM]) == [dsmod.DataSourceXenChannel]
    assert dsmod.get_datasource_list([sources.DEP_FILESYSTEM, sources.DEP_NETWORK]) == []
    assert dsmod.DataSourceXenChannel.dsname == "XenChannel"


# ------------------------------------------------------------------ detection


def _no_open(monkeypatch):
    opened = []

    def refuse(*args, **kwargs):
        opened.append(args)
        raise AssertionError("detection must not open any device")

    monkeypatch.setattr(dsmod.GuestClient, "open", refuse)
    return opened


def test_not_on_xen_is_false_fast_and_opens_nothing(guest, monkeypatch):
    opened = _no_open(monkeypatch)
    ds = guest.datasource(wait_timeout=30.0)
    start = time.monotonic()
    assert dsmod.detect(ds._settings) is None
    if hasattr(sources.DataSource, "ds_detect"):
        assert ds.ds_detect() is False
    assert ds.get_data() is False  # 22.4 and 25.x both go through detection
    assert time.monotonic() - start < 0.2
    assert opened == []


def test_link_present_is_detected_without_opening(guest, monkeypatch):
    opened = _no_open(monkeypatch)
    guest.make_xen()
    target = guest.path("hvc1")
    open(target, "w").close()
    link = guest.link_channel(target)
    ds = guest.datasource()
    start = time.monotonic()
    assert dsmod.detect(ds._settings) == link
    assert time.monotonic() - start < 0.2
    if hasattr(sources.DataSource, "ds_detect"):
        assert ds.ds_detect() is True
        assert ds.subplatform == f"xen-channel ({link})"
    assert opened == []


def test_virtio_port_is_detected_off_xen(guest):
    target = guest.path("vport1p1")
    open(target, "w").close()
    link = guest.link_channel(target, kind="virtio-ports")
    assert dsmod.detect(guest.datasource()._settings) == link


def test_other_channel_name_is_not_ours(guest):
    target = guest.path("hvc1")
    open(target, "w").close()
    guest.link_channel(target, name="org.qemu.guest_agent.0")
    assert dsmod.detect(guest.datasource()._settings) is None


def test_on_xen_waits_for_a_late_link(guest):
    guest.make_xen()
    target = guest.path("hvc1")
    open(target, "w").close()
    timer = threading.Timer(0.4, guest.link_channel, (target,))
    timer.start()
    try:
        start = time.monotonic()
        found = dsmod.detect(guest.datasource(wait_timeout=3.0)._settings)
        elapsed = time.monotonic() - start
    finally:
        timer.join()
    assert found == guest.path(f"dev/xen-channel/{dsmod.DEFAULT_CHANNEL}")
    assert 0.3 < elapsed < 2.0


def test_on_xen_wait_is_bounded(guest):
    guest.make_xen()
    start = time.monotonic()
    assert dsmod.detect(guest.datasource(wait_timeout=0.5)._settings) is None
    assert 0.45 < time.monotonic() - start < 1.5


def _channel_console_and_busy_udev(guest, consoles=("console-1",)):
    guest.make_xen()
    for console in consoles:
        os.makedirs(guest.path(f"sys/bus/xen/devices/{console}"))
    os.makedirs(guest.path("run/udev"))
    queue = guest.path("run/udev/queue")
    open(queue, "w").close()
    return queue


def test_on_xen_keeps_waiting_while_udev_is_naming_a_channel_console(guest):
    """On a loaded host the rule's xenstore read can outlast wait_timeout."""
    _channel_console_and_busy_udev(guest)
    target = guest.path("hvc1")
    open(target, "w").close()
    timer = threading.Timer(1.2, guest.link_channel, (target,))
    timer.start()
    try:
        start = time.monotonic()
        found = dsmod.detect(guest.datasource(wait_timeout=0.3, udev_timeout=20.0)._settings)
        elapsed = time.monotonic() - start
    finally:
        timer.join()
    assert found == guest.path(f"dev/xen-channel/{dsmod.DEFAULT_CHANNEL}")
    assert 1.0 < elapsed < 10.0


def test_udev_finishing_without_the_link_ends_the_wait(guest, caplog):
    queue = _channel_console_and_busy_udev(guest, ("console-1", "console-2"))
    timer = threading.Timer(0.8, os.unlink, (queue,))
    timer.start()
    try:
        start = time.monotonic()
        with caplog.at_level(logging.DEBUG):
            found = dsmod.detect(guest.datasource(wait_timeout=0.3, udev_timeout=60.0)._settings)
        elapsed = time.monotonic() - start
    finally:
        timer.join()
    assert found is None
    assert 0.7 < elapsed < 10.0
    assert "console-1, console-2" in caplog.text
    assert "journalctl -t xenchannel-console-setup" in caplog.text


def test_busy_udev_wait_is_bounded_and_says_which_setting(guest, caplog):
    _channel_console_and_busy_udev(guest)
    start = time.monotonic()
    with caplog.at_level(logging.DEBUG):
        found = dsmod.detect(guest.datasource(wait_timeout=0.2, udev_timeout=0.6)._settings)
    assert found is None
    assert 0.7 < time.monotonic() - start < 5.0
    assert "datasource.XenChannel.udev_timeout" in caplog.text


def test_busy_udev_without_channel_consoles_is_not_waited_for(guest):
    """A Xen guest with no secondary console has no channel: udev's work is not ours."""
    queue = _channel_console_and_busy_udev(guest, ())
    assert os.path.exists(queue)
    start = time.monotonic()
    assert dsmod.detect(guest.datasource(wait_timeout=0.3, udev_timeout=60.0)._settings) is None
    assert time.monotonic() - start < 3.0


def test_proc_xen_counts_as_xen(guest):
    os.makedirs(guest.path("proc/xen"))
    assert dsmod.on_xen(guest.root)
    assert not dsmod.on_xen(guest.path("proc"))


# ------------------------------------------------------------------ settings


def test_defaults_bound_a_silent_dom0_to_seconds():
    settings = dsmod.read_settings({})
    assert settings["wait_timeout"] + settings["connect_timeout"] <= 10
    assert settings["transfer_timeout"] <= 30
    assert settings["channel_name"] == "org.xenchannel.provision.0"
    config = dsmod.client_config(settings)
    assert config.connect_timeout == 5.0 and config.transfer_timeout == 30.0


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"wait_timeout": "2"}, "datasource.XenChannel.wait_timeout must be a number of seconds"),
        ({"connect_timeout": 0}, "connect_timeout must be between 0.1 and 120 seconds, not 0"),
        ({"transfer_timeout": 1e6}, "transfer_timeout must be between 0.1 and 600 seconds"),
        ({"retries": 2.5}, "datasource.XenChannel.retries must be an integer"),
        ({"retries": True}, "retries must be an integer"),
        ({"retries": 11}, "retries must be between 0 and 10, not 11"),
        (
            {"channel_name": "a/b"},
            "datasource.XenChannel.channel_name 'a/b' is not a versioned reverse domain name; "
            "use two or more lower-case labels and a numeric version, e.g. "
            "org.xenchannel.provision.0",
        ),
        ({"channel_name": ""}, "channel_name '' is not a versioned reverse domain name"),
        ({"channel_name": "agent"}, "channel_name 'agent' is not a versioned reverse domain"),
        (
            {"channel_name": "org." + "a" * 123 + ".0"},
            "is 129 characters long, over the 128 a channel name may have",
        ),
        ({"channel_name": 7}, "channel_name 7 is not a string"),
        ({"root": "relative"}, "root must be an absolute path"),
        ({"sensitive_keys": "pw"}, "sensitive_keys must be a list of meta-data key names"),
        ({"check_platform_uuid": "yes"}, "check_platform_uuid must be true or false"),
    ],
)
def test_settings_validation_messages(cfg, message):
    with pytest.raises(dsmod.SettingsError, match=message.replace(".", r"\.")):
        dsmod.read_settings(cfg)


def test_invalid_settings_disable_the_datasource_with_a_warning(guest, caplog):
    ds = guest.datasource(wait_timeout=-1)
    with caplog.at_level(logging.WARNING):
        assert ds.get_data() is False
    assert "wait_timeout must be between 0 and 60 seconds, not -1" in caplog.text


def test_unknown_settings_are_named(caplog):
    with caplog.at_level(logging.WARNING):
        dsmod.read_settings({"wait_timout": 1})
    assert "ignoring unknown settings: wait_timout" in caplog.text


def test_network_config_unwrapping():
    v1 = {"version": 1, "config": [{"type": "physical", "name": "eth0"}]}
    assert dsmod.unwrap_network_config({"network": v1}) == v1
    assert dsmod.unwrap_network_config(v1) == v1
    assert dsmod.unwrap_network_config({"version": 3}) is None
    assert dsmod.unwrap_network_config(None) is None


# ------------------------------------------------------------------ over a live stack


def _bundle(name, user_data, network_config, vendor_data=None, **extra_md):
    md = {
        "instance-id": f"iid-{name}",
        "local-hostname": name,
        "public-keys": [f"ssh-ed25519 AAAAC3Nza{name} root@{name}"],
    }
    md.update(extra_md)
    return Bundle(md, user_data, vendor_data, network_config)


def test_get_data_over_a_live_stack_v2(guest, stack):
    user_data = gzip.compress(b"#cloud-config\nhostname: vm1\n")
    vendor_data = b'Content-Type: multipart/mixed; boundary="b"\n\n--b--\n'
    network = {
        "version": 2,
        "ethernets": {
            "eth0": {"dhcp4": True},
            "eth1": {"addresses": ["192.0.2.10/24", "2001:db8::10/64"]},
        },
    }
    bundle = _bundle(
        "vm1",
        user_data,
        {"network": network},
        vendor_data,
        password="hunter2",
        **{"api-token": "t0k"},
    )
    domain = stack.add_domain("vm1", bundle)
    stack.start_agent()
    guest.make_xen()
    link = guest.link_channel(domain.link)
    ds = guest.datasource(sensitive_keys=["site-secret"], **FAST)
    start = time.monotonic()
    assert ds.get_data() is True
    assert time.monotonic() - start < 5
    assert ds.metadata["instance-id"] == "iid-vm1"
    assert ds.metadata["local-hostname"] == "vm1"
    assert ds.get_instance_id() == "iid-vm1"
    hostname = ds.get_hostname()  # 22.4: a str; 23.x+: a DataSourceHostname
    assert getattr(hostname, "hostname", hostname) == "vm1"
    assert ds.get_public_ssh_keys() == ["ssh-ed25519 AAAAC3Nzavm1 root@vm1"]
    assert ds.userdata_raw == user_data  # gzip bytes untouched
    assert ds.vendordata_raw == vendor_data
    assert ds.network_config == network
    assert ds.platform_type == "xen"
    assert ds.subplatform == f"xen-channel ({link})"
    assert "ds/meta_data/password" in ds.sensitive_metadata_keys
    assert "ds/meta_data/site-secret" in ds.sensitive_metadata_keys
    # cloud-init's user-data processor decompresses the gzip bytes
    assert "hostname: vm1" in str(ds.get_userdata())
    # get_data() wrote instance-data: secrets only in the root-only file
    public = _read(guest.paths.get_runpath("instance_data"))
    sensitive = _read(guest.paths.get_runpath("instance_data_sensitive"))
    assert "hunter2" not in public and "t0k" not in public
    assert "hunter2" in sensitive and "t0k" in sensitive
    assert json.loads(public)["v1"]["platform"] == "xen"
    state = stack.wait_state("vm1", delivered)
    assert state["delivered"]["count"] == 1
    record = dsmod.read_record(dsmod.record_path(guest.paths.cloud_dir))
    assert record["instance-id"] == "iid-vm1"
    assert record["platform-uuid"] == "11111111-2222-3333-4444-555555555555"
    # What xenchannel-report-status waits for before it reports.
    assert record["static-addresses"] == ["192.0.2.10", "2001:db8::10"]


def test_get_data_network_v1_and_no_vendor_data(guest, stack):
    v1 = {"version": 1, "config": [{"type": "physical", "name": "eth0", "subnets": []}]}
    domain = stack.add_domain("vm2", _bundle("vm2", b"#!/bin/sh\ntrue\n", v1))
    stack.start_agent()
    guest.link_channel(domain.link, kind="virtio-ports")
    ds = guest.datasource(**FAST)
    assert ds.get_data() is True
    assert ds.network_config == v1
    assert ds.vendordata_raw is None
    assert ds.platform_type == "kvm"
    assert ds.subplatform.startswith("virtio-port (")


def test_silent_dom0_is_bounded_and_logged(guest, stack, caplog):
    domain = stack.add_domain("vm3")  # the channel exists, no agent ever answers
    guest.make_xen()
    guest.link_channel(domain.link)
    ds = guest.datasource(connect_timeout=1.0, wait_timeout=0.5)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert ds.get_data() is False
    elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 3.0
    assert "XenChannel: no metadata from" in caplog.text
    assert "no answer from the dom0 agent" in caplog.text


# ------------------------------------------------------------------ check_instance_id


def _read(path):
    with open(path) as handle:
        return handle.read()


def _cached_ds(guest, iid="iid-vm1"):
    ds = guest.datasource()
    ds.metadata = {"instance-id": iid}
    return ds


def test_check_instance_id_from_the_record_only(guest, monkeypatch):
    opened = _no_open(monkeypatch)
    guest.make_xen()
    record = dsmod.record_path(guest.paths.cloud_dir)
    ds = _cached_ds(guest)
    assert not ds.check_instance_id({})  # nothing recorded: fetch again
    dsmod.write_record(record, "iid-vm1", "/dev/x", "11111111-2222-3333-4444-555555555555")
    assert oct(os.stat(record).st_mode & 0o777) == "0o600"
    assert ds.check_instance_id({}) is True
    assert _cached_ds(guest, "iid-other").check_instance_id({}) is False
    # the disk was cloned to another VM: another UUID
    guest.make_xen(uuid="99999999-2222-3333-4444-555555555555")
    assert ds.check_instance_id({}) is False
    assert guest.datasource(check_platform_uuid=False).check_instance_id({}) is False  # no md
    unchecked = guest.datasource(check_platform_uuid=False)
    unchecked.metadata = {"instance-id": "iid-vm1"}
    assert unchecked.check_instance_id({}) is True
    assert opened == []


def test_check_instance_id_survives_pickling(guest):
    ds = _cached_ds(guest)
    dsmod.write_record(dsmod.record_path(guest.paths.cloud_dir), "iid-vm1", "/dev/x", None)
    again = pickle.loads(pickle.dumps(ds))
    again._unpickle(1)
    assert again.check_instance_id({}) is True

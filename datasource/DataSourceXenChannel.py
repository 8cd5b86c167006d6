"""cloud-init datasource XenChannel: a Xen guest's identity over a PV channel.

dom0's xenchannel agent serves each domain a bundle (meta-data, user-data,
vendor-data, network-config) on a named Xen PV channel, which udev links as
``/dev/xen-channel/<name>``.  The same named channel carried as a virtio-serial
port (``/dev/virtio-ports/<name>``, libvirt/QEMU) works too, so one template
serves both.

Runs in cloud-init's local stage (``DEP_FILESYSTEM``), where nothing bounds a
datasource's time: every wait here is short and configurable (``datasource:
XenChannel:`` in cloud.cfg, see ``read_settings``).  Detection only looks at
paths and never writes to any device.  The fetched bundle is verified and
acknowledged by ``xenchannel.guest``; reboots proceed from cloud-init's cache
without dom0 (``check_instance_id``).

Works with cloud-init 22.4 (no ``ds_detect``) and 25.x; the module itself runs on
Python 3.6+.  Install as ``cloudinit/sources/DataSourceXenChannel.py`` or via
``datasource_pkg_list``, with the ``xenchannel`` package importable beside it.
"""

import json
import logging
import os
import time

from cloudinit import sources

from xenchannel.channel_name import DEFAULT_CHANNEL_NAME, channel_name_problem
from xenchannel.guest import ClientConfig, GuestClient, wait_for_path
from xenchannel.protocol import ChannelError, static_addresses

LOG = logging.getLogger(__name__)

DS_NAME = "XenChannel"
DEFAULT_CHANNEL = DEFAULT_CHANNEL_NAME
XEN_CHANNEL_DIR = "dev/xen-channel"
VIRTIO_PORTS_DIR = "dev/virtio-ports"
# The xenbus devices of this domain's secondary consoles (its channels): the kernel makes
# them before udev runs the rule that names them, so they tell "a channel is coming".
XEN_DEVICES_DIR = "sys/bus/xen/devices"
CHANNEL_CONSOLES = tuple(f"console-{n}" for n in range(1, 10))
# systemd-udevd keeps this file while events are queued or running (what `udevadm
# settle` waits on): while it exists, the rule may still be making the link.
UDEV_QUEUE = "run/udev/queue"
# What the datasource records after a fetch, for check_instance_id (under cloud_dir).
RECORD_NAME = "xenchannel.json"

# name: (default, minimum, maximum); floats are seconds.  The defaults keep a channel
# whose dom0 never answers from holding the boot more than wait + connect (7 s).
# udev_timeout is spent only while udev is still busy and the domain has channel
# consoles: on a loaded host, naming the channel (a xenstore read) can take longer.
NUMBER_SETTINGS = {
    "wait_timeout": (2.0, 0.0, 60.0),
    "udev_timeout": (60.0, 0.0, 300.0),
    "lock_timeout": (2.0, 0.0, 60.0),
    "connect_timeout": (5.0, 0.1, 120.0),
    "transfer_timeout": (30.0, 0.1, 600.0),
    "idle_timeout": (5.0, 0.1, 600.0),
    "ack_timeout": (2.0, 0.1, 60.0),
}
INT_SETTINGS = {"retries": (2, 0, 10)}
KNOWN_SETTINGS = (
    set(NUMBER_SETTINGS)
    | set(INT_SETTINGS)
    | {"channel_name", "root", "sensitive_keys", "check_platform_uuid"}
)

# meta-data keys never written to the world-readable instance-data.json.
DEFAULT_SENSITIVE_KEYS = ("password", "passwd", "api-token", "token", "secrets", "private-keys")


class SettingsError(ValueError):
    """A ``datasource: XenChannel:`` setting is invalid; the message says which and why."""


def _setting_name(key):
    return f"datasource.{DS_NAME}.{key}"


def read_settings(ds_cfg):
    """Validate ``datasource: XenChannel:`` and return complete settings.

    Raises SettingsError naming the setting, what it must be and what it was.
    """
    if ds_cfg is None:
        ds_cfg = {}
    if not isinstance(ds_cfg, dict):
        raise SettingsError(
            "{} must be a mapping, not {}".format("datasource." + DS_NAME, type(ds_cfg).__name__)
        )
    settings = {}
    for key, (default, low, high) in NUMBER_SETTINGS.items():
        value = ds_cfg.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{_setting_name(key)} must be a number of seconds, not {value!r}")
        if not low <= value <= high:
            raise SettingsError(
                f"{_setting_name(key)} must be between {low:g} and {high:g} seconds, not {value:g}"
            )
        settings[key] = float(value)
    for key, (default, low, high) in INT_SETTINGS.items():
        value = ds_cfg.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{_setting_name(key)} must be an integer, not {value!r}")
        if not low <= value <= high:
            raise SettingsError(
                f"{_setting_name(key)} must be between {low} and {high}, not {value}"
            )
        settings[key] = value
    name = ds_cfg.get("channel_name", DEFAULT_CHANNEL)
    problem = channel_name_problem(name)
    if problem is not None:
        raise SettingsError("{} {!r} {}".format(_setting_name("channel_name"), name, problem))
    settings["channel_name"] = name
    root = ds_cfg.get("root", "/")
    if not isinstance(root, str) or not root.startswith("/"):
        raise SettingsError(
            "{} must be an absolute path, not {!r}".format(_setting_name("root"), root)
        )
    settings["root"] = root
    extra = ds_cfg.get("sensitive_keys", [])
    if not isinstance(extra, list) or not all(isinstance(k, str) and k for k in extra):
        raise SettingsError(
            "{} must be a list of meta-data key names, not {!r}".format(
                _setting_name("sensitive_keys"), extra
            )
        )
    settings["sensitive_keys"] = list(DEFAULT_SENSITIVE_KEYS) + [
        k for k in extra if k not in DEFAULT_SENSITIVE_KEYS
    ]
    check_uuid = ds_cfg.get("check_platform_uuid", True)
    if not isinstance(check_uuid, bool):
        raise SettingsError(
            "{} must be true or false, not {!r}".format(
                _setting_name("check_platform_uuid"), check_uuid
            )
        )
    settings["check_platform_uuid"] = check_uuid
    unknown = sorted(set(ds_cfg) - KNOWN_SETTINGS)
    if unknown:
        LOG.warning("XenChannel: ignoring unknown settings: %s", ", ".join(map(str, unknown)))
    return settings


def client_config(settings):
    """The guest client's bounds for a boot: short, all from the settings."""
    return ClientConfig(
        # detect() already waited for the device: opening needs no second wait.
        wait_timeout=0.5,
        lock_timeout=settings["lock_timeout"],
        connect_timeout=settings["connect_timeout"],
        hello_interval=0.2,
        hello_max_interval=1.0,
        idle_timeout=min(settings["idle_timeout"], settings["transfer_timeout"]),
        transfer_timeout=settings["transfer_timeout"],
        ack_timeout=settings["ack_timeout"],
        retries=settings["retries"],
    )


def _under(root, relative):
    return os.path.join(root, relative.lstrip("/"))


def channel_paths(settings):
    """(Xen channel link, virtio-serial port) for the configured name, under root."""
    root, name = settings["root"], settings["channel_name"]
    return (
        _under(root, XEN_CHANNEL_DIR + "/" + name),
        _under(root, VIRTIO_PORTS_DIR + "/" + name),
    )


def _read_text(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def on_xen(root="/"):
    """True on a Xen guest: /proc/xen exists or /sys/hypervisor/type says xen."""
    if os.path.isdir(_under(root, "proc/xen")):
        return True
    return _read_text(_under(root, "sys/hypervisor/type")) == "xen"


def platform_uuid(root="/"):
    """This VM's UUID (Xen's domain UUID, else DMI's), or None.  A clone has a new one."""
    for relative in ("sys/hypervisor/uuid", "sys/class/dmi/id/product_uuid"):
        value = _read_text(_under(root, relative))
        if value and value != "00000000-0000-0000-0000-000000000000":
            return value.lower()
    return None


def channel_consoles(root="/"):
    """This domain's secondary Xen consoles (``console-1`` .. ``console-9``) in sysfs."""
    return [c for c in CHANNEL_CONSOLES if os.path.exists(_under(root, XEN_DEVICES_DIR + "/" + c))]


def udev_busy(root="/"):
    """True while systemd-udevd has events queued or running."""
    return os.path.exists(_under(root, UDEV_QUEUE))


def detect(settings):
    """The channel device path, or None.  Looks at paths only; writes nothing.

    A present device (Xen link or virtio port) is found at once.  Not on Xen and no
    device: None at once.  On Xen: wait up to ``wait_timeout`` for udev's link, then,
    while the domain has channel consoles and udev is still busy, up to
    ``udev_timeout`` more.
    """
    xen_path, virtio_path = channel_paths(settings)
    for path in (xen_path, virtio_path):
        if os.path.exists(path):
            return path
    if not on_xen(settings["root"]):
        LOG.debug("XenChannel: not on Xen and no %s or %s", xen_path, virtio_path)
        return None
    LOG.debug("XenChannel: on Xen, waiting up to %gs for %s", settings["wait_timeout"], xen_path)
    try:
        wait_for_path(xen_path, settings["wait_timeout"])
        return xen_path
    except ChannelError as exc:
        first_error = exc
    root = settings["root"]
    consoles = channel_consoles(root)
    if not consoles:
        LOG.debug("XenChannel: %s (this domain has no channel consoles)", first_error)
        return None
    if _wait_while_udev_busy(xen_path, settings["udev_timeout"], root, consoles):
        return xen_path
    LOG.debug(
        "XenChannel: %s; udev has handled this domain's channel consoles (%s) without "
        "making it: the channel has another name, or naming failed (journalctl -t "
        "xenchannel-console-setup says why)",
        first_error,
        ", ".join(consoles),
    )
    return None


def _wait_while_udev_busy(path, timeout, root, consoles):
    """Whether ``path`` appears while udev is still busy, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    announced = False
    while udev_busy(root):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            LOG.warning(
                "XenChannel: udev was still busy after %gs more and %s is not there; "
                "raise datasource.XenChannel.udev_timeout if this host names channels slowly",
                timeout,
                path,
            )
            return False
        if not announced:
            LOG.debug(
                "XenChannel: udev is still handling devices and this domain has channel "
                "consoles (%s): waiting up to %gs more for %s",
                ", ".join(consoles),
                timeout,
                path,
            )
            announced = True
        try:
            # In short steps: udev finishing (the queue file going away) ends the wait.
            wait_for_path(path, min(remaining, 0.5))
            return True
        except ChannelError:
            continue
    return os.path.exists(path)


def unwrap_network_config(config):
    """A bundle's network-config as cloud-init takes it: v1 or v2, without ``network:``."""
    if not isinstance(config, dict):
        return None
    inner = config.get("network")
    if isinstance(inner, dict) and "version" not in config:
        config = inner
    if config.get("version") not in (1, 2):
        LOG.warning(
            "XenChannel: ignoring network-config of version %r (1 or 2 expected)",
            config.get("version"),
        )
        return None
    return config


def map_bundle(bundle):
    """(metadata, userdata_raw, vendordata_raw, network_config) from a Bundle.

    User-data and vendor-data are passed through as the exact bytes dom0 sent (gzip
    and MIME multipart included); cloud-init's user-data processor decodes them.
    """
    return (
        dict(bundle.meta_data),
        bundle.user_data,
        bundle.vendor_data,
        unwrap_network_config(bundle.network_config),
    )


def sensitive_paths(keys):
    """instance-data key paths for meta-data key names, hyphen and underscore forms."""
    paths = []
    for key in keys:
        for form in (key, key.replace("-", "_")):
            for path in ("ds/meta_data/" + form, "ds/meta-data/" + form):
                if path not in paths:
                    paths.append(path)
    return tuple(paths)


def record_path(cloud_dir):
    return os.path.join(cloud_dir, "data", RECORD_NAME)


def write_record(path, instance_id, channel, uuid, addresses=()):
    """Record what dom0 gave (root-only) so a reboot can be checked without dom0, and
    the network-config's static ``addresses`` xenchannel-report-status waits for."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    record = {"instance-id": instance_id, "channel": channel, "platform-uuid": uuid}
    record["static-addresses"] = list(addresses)
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle)
    os.rename(tmp, path)


def read_record(path):
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def instance_id_still_valid(current, record, uuid_now, check_uuid=True):
    """check_instance_id's decision: True, False, or None (unknown: fetch again)."""
    if not current or not record or not record.get("instance-id"):
        return None
    if record["instance-id"] != current:
        return False
    recorded_uuid = record.get("platform-uuid")
    # A disk cloned to another VM after it booted has another VM UUID: ask its dom0.
    return not (check_uuid and recorded_uuid and uuid_now and recorded_uuid != uuid_now)


class DataSourceXenChannel(sources.DataSource):
    dsname = DS_NAME

    def __init__(self, sys_cfg, distro, paths, ud_proc=None):
        super().__init__(sys_cfg, distro, paths, ud_proc)
        self._channel_path = None
        self._network_config = None
        self._settings_error = None
        try:
            self._settings = read_settings(self.ds_cfg)
        except SettingsError as exc:
            self._settings_error = str(exc)
            self._settings = read_settings({})
        self.sensitive_metadata_keys = tuple(self.sensitive_metadata_keys) + sensitive_paths(
            self._settings["sensitive_keys"]
        )

    def _unpickle(self, ci_pkl_version):
        super()._unpickle(ci_pkl_version)
        for key, value in (
            ("_channel_path", None),
            ("_network_config", None),
            ("_settings_error", None),
            ("_settings", None),
        ):
            if not hasattr(self, key):
                setattr(self, key, value)
        if self._settings is None:
            self._settings = read_settings({})

    def _settings_ok(self):
        if self._settings_error:
            LOG.warning("XenChannel: not used: %s", self._settings_error)
            return False
        return True

    def ds_detect(self):
        """cloud-init >= 23.2: is this a XenChannel guest?  Fast; writes nothing."""
        if not self._settings_ok():
            return False
        self._channel_path = detect(self._settings)
        return self._channel_path is not None

    def _get_data(self):
        # cloud-init 22.4 calls this without ds_detect(), and 23.2+ skips ds_detect()
        # when XenChannel is the only datasource listed: detect here if not yet done.
        if not self._settings_ok():
            return False
        path = self._channel_path or detect(self._settings)
        if path is None:
            return False
        self._channel_path = path
        start = time.monotonic()
        try:
            with GuestClient.open(path, client_config(self._settings)) as client:
                bundle = client.fetch_bundle()
        except (ChannelError, OSError) as exc:
            LOG.warning(
                "XenChannel: no metadata from %s after %.1fs: %s",
                path,
                time.monotonic() - start,
                exc,
            )
            return False
        self.metadata, self.userdata_raw, self.vendordata_raw, self._network_config = map_bundle(
            bundle
        )
        LOG.debug(
            "XenChannel: got instance-id %s from %s in %.1fs",
            bundle.instance_id,
            path,
            time.monotonic() - start,
        )
        try:
            write_record(
                record_path(self.paths.cloud_dir),
                bundle.instance_id,
                path,
                platform_uuid(self._settings["root"]),
                static_addresses(bundle.network_config),
            )
        except OSError as exc:
            LOG.warning("XenChannel: could not record the instance-id: %s", exc)
        return True

    @property
    def network_config(self):
        return self._network_config

    @property
    def platform_type(self):
        if self._channel_path and self._channel_path.startswith(
            _under(self._settings["root"], VIRTIO_PORTS_DIR)
        ):
            return "kvm"
        return "xen"

    def _get_subplatform(self):
        path = self._channel_path or channel_paths(self._settings)[0]
        if path.startswith(_under(self._settings["root"], VIRTIO_PORTS_DIR)):
            return f"virtio-port ({path})"
        return f"xen-channel ({path})"

    def check_instance_id(self, sys_cfg):
        """On reboot: True if the cached instance-id is the one dom0 gave this VM.

        Never touches the channel (dom0's agent may be gone): compares the cached
        instance-id with what the last fetch recorded, and this VM's UUID with the
        recorded one, so a disk cloned to another VM fetches again.
        """
        return instance_id_still_valid(
            self.get_instance_id(),
            read_record(record_path(self.paths.cloud_dir)),
            platform_uuid(self._settings["root"]),
            self._settings["check_platform_uuid"],
        )


# Used to match classes to dependencies.
datasources = [
    (DataSourceXenChannel, (sources.DEP_FILESYSTEM,)),
]


# Return a list of data sources that match this set of dependencies.
def get_datasource_list(depends):
    return sources.list_from_depends(depends, datasources)


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        description="Fetch this guest's bundle over the XenChannel and print its meta-data."
    )
    parser.add_argument("--channel-name", default=DEFAULT_CHANNEL)
    parser.add_argument("--root", default="/")
    parser.add_argument("--wait-timeout", type=float, default=2.0)
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG)
    try:
        cli_settings = read_settings(
            {
                "channel_name": args.channel_name,
                "root": args.root,
                "wait_timeout": args.wait_timeout,
                "connect_timeout": args.connect_timeout,
            }
        )
    except SettingsError as error:
        sys.exit(str(error))
    device = detect(cli_settings)
    if device is None:
        sys.exit("no XenChannel device found")
    with GuestClient.open(device, client_config(cli_settings)) as cli_client:
        result = cli_client.fetch_bundle()
    md, ud, vd, net = map_bundle(result)
    print(
        json.dumps(
            {
                "meta-data": md,
                "user-data-bytes": None if ud is None else len(ud),
                "vendor-data-bytes": None if vd is None else len(vd),
                "network-config": net,
            },
            indent=1,
            sort_keys=True,
        )
    )

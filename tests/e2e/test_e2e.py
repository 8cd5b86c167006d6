"""The real-Xen end-to-end tier (issue 7).

One Xen boot (tests/e2e/boot.py XEN_JOB): Xen 4.20 and a trixie dom0 under QEMU 10
software emulation. The dom0 image was provisioned by the dom0_agent and domain roles,
the guest template by the template playbook (guest, cloud_init_datasource,
template_prep), both through a chroot connection at build time (tests/e2e/build.py).
dom0 starts the agent and, one guest at a time: vm1's first boot; vm2, a second clone of
the same template, with the raw channel benchmark on its second channel; vm1's second
boot with the agent stopped; the NoCloud baseline (the template with a cidata ISO and
no channel). After each guest's shutdown dom0 copies the guest probe's record of that
boot off its disk (job-lib.sh snapshot), so the assertions read each boot's own files.

One QEMU boot (boot.py boot_virtio): the same template directly under QEMU with the
channel as a virtio-serial port, the dom0 agent on this host serving its socket.

Collected by ``make e2e`` (part of ``make test``), by path, or with XENCHANNEL_E2E=1
(conftest.py). Fails, never skips, when the machine cannot build or boot, with the reason.
The terminal summary's "xenchannel e2e" section has what was booted, each phase's time
and the benchmark's figures.
"""

import json
import os
import re
from typing import Dict, Optional

import pytest

from tests.e2e import boot, build

# A cold run builds four Debian roots; a warm one still boots five guests under two
# levels of emulation.
pytestmark = pytest.mark.timeout(5400)

CHANNEL = "org.xenchannel.provision.0"
with open(os.path.join(build.FILES, "dom0-vars.json")) as _f:
    VMS = {vm["name"]: vm for vm in json.load(_f)["xenchannel_vms"]}
BENCH_JSON = os.path.join(build.CACHE, "bench.json")


def xl_uuid(vm: str) -> str:
    """The UUID the domain role gave the VM (its instance-id), from the provisioned dom0."""
    with open(os.path.join(build.output("dom0prov"), "root", "etc", "xen", f"{vm}.cfg")) as f:
        (uuid,) = re.findall(r'^uuid = "([0-9a-f-]+)"', f.read(), re.M)
    return uuid


def _summary(config, lines):
    config.xenchannel_e2e_summary = [*getattr(config, "xenchannel_e2e_summary", []), *lines]


def booted(request, run, header: str):
    """Run one boot; its phases go to the terminal summary (a fixture's output is
    captured). A machine that cannot build or boot fails the tests with the reason."""
    try:
        res = run()
    except build.BuildError as exc:
        pytest.fail(f"the e2e tier cannot run on this machine: {exc}", pytrace=False)
    _summary(
        request.config,
        [
            f"{header} ({res.wall:.0f} s wall, timed out: {res.timed_out}); phases (host s, "
            "+step, dom0 uptime):",
            *("  " + line for line in res.phases().splitlines()),
            f"console log {res.run_dir}/console.log, results {res.result_dir}",
        ],
    )
    return res


@pytest.fixture(scope="module")
def xen(request):
    return booted(
        request,
        lambda: boot.boot("pytest-xen", echo=False),
        "Xen 4.20 + trixie dom0 under QEMU TCG; vm1, vm2, vm1 again (agent stopped) and "
        "the NoCloud baseline, one at a time",
    )


@pytest.fixture(scope="module")
def virtio(request):
    return booted(
        request,
        lambda: boot.boot_virtio("pytest-virtio", echo=False),
        "The same template under QEMU alone, the channel a virtio-serial port, the dom0 "
        "agent on this host",
    )


# --------------------------------------------------------------------------- reading


def result_file(res, name: str) -> str:
    path = os.path.join(res.result_dir, name)
    assert os.path.exists(path), f"dom0 did not write {name} (see {res.run_dir}/console.log)"
    with open(path, errors="replace") as f:
        return f.read()


def probe(res, vm: str, boot_n: int, name: str) -> Optional[str]:
    """A file the guest's probe kept at the end of that boot (None if it did not)."""
    path = os.path.join(res.result_dir, f"{vm}-boot{boot_n}", "xenchannel-e2e", name)
    if not os.path.exists(path):
        return None
    with open(path, errors="replace") as f:
        return f.read()


def not_run(res, vm: str, boot_n: int) -> None:
    """Fail at once, with dom0's reason, a test of a VM boot that did not happen or died."""
    why = res.failure(vm, boot_n)
    if why is not None:
        pytest.fail(
            f"not run: {vm}'s boot {boot_n} did not go on ({why}; {res.run_dir}/console.log)",
            pytrace=False,
        )


def need(res, vm: str, boot_n: int, name: str) -> str:
    text = probe(res, vm, boot_n, name)
    if text is None:
        not_run(res, vm, boot_n)
    assert text is not None, (
        f"no {name} from {vm}'s boot {boot_n}: the guest probe did not run or dom0 could not "
        f"copy it ({res.result_dir}/{vm}-boot{boot_n}.debugfs.log, {res.run_dir}/console.log)"
    )
    return text


def agent_record(res, tag: str, vm: str) -> Dict:
    records = json.loads(result_file(res, f"agent-status-{tag}.json"))
    (record,) = [r for r in records if r.get("domain") == vm]
    return record


def last_boot_log(log: str) -> str:
    """The part of cloud-init.log written by the last boot (from its last init-local)."""
    starts = [m.start() for m in re.finditer(r"running 'init-local'", log)]
    return log[starts[-1] :] if starts else ""


def key_of(vm: str) -> str:
    return VMS[vm]["user_data"].split("- ", 1)[1].strip()


def assert_cloud_init_clean(res, vm: str, boot_n: int, datasource: str) -> None:
    v1 = json.loads(need(res, vm, boot_n, "status.json"))["v1"]
    assert (v1.get("datasource") or "").startswith(datasource), v1
    for stage in ("init-local", "init", "modules-config", "modules-final"):
        assert v1[stage]["errors"] == [], (vm, boot_n, stage, v1[stage])
    result = json.loads(need(res, vm, boot_n, "result.json"))["v1"]
    assert result["errors"] == [], result


# --------------------------------------------------------------------------- Xen


def test_xen_and_dom0_boot(xen):
    assert not xen.timed_out, f"QEMU was killed at the deadline: {xen.run_dir}"
    for name in ("dom0-init", "dom0-xen-ready", "job-done", "dom0-done"):
        assert xen.mark(name), f"no MARK {name} on the console:\n{xen.phases()}"
    assert result_file(xen, "rc").strip() == "0", result_file(xen, "run.log")


def test_a_failed_create_is_reported_and_its_steps_skipped(xen):
    """The harness's own guard: a VM that xl cannot create fails with xl's reason, and the
    steps that need it say so at once instead of waiting out their bounds."""
    why = xen.failure("broken", 1)
    assert why is not None and why.startswith("xl-create-failed: xl create failed"), (
        why,
        xen.phases(),
    )
    failed = xen.mark("xl-create-failed", "broken", 1)
    skipped = xen.mark("agent-status-applied-skipped", "broken", 1)
    assert failed and skipped, xen.phases()
    # Skipped, not waited out: no step about the VM ran into its bound.
    assert not [m for m in xen.marks if m.name.endswith("-timeout") and "vm=broken " in m.detail]
    assert xen.mark("xl-shutdown-skipped", "broken", 1), xen.phases()


@pytest.mark.parametrize(("vm", "boot_n"), [("vm1", 1), ("vm2", 1), ("vm1", 2), ("nocloud", 1)])
def test_xl_creates_and_shuts_down_each_guest(xen, vm, boot_n):
    not_run(xen, vm, boot_n)
    assert xen.mark("xl-create-done", vm, boot_n), xen.phases()
    for name in ("guest-kernel", "guest-systemd"):
        assert xen.mark(name, vm, boot_n), f"no {name} for {vm} boot {boot_n}:\n{xen.phases()}"
    # multi-user.target is reached: the console says so, or cloud-init's final stage ran,
    # which its unit orders After=multi-user.target. Both, because the one console line
    # can be torn by kernel messages written to the same console at the same moment.
    reached = xen.mark("guest-multi-user", vm, boot_n) or xen.mark(
        "guest-cloud-init-final", vm, boot_n
    )
    assert reached, f"{vm} boot {boot_n} never reached multi-user.target:\n{xen.phases()}"
    assert xen.mark("xl-shutdown-done", vm, boot_n), f"{vm} did not shut down cleanly"


def test_the_channel_is_a_named_xen_console(xen):
    backend = result_file(xen, "xenstore-backend-vm1-boot1.txt")
    assert f'name = "{CHANNEL}"' in backend, backend
    assert 'path = "/run/xenchannel/vm1.sock"' in backend, backend
    devices = need(xen, "vm1", 1, "devices.txt")
    assert f"{CHANNEL} -> ../hvc1" in devices, devices


def test_cloud_init_local_stage_used_xenchannel(xen):
    assert_cloud_init_clean(xen, "vm1", 1, "DataSourceXenChannel")
    log = last_boot_log(need(xen, "vm1", 1, "cloud-init.log"))
    assert "XenChannel: got instance-id" in log, log[-3000:]


def test_identity_from_the_bundle_is_applied(xen):
    assert need(xen, "vm1", 1, "etc-hostname").strip() == "e2e-vm1"
    keys = need(xen, "vm1", 1, "authorized_keys")
    assert key_of("vm1") in keys, keys
    network = need(xen, "vm1", 1, "network-config.txt")
    assert "192.0.2.11" in network, network


def test_agent_status_says_applied(xen):
    not_run(xen, "vm1", 1)
    assert xen.mark("agent-status-applied", "vm1", 1), xen.phases()
    record = agent_record(xen, "vm1-boot1", "vm1")
    assert (record.get("status") or {}).get("state") == "applied", record
    assert record["delivered"]["instance_id"] == xl_uuid("vm1"), record


def test_in_guest_agent_answers_queries_over_the_channel(xen):
    not_run(xen, "vm1", 1)
    reply = json.loads(result_file(xen, "vm1-query.json") or "{}")
    assert reply.get("hostname") == "e2e-vm1", reply
    assert reply.get("instance-id") == xl_uuid("vm1"), reply


def test_second_clone_gets_its_own_identity(xen):
    assert_cloud_init_clean(xen, "vm2", 1, "DataSourceXenChannel")
    assert need(xen, "vm2", 1, "etc-hostname").strip() == "e2e-vm2"
    keys = need(xen, "vm2", 1, "authorized_keys")
    assert key_of("vm2") in keys and key_of("vm1") not in keys, keys
    assert "192.0.2.12" in need(xen, "vm2", 1, "network-config.txt")
    assert need(xen, "vm2", 1, "instance-id").strip() == xl_uuid("vm2")
    # Nothing a clone must own is shared with its sibling.
    for name in ("instance-id", "machine-id", "ssh-host-keys.txt"):
        mine, theirs = need(xen, "vm2", 1, name), need(xen, "vm1", 1, name)
        assert mine.strip() and mine != theirs, (name, mine, theirs)
    record = agent_record(xen, "vm2-boot1", "vm2")
    assert (record.get("status") or {}).get("state") == "applied", record


def test_second_boot_keeps_the_instance_with_the_agent_stopped(xen):
    assert xen.mark("agent-stopped").host < xen.mark("xl-create-start", "vm1", 2).host
    assert need(xen, "vm1", 2, "boots").strip() == "2"
    assert_cloud_init_clean(xen, "vm1", 2, "DataSourceXenChannel")
    # Same instance: cloud-init did not see a new one, and nothing per-instance ran again.
    iid = need(xen, "vm1", 2, "instance-id").strip()
    assert iid == xl_uuid("vm1") == need(xen, "vm1", 2, "previous-instance-id").strip()
    assert need(xen, "vm1", 2, "cloud-instances.txt").split() == [iid]
    for name in ("ssh-host-keys.txt", "machine-id", "etc-hostname", "authorized_keys"):
        assert need(xen, "vm1", 2, name) == need(xen, "vm1", 1, name), name
    log = last_boot_log(need(xen, "vm1", 2, "cloud-init.log"))
    # check_instance_id (the VM's UUID from xenstore against the recorded one), without
    # the channel: no fetch, the cached datasource.
    assert "restored from checked cache: DataSourceXenChannel" in log, log[:4000]
    assert "XenChannel: got instance-id" not in log, log[:4000]


def test_nocloud_baseline_did_the_same_work(xen):
    assert_cloud_init_clean(xen, "nocloud", 1, "DataSourceNoCloud")
    assert need(xen, "nocloud", 1, "etc-hostname").strip() == "e2e-nocloud"
    assert "192.0.2.13" in need(xen, "nocloud", 1, "network-config.txt")


def test_benchmark_figures(xen, request):
    """Measured, printed and kept in .cache/e2e/bench.json; not a timed assertion."""
    local_done = "Finished.*cloud-init-local"
    channel = xen.create_to("vm1", 1, local_done)
    nocloud = xen.create_to("nocloud", 1, local_done)
    second = xen.create_to("vm1", 2, local_done)
    raw = json.loads(result_file(xen, "channel-bench.json") or "{}")
    assert channel and nocloud and second, xen.phases()
    # cloud-init's own account of its local stage (status.json, guest uptime seconds):
    # the datasource's search and fetch, without the boot around it.
    stage = {}
    for vm, boot_n in (("vm1", 1), ("nocloud", 1), ("vm1", 2)):
        local = json.loads(need(xen, vm, boot_n, "status.json"))["v1"]["init-local"]
        stage[(vm, boot_n)] = local["finished"] - local["start"]
    assert "error" not in raw and raw.get("rtt_median_s"), raw
    figures = {
        "xl_create_to_local_done_s": {
            "xenchannel_first_boot": round(channel, 2),
            "nocloud_cidata_iso": round(nocloud, 2),
            "xenchannel_second_boot_agent_stopped": round(second, 2),
        },
        "ratio_xenchannel_to_nocloud": round(channel / nocloud, 3),
        "cloud_init_local_stage_s": {
            "xenchannel_first_boot": round(stage[("vm1", 1)], 2),
            "nocloud_cidata_iso": round(stage[("nocloud", 1)], 2),
            "xenchannel_second_boot_agent_stopped": round(stage[("vm1", 2)], 2),
        },
        "channel": raw,
    }
    with open(BENCH_JSON, "w") as f:
        json.dump(figures, f, indent=2)
    _summary(
        request.config,
        [
            "benchmark (same run, same template, each guest alone on the same dom0; "
            f"{BENCH_JSON}):",
            f"  xl create -> cloud-init-local done: XenChannel {channel:.1f} s, NoCloud "
            f"cidata ISO {nocloud:.1f} s, ratio {channel / nocloud:.2f}; second boot with the "
            f"agent stopped {second:.1f} s",
            f"  cloud-init's local stage alone (status.json): XenChannel "
            f"{stage[('vm1', 1)]:.2f} s, NoCloud {stage[('nocloud', 1)]:.2f} s, second boot "
            f"{stage[('vm1', 2)]:.2f} s",
            f"  raw channel (vm2's echo channel): round trip median "
            f"{raw['rtt_median_s'] * 1000:.1f} ms (p90 {raw['rtt_p90_s'] * 1000:.1f} ms, "
            f"{raw['rtt_samples']} samples); {raw['bulk_bytes'] // 1024} KiB echoed in "
            f"{raw['bulk_seconds']:.2f} s = {raw['bulk_bytes_per_s'] / 1024:.0f} KiB/s each way",
        ],
    )


# --------------------------------------------------------------------------- virtio


def virtio_file(res, path: str) -> Optional[str]:
    return boot.read_disk_file(os.path.join(res.run_dir, f"{boot.VIRTIO_VM}.img"), path)


def test_virtio_serial_guest_gets_its_identity(virtio):
    assert not virtio.timed_out, virtio.phases()
    assert virtio.mark("agent-status-applied"), virtio.phases()
    assert virtio.mark("qemu-powerdown"), virtio.phases()
    status = virtio_file(virtio, "/var/lib/xenchannel-e2e/status.json")
    assert status is not None, "the guest probe did not run (no clean shutdown?)"
    v1 = json.loads(status)["v1"]
    assert v1["datasource"].startswith("DataSourceXenChannel"), v1
    for stage in ("init-local", "init", "modules-config", "modules-final"):
        assert v1[stage]["errors"] == [], (stage, v1[stage])
    devices = virtio_file(virtio, "/var/lib/xenchannel-e2e/devices.txt") or ""
    assert f"{CHANNEL} -> ../vport" in devices, devices
    assert (virtio_file(virtio, "/etc/hostname") or "").strip() == "e2e-kvm1"
    keys = virtio_file(virtio, "/var/lib/xenchannel-e2e/authorized_keys") or ""
    assert "e2e-kvm1@xenchannel" in keys, keys
    record = json.loads(result_file(virtio, "agent-status.json"))
    assert (record.get("status") or {}).get("state") == "applied", record
    assert record["delivered"]["instance_id"] == boot.VIRTIO_UUID, record


def test_virtio_timing(virtio, request):
    local_done = virtio.create_to(
        boot.VIRTIO_VM, 1, "Finished.*cloud-init-local", "qemu-start", prefix=""
    )
    assert local_done, virtio.phases()
    _summary(
        request.config,
        [f"  QEMU start -> cloud-init-local done (virtio-serial, no Xen): {local_done:.1f} s"],
    )

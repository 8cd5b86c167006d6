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
import subprocess
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
    """The VM's SSH public key, as build.py made it and put it into the VM's bundle."""
    with open(os.path.join(build.output("dom0prov"), "ssh", f"{vm}.pub")) as f:
        return f.read().strip()


def vif_macs(vm: str) -> list:
    """The MACs of the VM's vifs, in order, as the domain role wrote its xl config."""
    with open(os.path.join(build.output("dom0prov"), "root", "etc", "xen", f"{vm}.cfg")) as f:
        (vif,) = re.findall(r"^vif = \[(.*?)\]", f.read(), re.M | re.S)
    return re.findall(r"mac=([0-9a-f:]{17})", vif)


def net_file(res, vm: str, name: str) -> str:
    """A file of dom0's network check of the VM's first boot (job-lib.sh net_check)."""
    not_run(res, vm, 1)
    return result_file(res, f"{vm}-boot1-net/{name}")


def reported(res, vm: str) -> Dict:
    """The agent's record of the VM once it was judged ready (job-lib.sh wait_ready)."""
    not_run(res, vm, 1)
    assert res.mark("agent-ready", vm, 1), res.phases()
    return json.loads(result_file(res, f"{vm}-boot1-ready.json"))


def fingerprints(lines) -> set:
    """SHA256 fingerprints of public key lines, by ssh-keygen -lf (as the probe lists)."""
    out = subprocess.run(
        ["ssh-keygen", "-lf", "-"],
        input="".join(f"{line}\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return {line.split()[1] for line in out.splitlines() if line.strip()}


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


@pytest.mark.parametrize(
    ("vm", "boot_n"), [("vm1", 1), ("vm2", 1), ("vm1", 2), ("nocloud", 1), ("vm3", 1)]
)
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


# --------------------------------------------------------------------------- network

# Each clone reached from dom0 over its vifs: the user who holds the bundle's key, and
# what the clone says of its setup (cloud-init's status, or the in-guest agent's).
NET_VMS = [("vm1", "status: done"), ("vm2", "status: done"), ("vm3", "agent=active")]


@pytest.mark.parametrize(("vm", "status"), NET_VMS)
def test_clone_answers_ping_and_ssh_with_pinned_host_keys(xen, vm, status):
    """From dom0: every IPv4 address the clone reported answers ping; ssh with the
    bundle's key and StrictHostKeyChecking=yes against a known_hosts holding only the
    host keys the clone reported over its channel logs in, and the clone is itself."""
    record = reported(xen, vm)
    report = record["report"]
    static = VMS[vm]["interfaces"][0]["addresses"][0].split("/")[0]
    assert record["summary"]["address"] == static, record["summary"]
    for address in net_file(xen, vm, "ipv4").split():
        assert xen.mark("ping-ok", vm, 1) and any(
            m.name == "ping-ok" and f"address={address}" in m.detail for m in xen.marks
        ), (address, xen.phases())
    assert static in net_file(xen, vm, "ipv4").split()
    known = net_file(xen, vm, "known_hosts").splitlines()
    assert known and all(line.startswith(f"{static} ") for line in known), known
    # The keys pinned are the clone's own: what its probe listed from /etc/ssh at shutdown.
    # They came with its STATUS, or (vm3, see below) from a report query over the channel.
    pinned = [line.split(" ", 1)[1] for line in known]
    if net_file(xen, vm, "keys-source").strip() == "status":
        assert pinned == report["host_keys"], (pinned, report)
    probe_keys = {line.split()[1] for line in need(xen, vm, 1, "ssh-host-keys.txt").splitlines()}
    assert fingerprints(pinned) == probe_keys, (pinned, probe_keys)
    assert xen.mark("ssh-ok", vm, 1), (net_file(xen, vm, "ssh.err"), xen.phases())
    said = net_file(xen, vm, "ssh.txt")
    assert f"hostname=e2e-{vm}\n" in said, said
    assert status in said, said
    assert f"machine-id={need(xen, vm, 1, 'machine-id').strip()}\n" in said, said


# Not vm3: without cloud-init the in-guest agent sends its STATUS report once the static
# addresses are up, which may be before xenchannel-ssh-host-keys.service has made the
# clone's host keys (a race: seen both ways); net_check then pins the keys of a report
# query over the channel, and the summary says which it was (docs/e2e.md).
@pytest.mark.parametrize("vm", ["vm1", "vm2"])
def test_status_report_carries_the_host_keys(xen, vm):
    """The report the clone sent with its STATUS (what channel_status wait_for=ready
    returns) holds its host keys: the ones its probe listed from /etc/ssh."""
    keys = reported(xen, vm)["report"]["host_keys"]
    probe_keys = {line.split()[1] for line in need(xen, vm, 1, "ssh-host-keys.txt").splitlines()}
    assert keys and fingerprints(keys) == probe_keys, (keys, probe_keys)


def test_where_vm3s_pinned_host_keys_came_from(xen, request):
    """Measured, not asserted (see above): whether vm3's STATUS report had its host keys."""
    source = net_file(xen, "vm3", "keys-source").strip()
    count = len(reported(xen, "vm3")["report"]["host_keys"])
    assert source in ("status", "query"), source
    where = "STATUS report" if source == "status" else "report query"
    _summary(
        request.config,
        [
            f"vm3 (no cloud-init): its STATUS report had {count} host key(s); the keys "
            f"pinned for ssh came from the {where}"
        ],
    )


def test_multi_nic_clone_has_both_addresses(xen):
    """vm1's two vifs: the static address on the first, a lease from dom0's dnsmasq on
    the second, each found by the MAC the domain role wrote; both answer ping."""
    interfaces = {i.get("mac"): i for i in reported(xen, "vm1")["report"]["interfaces"]}
    static_mac, dhcp_mac = vif_macs("vm1")
    assert "192.0.2.11/24" in interfaces[static_mac]["addresses"], interfaces
    leased = [a for a in interfaces[dhcp_mac]["addresses"] if a.startswith("198.51.100.")]
    assert leased, interfaces
    pinged = net_file(xen, "vm1", "ipv4").split()
    assert "192.0.2.11" in pinged and leased[0].split("/")[0] in pinged, pinged


def test_clones_differ_in_machine_id_host_keys_and_dhcp_client_id(xen):
    """The two clones of the cloud-init template, as dom0 sees them over the network."""
    said = {vm: net_file(xen, vm, "ssh.txt") for vm in ("vm1", "vm2")}
    ids = {vm: re.findall(r"^machine-id=(\w+)$", text, re.M) for vm, text in said.items()}
    assert ids["vm1"] and ids["vm2"] and ids["vm1"] != ids["vm2"], ids
    keys = {vm: set(reported(xen, vm)["report"]["host_keys"]) for vm in ("vm1", "vm2")}
    assert keys["vm1"] and keys["vm2"] and not keys["vm1"] & keys["vm2"], keys
    # dnsmasq's lease file while each clone was up: expiry, MAC, address, hostname, id.
    client = {}
    for vm in ("vm1", "vm2"):
        leases = {}
        for line in net_file(xen, vm, "dnsmasq.leases").splitlines():
            fields = line.split()
            if len(fields) >= 5:
                leases[fields[1]] = fields[4]
        client[vm] = leases.get(vif_macs(vm)[1])
        assert client[vm] and client[vm] != "*", (vm, leases)
    assert client["vm1"] != client["vm2"], client


def test_guide_flow_reaches_the_clone_without_trusting_on_first_use(xen):
    """The guide's playbook, run by ansible-playbook in dom0: channel_status wait_for
    ready, known_hosts from the reported keys, add_host at the reported address with
    StrictHostKeyChecking=yes, then tasks over SSH on the clone."""
    not_run(xen, "vm1", 1)
    log = result_file(xen, "vm1-boot1-guide/ansible.log")
    assert xen.mark("guide-flow-done", "vm1", 1), log[-4000:]
    answers = json.loads(result_file(xen, "vm1-boot1-guide/answers.json"))
    assert answers["hostname"] == "e2e-vm1", answers
    assert "status: done" in answers["cloud_init"], answers
    pinned = result_file(xen, "vm1-boot1-guide/known_hosts")
    for key in reported(xen, "vm1")["report"]["host_keys"]:
        assert f"192.0.2.11 {key}" in pinned, pinned


def test_template_without_cloud_init_is_applied_by_the_agent(xen):
    """vm3: a clone of the template the template playbook prepared without cloud-init."""
    not_run(xen, "vm3", 1)
    assert need(xen, "vm3", 1, "etc-hostname").strip() == "e2e-vm3"
    assert key_of("vm3") in need(xen, "vm3", 1, "authorized_keys")
    assert "192.0.2.14" in need(xen, "vm3", 1, "network-config.txt")
    assert probe(xen, "vm3", 1, "status.json") is None, "cloud-init ran in vm3"
    record = agent_record(xen, "vm3-boot1", "vm3")
    assert (record.get("status") or {}).get("state") == "applied", record
    assert record["delivered"]["instance_id"] == xl_uuid("vm3"), record
    assert "cloud_init" not in (record.get("report") or {}), record
    machine_ids = {need(xen, vm, 1, "machine-id") for vm in ("vm1", "vm2", "vm3")}
    assert len(machine_ids) == 3, machine_ids


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


def test_virtio_guest_is_reached_over_qemu_user_network(virtio):
    """As far as QEMU alone allows: the guest's NIC (found by its MAC) takes a lease from
    QEMU's user network, it reports that address and its host keys over the virtio-serial
    channel, and ssh through QEMU's forwarded port, from inside QEMU's network namespace,
    with the bundle's key and only the reported host keys trusted, logs in. No ping: the
    user network does not carry ICMP from outside."""
    with open(os.path.join(virtio.run_dir, "net", "ready.json")) as f:
        record = json.load(f)
    assert record["summary"]["ready"] == "yes", record["summary"]
    interfaces = {i.get("mac"): i for i in record["report"]["interfaces"]}
    assert "10.0.2.15/24" in interfaces[boot.VIRTIO_MAC]["addresses"], interfaces
    with open(os.path.join(virtio.run_dir, "net", "known_hosts")) as f:
        known = f.read().splitlines()
    assert known and len(known) == len(record["report"]["host_keys"]), known
    assert virtio.mark("ssh-ok"), virtio.phases()
    with open(os.path.join(virtio.run_dir, "net", "ssh.txt")) as f:
        said = f.read()
    assert "hostname=e2e-kvm1\n" in said and "status: done" in said, said

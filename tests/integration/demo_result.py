"""What `make demo` must say the clone ended up with: one definition for both the test
that runs it from this checkout and the test that runs it on a pristine machine."""

from xenchannel.protocol import CURRENT_VERSION


def assert_demo_result(stdout: str) -> None:
    tail = stdout[-8000:]
    lines = [line.split() for line in stdout.splitlines()]
    assert ["hostname", "web-01"] in lines, tail
    assert ["cloud-init", "status", "done"] in lines, tail
    assert ["cloud-init", "query", "v1.platform", "xen"] in lines, tail
    assert ["cloud-init", "datasource", "DataSourceXenChannel"] in lines, tail
    assert any(line[:4] == ["authorized", "key", "(debian)", "ssh-ed25519"] for line in lines), tail
    assert "Address=192.0.2.10/24" in stdout, tail
    assert ["/etc/motd", "(user-data)", "provisioned", "over", "a", "Xen", "channel"] in lines, tail
    # The status table's row for the clone: connected, the newest protocol version both
    # ends speak (the demo's guest and agent are this checkout's), delivered, applied,
    # ready at the bundle's static address; then what the clone reported.
    status = [line for line in lines if line[:1] == ["web-01"]]
    assert status and status[-1][1:7] == [
        "yes", f"v{CURRENT_VERSION}", "yes", "applied", "yes", "192.0.2.10"
    ], tail  # fmt: skip
    assert ["ready:", "yes"] in lines, tail
    assert ["hostname:", "web-01"] in lines, tail
    assert ["cloud-init:", "done"] in lines, tail
    assert any(line[:3] == ["eth0", "00:16:3e:12:34:01", "192.0.2.10/24"] for line in lines), tail
    # The host keys the clone made at its first boot, as ssh shows their fingerprints.
    keys = [line for line in lines if line[:1] and line[0].startswith("SHA256:")]
    assert any(line[1:] == ["(ssh-ed25519)"] for line in keys), tail

"""Build what the real-Xen end-to-end harness boots, from Debian trixie packages, cached.

Usage (root; the host stays untouched, every chroot runs in a private mount namespace)::

    .venv/bin/python tests/e2e/build.py            # every step, reusing what is unchanged
    .venv/bin/python tests/e2e/build.py dom0root   # one step (and what it depends on)
    .venv/bin/python tests/e2e/build.py --list     # the steps, their keys and whether cached

Each step's output lives in ``.cache/e2e/<step>/`` beside a ``<step>.key`` stamp. The key is
a hash of the step's own source text, its parameters (suite, package lists, mirror), the
files it reads from ``tests/e2e/files/`` and the keys of the steps it builds on, so a
rerun with unchanged inputs costs only the hashing, and a change rebuilds that step and
everything after it. A step is built in ``<step>.tmp`` and renamed into place, so an
interrupted build never leaves a half-made output that looks finished. Downloaded .debs
are kept in ``.cache/e2e/debs`` (debootstrap's and apt's caches point there), so a rebuild
downloads nothing that did not change in the archive.

Steps (docs/e2e.md has the timings):

hostroot   trixie minbase chroot with QEMU 10 (qemu-system-x86); Debian bookworm's QEMU
           is 7.2, and the host must stay as it is.
kernel     the trixie kernel package, unpacked: vmlinuz and its modules (the same kernel
           for dom0 and the guest; HVC_XEN is built in).
dom0root   trixie root with the Xen 4.20 hypervisor, xl, xenstored, qemu-system-xen,
           python3; plus the hypervisor itself, gunzipped (QEMU's -kernel loads only an
           uncompressed multiboot image).
pristine   bookworm minbase root with only what the README asks of a user's machine
           (python3, python3-venv, make, git, debootstrap): tests/pristine runs the
           README there.
guestroot  trixie root with systemd, udev, cloud-init, xenstore-utils, openssh-server: what
           a template carries before the collection touches it.
initrds    two small busybox initramfs images that load the block driver and ext4 and
           switch to the real root: virtio_blk for dom0 (a QEMU disk), xen-blkfront for
           the guest (a Xen PV disk).
guestprov  the guest root with the collection's template playbook applied through a chroot
           connection (guest + cloud_init_datasource roles, then template_prep).
agentprov  the guest root with cloud-init purged and the same template playbook applied:
           a template without cloud-init, whose in-guest agent applies the bundle.
guestimage guestprov packed into an ext4 image with mke2fs -d (no loop mount), plus the
           harness's probe (files/guest-report, run at the guest's shutdown) added with
           debugfs.
agentimage agentprov packed the same way.
dom0prov   the dom0 root with the dom0_agent role and the domain role for each VM of
           files/dom0-vars.json applied the same way (domain_start false: the VMs are
           created at boot), an SSH key pair per VM (the public key in its bundle) and
           this collection in dom0's collections path (for the guide's flow).
dom0image  dom0prov packed likewise, plus the harness's init, the guide's flow and the
           guest's kernel and initramfs (added with debugfs, so changing them does not
           rerun the roles).
"""

import argparse
import gzip
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from testbed import rootfs  # noqa: E402
from testbed.rootfs import (  # noqa: E402
    ANSIBLE_BUNDLE,
    COLLECTION_INPUTS,
    MIRROR,
    BuildError,
    copy_root,
    run,
    tree_hash,
)

CACHE = os.environ.get("XENCHANNEL_E2E_CACHE", os.path.join(ROOT, ".cache", "e2e"))
FILES = os.path.join(HERE, "files")
# For debugging the boot flow while roles/ or runtime/ change under one's feet: the steps
# named here (comma-separated, e.g. guestimage,dom0prov) reuse an existing output even
# when their inputs changed, and say so loudly. Never in CI.
STALE_OK = set(filter(None, os.environ.get("XENCHANNEL_E2E_STALE_OK", "").split(",")))
SUITE = "trixie"
# The builder the demo shares (testbed/rootfs.py): steps, keys, cache, debootstrap, chroot.
BUILDER = rootfs.Builder(CACHE, "e2e/build", files_dir=FILES, stale_ok=STALE_OK)
DEBS = BUILDER.debs
STEPS = BUILDER.steps
step = BUILDER.step
log = BUILDER.log
in_root = BUILDER.in_root
plan = BUILDER.plan
output = BUILDER.output
cached = BUILDER.cached

HOST_PACKAGES = ["qemu-system-x86", "busybox-static", "zstd", "xz-utils", "kmod", "e2fsprogs"]
DOM0_PACKAGES = [
    "xen-hypervisor-4.20-amd64",
    "xen-utils-4.20",
    "xenstore-utils",
    "qemu-system-xen",
    "kmod",
    "udev",
    "iproute2",
    "procps",
    "python3",
    "e2fsprogs",
    # The clones' network, from dom0: a DHCP server on the second bridge, ssh to each
    # clone, ping, and ansible-core to run the guide's flow (channel_status, add_host, a
    # play over SSH).
    "dnsmasq-base",
    "openssh-client",
    "iputils-ping",
    "ansible-core",
]
# Exactly what the README asks of a user's machine: Debian 12, python3 (3.11), python3-venv,
# make and git. The machine's registry set-up is carried in by the test that uses it.
PRISTINE_SUITE = "bookworm"
PRISTINE_PACKAGES = ["python3", "python3-venv", "make", "git", "debootstrap"]
GUEST_PACKAGES = [
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "cloud-init",
    "xenstore-utils",
    "openssh-server",
    "ifupdown",
    "procps",
    "python3",
    "python3-apt",
    "kmod",
    # cloud-init's resizefs module runs resize2fs on the root at every first boot.
    "e2fsprogs",
    # ifupdown's DHCP client (its Recommends; apt installs none here): the clones' second NIC.
    "dhcpcd-base",
]
XEN_MODULES = ["xenfs", "xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd"]
# ext4 asks the crypto API for crc32c at mount time; nothing in modules.dep says so.
DOM0_INITRD_MODULES = ["virtio_blk", "crc32c_generic", "ext4"]
GUEST_INITRD_MODULES = ["xen-blkfront", "crc32c_generic", "ext4"]


def kernel_version(kernel_dir: str) -> str:
    (version,) = os.listdir(os.path.join(kernel_dir, "x/usr/lib/modules"))
    return version


def copy_modules(kernel_dir: str, root: str) -> None:
    """Put the kernel's modules into a root (dom0 and guest load xen modules at boot)."""
    version = kernel_version(kernel_dir)
    dst = os.path.join(root, "usr/lib/modules", version)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(os.path.join(kernel_dir, "x/usr/lib/modules", version), dst, symlinks=True)
    in_root(root, ["depmod", version], "depmod in the root")


# --------------------------------------------------------------------------- steps


def debootstrap(root: str, packages: Sequence[str], name: str, suite: str = SUITE) -> None:
    BUILDER.debootstrap(root, packages, name, suite)


def apply_playbook(root: str, group: str, playbook: str, extra_vars: dict, name: str) -> str:
    return BUILDER.apply_playbook(root, group, playbook, extra_vars, name)


@step(
    "hostroot",
    params=(SUITE, MIRROR, HOST_PACKAGES),
    helpers=[BUILDER.debootstrap, BUILDER.in_root],
)
def build_hostroot(out: str, deps: Dict[str, str]) -> None:
    debootstrap(out, HOST_PACKAGES, "hostroot")
    version = in_root(out, ["qemu-system-x86_64", "--version"], "qemu --version").splitlines()[0]
    log(f"  hostroot: {version}")


@step("kernel", deps=["hostroot"], params=(SUITE,))
def build_kernel(out: str, deps: Dict[str, str]) -> None:
    host = deps["hostroot"]
    # linux-image-amd64 is the metapackage; its Depends names the versioned image.
    depends = in_root(host, ["apt-cache", "depends", "linux-image-amd64"], "apt-cache depends")
    pkg = next(
        line.split()[1]
        for line in depends.splitlines()
        if line.strip().startswith("Depends: linux-image-") and "amd64" in line
    )
    in_root(
        host,
        ["sh", "-c", f"cd /var/cache/apt/archives && apt-get download -q {pkg}"],
        f"apt-get download {pkg}",
    )
    (deb,) = [f for f in os.listdir(DEBS) if f.startswith(pkg + "_") and f.endswith(".deb")]
    run(["dpkg-deb", "-x", os.path.join(DEBS, deb), os.path.join(out, "x")], f"unpacking {deb}")
    # The package leaves modules.dep to its postinst; depmod wants <base>/lib/modules.
    os.symlink("usr/lib", os.path.join(out, "x/lib"))
    in_root(
        host,
        ["depmod", "-b", "/mnt/kernel", kernel_version(out)],
        "depmod of the kernel's modules",
        binds=[(os.path.join(out, "x"), "/mnt/kernel")],
    )
    (vmlinuz,) = [f for f in os.listdir(os.path.join(out, "x/boot")) if f.startswith("vmlinuz-")]
    shutil.copyfile(os.path.join(out, "x/boot", vmlinuz), os.path.join(out, "vmlinuz"))
    log(f"  kernel: {pkg} ({kernel_version(out)})")


@step(
    "dom0root",
    deps=["kernel"],
    params=(SUITE, MIRROR, DOM0_PACKAGES),
    helpers=[BUILDER.debootstrap, BUILDER.in_root, copy_modules],
)
def build_dom0root(out: str, deps: Dict[str, str]) -> None:
    root = os.path.join(out, "root")
    debootstrap(root, DOM0_PACKAGES, "dom0root")
    copy_modules(deps["kernel"], root)
    (xen,) = [f for f in os.listdir(os.path.join(root, "boot")) if re.match(r"xen-4\.20.*\.gz$", f)]
    # QEMU's multiboot loader takes only an uncompressed image.
    with gzip.open(os.path.join(root, "boot", xen)) as src, open(
        os.path.join(out, "xen"), "wb"
    ) as dst:
        shutil.copyfileobj(src, dst)
    log(f"  dom0root: hypervisor {xen}")


@step(
    "guestroot",
    deps=["kernel"],
    params=(SUITE, MIRROR, GUEST_PACKAGES),
    helpers=[BUILDER.debootstrap, BUILDER.in_root, copy_modules],
)
def build_guestroot(out: str, deps: Dict[str, str]) -> None:
    root = os.path.join(out, "root")
    debootstrap(root, GUEST_PACKAGES, "guestroot")
    copy_modules(deps["kernel"], root)
    with open(os.path.join(root, "etc/fstab"), "w") as f:
        # By label, as a template meant for more than one hypervisor must be: the root is
        # /dev/xvda under Xen and /dev/vda under QEMU/KVM (boot.py boots both).
        f.write("LABEL=guest / ext4 rw,errors=remount-ro 0 1\n")
    # A template ships no machine-id (template_prep empties it too); systemd makes one.
    open(os.path.join(root, "etc/machine-id"), "w").close()
    version = in_root(root, ["cloud-init", "--version"], "cloud-init --version").strip()
    log(f"  guestroot: {version}")


@step(
    "pristine",
    params=(PRISTINE_SUITE, MIRROR, PRISTINE_PACKAGES),
    helpers=[BUILDER.debootstrap, BUILDER.in_root],
)
def build_pristine(out: str, deps: Dict[str, str]) -> None:
    root = os.path.join(out, "root")
    debootstrap(root, PRISTINE_PACKAGES, "pristine", suite=PRISTINE_SUITE)
    # apt's lists stay (a user's machine has them); its downloaded .debs were never here
    # (the build's cache was bound over /var/cache/apt/archives).
    version = in_root(root, ["python3", "--version"], "python3 --version").strip()
    log(f"  pristine: {PRISTINE_SUITE} minbase, {version}, {' '.join(PRISTINE_PACKAGES)}")


def module_closure(moddir: str, names: Sequence[str]) -> List[str]:
    """Relative paths of the modules names need, dependencies first (from modules.dep)."""
    deps: Dict[str, List[str]] = {}
    by_name: Dict[str, str] = {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            path, _colon, rest = line.partition(":")
            deps[path] = rest.split()
            base = os.path.basename(path).split(".ko")[0]
            by_name[base] = by_name[base.replace("-", "_")] = path
    builtin = set()
    with open(os.path.join(moddir, "modules.builtin")) as f:
        for line in f:
            builtin.add(os.path.basename(line.strip()).split(".ko")[0].replace("-", "_"))
    order: List[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in reversed(deps[path]):
            visit(dep)
        order.append(path)

    for name in names:
        if name.replace("-", "_") in builtin:
            continue
        if name not in by_name:
            raise BuildError(f"module {name} is neither built in nor in {moddir}/modules.dep")
        visit(by_name[name])
    return order


def write_newc(top: str, dest: str) -> None:
    """A gzipped cpio (newc) archive of the tree under top, the kernel's initramfs format."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            entries.append(os.path.join(dirpath, name))
    with gzip.open(dest, "wb", compresslevel=1) as out:
        ino = 1

        def header(name: str, mode: int, size: int) -> None:
            nonlocal ino
            fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name) + 1, 0]
            out.write(b"070701" + b"".join(b"%08X" % v for v in fields))
            out.write(name.encode() + b"\0")
            out.write(b"\0" * ((-(110 + len(name) + 1)) % 4))
            ino += 1

        for path in entries:
            rel = os.path.relpath(path, top)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(path).encode()
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    data = f.read()
            else:
                data = b""
            header(rel, st.st_mode, len(data))
            out.write(data + b"\0" * ((-len(data)) % 4))
        header("TRAILER!!!", 0, 0)


def make_initrd(host: str, kernel: str, modules: Sequence[str], init: str, dest: str) -> List[str]:
    version = kernel_version(kernel)
    moddir = os.path.join(kernel, "x/usr/lib/modules", version)
    work = dest + ".d"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "bin"))
    os.makedirs(os.path.join(work, "modules"))
    for d in ("proc", "sys", "dev", "newroot"):
        os.makedirs(os.path.join(work, d))
    shutil.copyfile(os.path.join(host, "usr/bin/busybox"), os.path.join(work, "bin/busybox"))
    os.chmod(os.path.join(work, "bin/busybox"), 0o755)
    shutil.copyfile(init, os.path.join(work, "init"))
    os.chmod(os.path.join(work, "init"), 0o755)
    order = module_closure(moddir, modules)
    # insmod in this order needs no depmod and no modprobe inside the initramfs.
    with open(os.path.join(work, "modules/order"), "w") as f:
        for i, rel in enumerate(order):
            src = os.path.join(moddir, rel)
            name = f"{i:02d}-{os.path.basename(rel).split('.ko')[0]}.ko"
            with open(src, "rb") as mod:
                data = mod.read()
            if rel.endswith(".xz"):
                data = lzma.decompress(data)
            elif rel.endswith(".zst"):
                data = subprocess.run(
                    ["zstd", "-dc"], input=data, stdout=subprocess.PIPE, check=True
                ).stdout
            with open(os.path.join(work, "modules", name), "wb") as m:
                m.write(data)
            f.write(name + "\n")
    write_newc(work, dest)
    shutil.rmtree(work)
    return [os.path.basename(r).split(".ko")[0] for r in order]


@step(
    "initrds",
    deps=["hostroot", "kernel"],
    files=["initrd-init"],
    params=(DOM0_INITRD_MODULES, GUEST_INITRD_MODULES),
    helpers=[module_closure, write_newc, make_initrd],
)
def build_initrds(out: str, deps: Dict[str, str]) -> None:
    init = os.path.join(FILES, "initrd-init")
    for name, modules in (("dom0", DOM0_INITRD_MODULES), ("guest", GUEST_INITRD_MODULES)):
        loaded = make_initrd(
            os.path.join(deps["hostroot"]),
            deps["kernel"],
            modules,
            init,
            os.path.join(out, f"{name}-initrd.gz"),
        )
        log(f"  initrds: {name}: {' '.join(loaded)}")


# --------------------------------------------------------------------------- images


def pack(root: str, image: str, size: str, label: str) -> None:
    t = time.monotonic()
    run(["mke2fs", "-q", "-t", "ext4", "-L", label, "-d", root, image, size], f"mke2fs -d {image}")
    log(f"  {label}: mke2fs -d {size} {time.monotonic() - t:.1f} s")


def add_files(
    image: str,
    files: Dict[str, tuple],
    mkdirs: Sequence[str] = (),
    links: Optional[Dict[str, str]] = None,
) -> None:
    """Write {dest: (src, mode)} and symbolic links {link: target} into an ext4 image with
    debugfs, owned by root, and check each one landed (debugfs follows no links in a
    destination path and reports failures only as text)."""
    commands = [f"mkdir {d}" for d in mkdirs]
    for dest, (src, mode) in files.items():
        commands += [f"rm {dest}", f"write {src} {dest}", f"sif {dest} mode {mode}"]
        commands += [f"sif {dest} uid 0", f"sif {dest} gid 0"]
    for link, target in (links or {}).items():
        commands += [f"rm {link}", f"symlink {link} {target}"]
    script = image + ".debugfs"
    with open(script, "w") as f:
        f.write("\n".join(commands) + "\n")
    run(["debugfs", "-w", "-f", script, image], f"adding files to {image}")
    os.unlink(script)
    for dest in [*files, *(links or {})]:
        listing = run(["debugfs", "-R", f"stat {dest}", image], f"checking {dest} in {image}")
        kind = "symlink" if dest in (links or {}) else "regular"
        if f"Type: {kind}" not in listing:
            raise BuildError(f"debugfs did not write {dest} into {image}:\n{listing}")


@step(
    "guestprov",
    deps=["guestroot"],
    params=(tree_hash(COLLECTION_INPUTS), ANSIBLE_BUNDLE),
    helpers=[BUILDER.apply_playbook, copy_root],
)
def build_guestprov(out: str, deps: Dict[str, str]) -> None:
    root = os.path.join(out, "root")
    copy_root(os.path.join(deps["guestroot"], "root"), root)
    apply_playbook(
        root,
        "templates",
        os.path.join(ROOT, "playbooks/template.yml"),
        {"template_prep_confirm": True},
        "template",
    )


@step(
    "agentprov",
    deps=["guestroot"],
    params=(tree_hash(COLLECTION_INPUTS), ANSIBLE_BUNDLE),
    helpers=[BUILDER.apply_playbook, BUILDER.in_root, copy_root],
)
def build_agentprov(out: str, deps: Dict[str, str]) -> None:
    """A template without cloud-init: the same guest root with cloud-init purged, then the
    same template playbook, which then installs the guest role alone (the in-guest agent
    applies the bundle)."""
    root = os.path.join(out, "root")
    copy_root(os.path.join(deps["guestroot"], "root"), root)
    in_root(root, ["apt-get", "purge", "-y", "-q", "cloud-init"], "purging cloud-init")
    apply_playbook(
        root,
        "templates",
        os.path.join(ROOT, "playbooks/template.yml"),
        {"template_prep_confirm": True},
        "template-agent",
    )


def guest_image(root: str, image: str, echo: bool) -> None:
    """A provisioned guest root packed, with the harness's probe (and the echo end of the
    channel benchmark) clipped on."""
    pack(root, image, "3G", "guest")
    # The harness's probe, not the collection's: added after the template playbook, the
    # way a test instrument is clipped on, and enabled by its link.
    unit = "/etc/systemd/system/xenchannel-e2e-report.service"
    files = {
        "/usr/local/sbin/xenchannel-e2e-report": (os.path.join(FILES, "guest-report"), "0100755"),
        unit: (os.path.join(FILES, "guest-report.service"), "0100644"),
    }
    links = {"/etc/systemd/system/sysinit.target.wants/xenchannel-e2e-report.service": unit}
    if echo:
        # The echo end of the raw channel benchmark likewise (files/guest-echo).
        echo_unit = "/etc/systemd/system/xenchannel-e2e-echo.service"
        files["/usr/local/sbin/xenchannel-e2e-echo"] = (
            os.path.join(FILES, "guest-echo"),
            "0100755",
        )
        files[echo_unit] = (os.path.join(FILES, "guest-echo.service"), "0100644")
        links["/etc/systemd/system/multi-user.target.wants/xenchannel-e2e-echo.service"] = echo_unit
    add_files(image, files, links=links)


@step(
    "guestimage",
    deps=["guestprov"],
    files=["guest-report", "guest-report.service", "guest-echo", "guest-echo.service"],
    helpers=[pack, add_files, guest_image],
)
def build_guestimage(out: str, deps: Dict[str, str]) -> None:
    guest_image(os.path.join(deps["guestprov"], "root"), os.path.join(out, "guest.img"), True)


@step(
    "agentimage",
    deps=["agentprov"],
    files=["guest-report", "guest-report.service"],
    helpers=[pack, add_files, guest_image],
)
def build_agentimage(out: str, deps: Dict[str, str]) -> None:
    guest_image(os.path.join(deps["agentprov"], "root"), os.path.join(out, "guest.img"), False)


# The placeholder in files/dom0-vars.json for each VM's own SSH public key.
SSH_KEY_PLACEHOLDER = "E2E_SSH_PUBLIC_KEY"
# Where dom0 finds the collection (the guide's flow runs ansible-playbook there).
DOM0_COLLECTION = "usr/share/ansible/collections/ansible_collections/xenchannel/provision"


def with_ssh_keys(extra_vars: dict, root: str, out: str) -> dict:
    """Give each VM its own SSH key pair, made here: the public key goes into its bundle
    (in place of the placeholder), the private key into dom0 (/root/.ssh/e2e-<vm>, for
    the job's ssh and the guide's flow) and into <out>/ssh/ for the tests."""
    keys = os.path.join(out, "ssh")
    dot_ssh = os.path.join(root, "root", ".ssh")
    os.makedirs(keys, mode=0o700)
    os.makedirs(dot_ssh, mode=0o700, exist_ok=True)
    vms = []
    for vm in extra_vars["xenchannel_vms"]:
        path = os.path.join(keys, vm["name"])
        comment = f"e2e-{vm['name']}@xenchannel"
        argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path]
        run(argv, f"ssh-keygen for {vm['name']}")
        with open(path + ".pub") as f:
            public = f.read().strip()
        shutil.copyfile(path, os.path.join(dot_ssh, f"e2e-{vm['name']}"))
        os.chmod(os.path.join(dot_ssh, f"e2e-{vm['name']}"), 0o600)
        vms.append(json.loads(json.dumps(vm).replace(SSH_KEY_PLACEHOLDER, public)))
    return dict(extra_vars, xenchannel_vms=vms)


def install_collection(root: str) -> None:
    """This collection into dom0's collections path, as ansible-galaxy would put it."""
    dest = os.path.join(root, DOM0_COLLECTION)
    for name in COLLECTION_INPUTS:
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(
                src, os.path.join(dest, name), ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            os.makedirs(dest, exist_ok=True)
            shutil.copyfile(src, os.path.join(dest, name))


@step(
    "dom0prov",
    deps=["dom0root"],
    files=["dom0-play.yml", "dom0-vars.json", "template.cfg"],
    params=(tree_hash(COLLECTION_INPUTS), ANSIBLE_BUNDLE, SSH_KEY_PLACEHOLDER, DOM0_COLLECTION),
    helpers=[BUILDER.apply_playbook, copy_root, with_ssh_keys, install_collection],
)
def build_dom0prov(out: str, deps: Dict[str, str]) -> None:
    root = os.path.join(out, "root")
    copy_root(os.path.join(deps["dom0root"], "root"), root)
    os.makedirs(os.path.join(root, "etc/xen/templates"), exist_ok=True)
    shutil.copyfile(
        os.path.join(FILES, "template.cfg"), os.path.join(root, "etc/xen/templates/e2e.cfg")
    )
    with open(os.path.join(FILES, "dom0-vars.json")) as f:
        extra_vars = with_ssh_keys(json.load(f), root, out)
    install_collection(root)
    apply_playbook(root, "dom0", os.path.join(FILES, "dom0-play.yml"), extra_vars, "dom0")


@step(
    "dom0image",
    deps=["dom0prov", "kernel", "initrds"],
    files=["dom0-init", "channel-bench", "guide-flow.yml"],
    helpers=[pack, add_files],
)
def build_dom0image(out: str, deps: Dict[str, str]) -> None:
    image = os.path.join(out, "dom0.img")
    pack(os.path.join(deps["dom0prov"], "root"), image, "3G", "dom0")
    # The harness's own files go in with debugfs, so that a change to them (or to the
    # kernel) repacks the image without running the roles again.
    extra = {
        # /usr/sbin: /sbin is a link (merged /usr), and debugfs does not follow links.
        "/usr/sbin/xenchannel-e2e-init": (os.path.join(FILES, "dom0-init"), "0100755"),
        "/usr/sbin/xenchannel-e2e-channel-bench": (
            os.path.join(FILES, "channel-bench"),
            "0100755",
        ),
        "/etc/xenchannel-e2e/guide-flow.yml": (os.path.join(FILES, "guide-flow.yml"), "0100644"),
        # What the VMs boot, by kernel=/ramdisk= in their xl configs (files/template.cfg).
        "/var/lib/xenchannel-e2e/vmlinuz": (os.path.join(deps["kernel"], "vmlinuz"), "0100644"),
        "/var/lib/xenchannel-e2e/guest-initrd.gz": (
            os.path.join(deps["initrds"], "guest-initrd.gz"),
            "0100644",
        ),
    }
    add_files(image, extra, mkdirs=["/var/lib/xenchannel-e2e", "/etc/xenchannel-e2e"])


# --------------------------------------------------------------------------- cache


def check_machine() -> None:
    """Fail with the reason and the fix when this machine cannot build the images."""
    BUILDER.check_machine(
        (("mke2fs", "apt-get install e2fsprogs"), ("dpkg-deb", "apt-get install dpkg")),
        free_gib=8,
    )


def build(targets: Sequence[str]) -> Dict[str, str]:
    """Build targets and what they depend on; return each step's output directory."""
    check_machine()
    return BUILDER.build(targets)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument(
        "steps", nargs="*", help=f"steps to build (default: all): {', '.join(STEPS)}"
    )
    parser.add_argument("--list", action="store_true", help="print the steps and their keys")
    args = parser.parse_args(argv)
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown step {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    targets = args.steps or list(STEPS)
    if args.list:
        keys = BUILDER.keys(targets)
        for name in keys:
            state = "cached" if cached(name, keys[name]) else "to build"
            print(f"{name:10} {keys[name]}  {state}")
        return 0
    t = time.monotonic()
    try:
        build(targets)
    except BuildError as exc:
        log(f"FAILED: {exc}")
        return 1
    log(f"done in {time.monotonic() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

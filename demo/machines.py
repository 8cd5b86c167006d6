"""The demo's machines: Debian roots the demo builds itself, cached by a key over inputs.

Built with the builder the real-Xen tier uses (``testbed/rootfs.py``), so what this
machine has installed (udev, systemd, cloud-init, its Debian release) does not change
what the demo does or prints:

guestroot  Debian 12 minbase with what a cloud template carries before the collection
           touches it: cloud-init, systemd, udev, openssh-server, python3, xenstore-utils.
template   guestroot with ``playbooks/template.yml`` applied through a chroot connection
           (roles guest, cloud_init_datasource, template_prep), as a user prepares an
           image; rebuilt when the collection's roles, runtime or datasource change.
dom0root   Debian 12 minbase with python3 and systemd (for its tmpfiles): the dom0 the
           demo provisions afresh on every run.

Each is built once into ``.cache/demo/<step>/root``; later runs reuse it until an input
changes. The first run's build is shown with an estimate measured on a 2-CPU machine.
"""

import os
from typing import Callable, Dict

from testbed import rootfs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, ".cache", "demo")
SUITE = "bookworm"
GUEST_PACKAGES = [
    "cloud-init",
    "systemd",
    "udev",
    "iproute2",
    "openssh-server",
    "sudo",
    "python3",
    # What the roles would otherwise install: the udev helper's xenstore-read, and the
    # python3-apt Ansible's apt module runs on.
    "xenstore-utils",
    "python3-apt",
]
DOM0_PACKAGES = ["python3", "systemd"]
# cloud-init picks the first network renderer it finds installed; naming one keeps what
# the clone gets the same on every machine.
RENDERER_CFG = "etc/cloud/cloud.cfg.d/90-xenchannel-demo-renderer.cfg"
RENDERER_CFG_TEXT = "system_info:\n  network:\n    renderers: [networkd]\n"
# Seconds each step took on a first run on a 2-CPU machine with a near Debian mirror: the
# estimate shown before it is built.
ESTIMATE = {"guestroot": 60, "template": 30, "dom0root": 50, "collections": 10}
WHAT = {
    "guestroot": f"the guest's Debian root (debootstrap {SUITE}, then apt-get install "
    + " ".join(GUEST_PACKAGES)
    + ")",
    "template": "the template: playbooks/template.yml applied to the guest's root",
    "dom0root": f"dom0's Debian root (debootstrap {SUITE}, then apt-get install "
    + " ".join(DOM0_PACKAGES)
    + ")",
}

BUILDER = rootfs.Builder(CACHE, "demo", report_cached=False)


@BUILDER.step(
    "guestroot",
    params=(SUITE, rootfs.MIRROR, GUEST_PACKAGES),
    helpers=[BUILDER.debootstrap, BUILDER.in_root],
)
def build_guestroot(out: str, deps: Dict[str, str]) -> None:
    root = os.path.join(out, "root")
    BUILDER.debootstrap(root, GUEST_PACKAGES, "guestroot", SUITE)
    # A template ships no machine-id (template_prep empties it too); systemd makes one.
    open(os.path.join(root, "etc/machine-id"), "w").close()


@BUILDER.step(
    "template",
    deps=["guestroot"],
    params=(
        rootfs.tree_hash(rootfs.COLLECTION_INPUTS),
        rootfs.ANSIBLE_BUNDLE,
        RENDERER_CFG,
        RENDERER_CFG_TEXT,
    ),
    helpers=[BUILDER.apply_playbook, rootfs.copy_root],
)
def build_template(out: str, deps: Dict[str, str]) -> None:
    root = os.path.join(out, "root")
    rootfs.copy_root(os.path.join(deps["guestroot"], "root"), root)
    with open(os.path.join(root, RENDERER_CFG), "w") as handle:
        handle.write(RENDERER_CFG_TEXT)
    BUILDER.apply_playbook(
        root,
        "templates",
        os.path.join(REPO, "playbooks", "template.yml"),
        {"template_prep_confirm": True},
        "template",
    )


@BUILDER.step(
    "dom0root",
    params=(SUITE, rootfs.MIRROR, DOM0_PACKAGES),
    helpers=[BUILDER.debootstrap, BUILDER.in_root],
)
def build_dom0root(out: str, deps: Dict[str, str]) -> None:
    BUILDER.debootstrap(os.path.join(out, "root"), DOM0_PACKAGES, "dom0root", SUITE)


def build(note: Callable[[str], None]) -> Dict[str, str]:
    """The template's and dom0's roots, built where not cached: {step: its root}.

    ``note`` gets one line per step built, with the estimate, before it starts."""
    BUILDER.check_machine(free_gib=3)
    BUILDER.say = note

    def announce(name: str) -> None:
        note(f"first run: building {WHAT[name]}; about {ESTIMATE[name]} s")

    outs = BUILDER.build(["template", "dom0root"], on_build=announce)
    return {name: os.path.join(path, "root") for name, path in outs.items()}


def collections(note: Callable[[str], None]) -> str:
    """The collections path holding community.general, for its chroot connection."""
    if not os.path.isfile(os.path.join(CACHE, "collections", ".bundle")):
        note(
            f"first run: fetching community.general (for its chroot connection) from"
            f" {rootfs.ANSIBLE_BUNDLE} on PyPI; about {ESTIMATE['collections']} s"
        )
    return BUILDER.community_general()

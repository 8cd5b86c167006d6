"""Which tier each test belongs to: the one place that says what a test needs.

``make check`` (the fast tier) runs every test that needs none of these markers, without
root, network or docker; ``make test`` runs those first (as ``make check`` does), then the
marked rest (``pytest -m needs``). A test lands in a marked tier by what it uses:

- root: namespaces with mounts, overlays of this machine, chown to other users;
- system: what ``make system`` installs or fetches with root and network (Debian's
  cloud-init packages, Xen's libxlutil parser, a udevadm with ``verify``,
  galaxy-importer's venv);
- docker: the private Docker engine of the molecule tier;
- load: the many-domains load test (minutes of CPU).

A test that needs one of these and is not marked fails in ``make check``, which CI runs
with no capabilities and no network, so a wrong entry here cannot hide.

Which test tier a test's time counts under in the report at the end of ``make test``
(roles, molecule, demo, ...) is tests/tiers.py's, beside the report.
"""

from tests import tiers

# Whole files, by what every test in them needs.
NEEDS_BY_PATH = {
    "tests/roles/": ("root", "system"),
    "tests/molecule/": ("root", "docker"),
    "tests/galaxy_importer/": ("system",),
    "tests/load/": ("load",),
    "tests/datasource/test_cloud_init_sandbox.py": ("root", "system"),
    "tests/datasource/test_cloud_init_versions.py": ("root", "system"),
    "tests/datasource/test_ds_identify.py": ("system",),
    "tests/datasource/test_install_ways.py": ("system",),
    "tests/integration/test_demo.py": ("root", "system"),
    "tests/pristine/": ("root", "system"),
    "tests/integration/test_guest_agent.py": ("root",),
    "tests/integration/test_unit_ordering.py": ("system",),
}

# Fixtures that bring a need with them, wherever they are used.
NEEDS_BY_FIXTURE = {
    "xl_oracle": ("system",),  # Debian's libxlutil, fetched by make system
}

NEEDS = ("root", "system", "docker", "load")


def pytest_configure(config):
    for name, text in (
        ("root", "needs root: namespaces with mounts, overlays, chown"),
        ("system", "needs what `make system` installs or fetches (root and network)"),
        ("docker", "needs the molecule tier's private Docker engine"),
        ("load", "the many-domains load test (minutes of CPU)"),
        ("compat", "runs guest-side code on every pyenv interpreter"),
        ("needs", "any of root, system, docker, load: left out of `make check`"),
    ):
        config.addinivalue_line("markers", f"{name}: {text}")
    tiers.time_tests(config)


def pytest_collection_modifyitems(config, items):
    root = str(config.rootpath) + "/"
    for item in items:
        path = str(item.path)
        relative = path[len(root) :] if path.startswith(root) else path
        needs = set()
        for prefix, marks in NEEDS_BY_PATH.items():
            if relative.startswith(prefix):
                needs.update(marks)
        for fixture, marks in NEEDS_BY_FIXTURE.items():
            if fixture in item.fixturenames:
                needs.update(marks)
        needs.update(m.name for m in item.iter_markers() if m.name in NEEDS)
        for name in sorted(needs):
            item.add_marker(name)
        if needs:
            item.add_marker("needs")

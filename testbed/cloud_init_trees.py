"""Where tests/setup-cloud-init.sh puts Debian's cloud-init trees."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, ".cache", "cloud-init")
VERSIONS = ("22.4", "25.1")


def tree(version: str) -> str:
    """The extracted package root; a missing tree is a failure saying what to run."""
    root = os.path.join(CACHE, version, "root")
    marker = os.path.join(root, "usr", "lib", "python3", "dist-packages", "cloudinit")
    if not os.path.isdir(marker):
        raise AssertionError(
            f"cloud-init {version} is not fetched ({marker} is missing): "
            "run `sh tests/setup-cloud-init.sh` (or `make system`)"
        )
    return root


def dist_packages(version: str) -> str:
    return os.path.join(tree(version), "usr", "lib", "python3", "dist-packages")


def ds_identify(version: str) -> str:
    return os.path.join(tree(version), "usr", "lib", "cloud-init", "ds-identify")

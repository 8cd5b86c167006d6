"""Run Debian's cloud-init CLI in a throwaway sandbox: shared by tests and benchmarks.

The cloud-init CLI acts on the machine it runs on (hostname, /etc, users' homes), so it
runs only inside ``unshare --mount --uts --net --ipc --pid --fork --mount-proc
--propagation private``, with overlays on /etc, /var, /root and /home (their upper
directories, under ``<base>/<boot>/``, keep what cloud-init wrote) and a tmpfs on /run.
No network namespace has any interface but lo.

``Sandbox(base, version)`` prepares the cloud.cfg and the environment; ``boot(name,
commands)`` runs a list of cloud-init sub-commands (one "boot") and returns a ``Boot``
with each command's output, exit status and wall time.  This file is also the program
run inside the namespaces (``python -m testbed.cloud_init_sandbox --inner SPEC``).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import yaml

from testbed.cloud_init_trees import REPO, python_path

OVERLAID = ("etc", "var", "root", "home")
CHANNEL = "org.xenchannel.provision.0"


# --------------------------------------------------------------------------- inside


def _inner(spec_path: str) -> int:
    """Runs as pid 1 of the sandbox: mount, write files, run each command, record."""
    with open(spec_path) as handle:
        spec = json.load(handle)
    out = spec["out"]
    for d in OVERLAID:
        upper, work = os.path.join(out, d, "u"), os.path.join(out, d, "w")
        os.makedirs(upper, exist_ok=True)
        os.makedirs(work, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir=/{d},upperdir={upper},workdir={work}", f"/{d}"],
            check=True,
        )  # fmt: skip
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
    os.makedirs("/etc/cloud/cloud.cfg.d", exist_ok=True)
    shutil.copy(spec["cloud_cfg"], "/etc/cloud/cloud.cfg")
    for path, text in spec["files"].items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
    socket.sethostname("sandbox-before")
    results = []
    for argv in spec["commands"]:
        start = time.monotonic()
        try:
            proc = subprocess.run(
                [spec["python"], "-m", "cloudinit.cmd.main", *argv],
                capture_output=True,
                timeout=spec["timeout"],
                check=False,
            )
            rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, stdout, stderr = -1, exc.stdout or b"", (exc.stderr or b"") + b"\nTIMEOUT"
        results.append(
            {
                "argv": argv,
                "rc": rc,
                "stdout": stdout.decode("utf-8", "replace"),
                "stderr": stderr.decode("utf-8", "replace"),
                "elapsed": time.monotonic() - start,
            }
        )
    with open(os.path.join(out, "result.json"), "w") as handle:
        json.dump({"results": results, "hostname": socket.gethostname()}, handle)
    return 0


# --------------------------------------------------------------------------- outside


class Run:
    def __init__(self, data: Dict[str, Any]) -> None:
        self.argv: List[str] = data["argv"]
        self.rc: int = data["rc"]
        self.stdout: str = data["stdout"]
        self.stderr: str = data["stderr"]  # cloud-init's log (no log config: stderr)
        self.output = self.stdout + self.stderr
        self.elapsed: float = data["elapsed"]

    def check(self) -> "Run":
        assert self.rc == 0, (
            f"cloud-init {' '.join(self.argv)}: rc {self.rc}\n{self.output[-4000:]}"
        )
        return self


class Boot:
    def __init__(self, out: str, data: Dict[str, Any]) -> None:
        self.out = out
        self.runs = [Run(r) for r in data["results"]]
        self.hostname: str = data["hostname"]

    def upper(self, path: str) -> str:
        """Where the overlay kept what cloud-init wrote at absolute ``path``."""
        parts = path.strip("/").split("/", 1)
        assert parts[0] in OVERLAID, path
        return os.path.join(self.out, parts[0], "u", *parts[1:])

    def read(self, path: str) -> str:
        with open(self.upper(path)) as handle:
            return handle.read()

    def written(self, top: str) -> List[str]:
        """Absolute paths of the files written under ``top`` (e.g. ``/etc``)."""
        base = self.upper(top)
        found = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                found.append(os.path.join(top, os.path.relpath(os.path.join(dirpath, name), base)))
        return found


def init_args(version: str, local: bool) -> List[str]:
    """``init [--local]``: settings live in /etc/cloud (--file is dropped after detection)."""
    del version  # both versions take the same form without --file
    return ["init", "--local"] if local else ["init"]


def write_datasource_pkg(base: str) -> str:
    """A package holding DataSourceXenChannel.py (the datasource_pkg_list way); its parent."""
    pkgs = os.path.join(base, "pkgs")
    pkg = os.path.join(pkgs, "xenchannel_datasource")
    os.makedirs(pkg, exist_ok=True)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    shutil.copy(os.path.join(REPO, "datasource", "DataSourceXenChannel.py"), pkg)
    return pkgs


def guest_root(base: str, link: Optional[str], on_xen: bool = True, name: str = CHANNEL) -> str:
    """A fake guest root for the datasource's ``root`` setting: the channel link (if any)
    at ``dev/xen-channel/<name>`` and ``sys/hypervisor/type``."""
    groot = os.path.join(base, "groot")
    os.makedirs(os.path.join(groot, "dev/xen-channel"), exist_ok=True)
    if link is not None:
        os.symlink(link, os.path.join(groot, "dev/xen-channel", name))
    if on_xen:
        os.makedirs(os.path.join(groot, "sys/hypervisor"), exist_ok=True)
        with open(os.path.join(groot, "sys/hypervisor/type"), "w") as f:
            f.write("xen\n")
    return groot


def base_cloud_cfg(datasource_list: Sequence[str], ds_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """A cloud.cfg for a quick, offline boot: root gets the keys, few modules run."""
    return {
        "datasource_list": list(datasource_list),
        "datasource_pkg_list": ["xenchannel_datasource"],
        "datasource": {"XenChannel": ds_cfg},
        "system_info": {
            "distro": "debian",
            "network": {"renderers": ["networkd", "eni", "netplan"]},
        },
        "preserve_hostname": False,
        "users": [],
        "disable_root": False,
        "ssh_genkeytypes": [],
        "ssh_deletekeys": False,
        "package_update": False,
        "package_upgrade": False,
        "cloud_init_modules": ["set_hostname", "update_hostname", "users_groups", "ssh"],
        "cloud_config_modules": ["runcmd"],
        "cloud_final_modules": ["scripts_user", "final_message"],
    }


class Sandbox:
    def __init__(self, base: str, version: str, cloud_cfg: Dict[str, Any]) -> None:
        if shutil.which("unshare") is None:
            raise AssertionError("unshare (util-linux) is needed to sandbox cloud-init")
        self.base = base
        self.version = version
        pkgs = write_datasource_pkg(base)
        self.cfg_path = os.path.join(base, "cloud.cfg")
        self.set_cfg(cloud_cfg)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [os.path.join(REPO, "runtime"), pkgs, *python_path(version)]
        )

    def set_cfg(self, cloud_cfg: Dict[str, Any]) -> None:
        with open(self.cfg_path, "w") as f:
            yaml.safe_dump(cloud_cfg, f)

    def boot(
        self,
        name: str,
        commands: Sequence[Sequence[str]],
        files: Optional[Dict[str, str]] = None,
        timeout: float = 60.0,
    ) -> Boot:
        """Run cloud-init ``commands`` in one fresh sandbox; ``files`` (absolute path in
        the sandbox: text) are written after the overlays are mounted."""
        out = os.path.join(self.base, name)
        os.makedirs(out)
        spec = os.path.join(out, "spec.json")
        with open(spec, "w") as f:
            json.dump(
                {
                    "out": out,
                    "cloud_cfg": self.cfg_path,
                    "python": sys.executable,
                    "files": files or {},
                    "commands": [list(c) for c in commands],
                    "timeout": timeout,
                },
                f,
            )
        subprocess.run(
            ["unshare", "--mount", "--uts", "--net", "--ipc", "--pid", "--fork",
             "--mount-proc", "--propagation", "private",
             sys.executable, "-m", "testbed.cloud_init_sandbox", "--inner", spec],
            env=self.env,
            cwd=REPO,
            check=True,
            timeout=timeout * len(commands) + 30,
        )  # fmt: skip
        with open(os.path.join(out, "result.json")) as f:
            return Boot(out, json.load(f))


if __name__ == "__main__" and sys.argv[1:2] == ["--inner"]:
    sys.exit(_inner(sys.argv[2]))

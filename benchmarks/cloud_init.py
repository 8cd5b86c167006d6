"""(d) cloud-init with XenChannel: ``python -m benchmarks.cloud_init [--rate B/s] [--runs N]``
(or ``python -m benchmarks.run --cloud-init``).

For each Debian cloud-init version (22.4.2, 25.1.4), in the same run:

* *boot*: the wall time of ``cloud-init init --local`` (the cloud-init process, in the
  sandbox of testbed/cloud_init_sandbox.py: overlays, no network), median of ``--runs``
  fresh boots, with XenChannel (real dom0 agent + simulated channel at ``--rate``,
  default 256000 B/s) against NoCloud reading a seed dir with the same meta-data,
  user-data and network-config.  ratio = XenChannel / NoCloud (target <= 1.2).
* *detect*: the datasource's detection with no channel and not on Xen, called
  in-process (one process per version) many times: ``ds_detect()`` on 25.1,
  ``_get_data()`` (22.4 has no ds_detect) on 22.4; median per call.

Needs root and unshare (the sandbox) and ``sh tests/setup-cloud-init.sh``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import yaml

from testbed.cloud_init_sandbox import Sandbox, base_cloud_cfg, guest_root, init_args
from testbed.cloud_init_trees import REPO, VERSIONS, python_path
from testbed.simulator import SimulatorOptions
from testbed.stack import Stack

from .harness import BenchError, make_bundle

TARGET_RATIO = 1.2
DETECT_CALLS = 2000


def _boot_times(sandbox: Sandbox, prefix: str, runs: int, files: Dict[str, str]) -> List[float]:
    times = []
    for n in range(runs):
        boot = sandbox.boot(f"{prefix}{n}", [init_args(sandbox.version, local=True)], files=files)
        run = boot.runs[0]
        if run.rc != 0:
            raise BenchError(
                f"{prefix} boot {n} of cloud-init {sandbox.version} failed (rc {run.rc})"
            )
        times.append(run.elapsed)
    return times


def _boots(version: str, rate: float, runs: int) -> Dict[str, Any]:
    name = "bench-" + version.replace(".", "")
    bundle = make_bundle(name)
    stack = Stack(SimulatorOptions(rate=rate))
    try:
        domain = stack.add_domain(name, bundle)
        stack.start_agent()
        with tempfile.TemporaryDirectory(prefix="xcb-d-") as base:
            xen_dir = os.path.join(base, "xen")
            os.makedirs(xen_dir)
            xen = Sandbox(
                xen_dir,
                version,
                base_cloud_cfg(["XenChannel", "None"], {"root": guest_root(xen_dir, domain.link)}),
            )
            xen_times = _boot_times(xen, "xen", runs, {})
            log = xen.boot("check", [init_args(version, local=True)]).runs[0].output
            if "found local data from DataSourceXenChannel" not in log:
                raise BenchError(f"cloud-init {version} did not use XenChannel in the benchmark")
            nc_dir = os.path.join(base, "nocloud")
            os.makedirs(nc_dir)
            nocloud = Sandbox(nc_dir, version, base_cloud_cfg(["NoCloud", "None"], {}))
            seed = "/var/lib/cloud/seed/nocloud/"
            files = {
                seed + "meta-data": yaml.safe_dump(bundle.meta_data),
                seed + "user-data": (bundle.user_data or b"").decode(),
                seed + "network-config": yaml.safe_dump(bundle.network_config),
            }
            nc_times = _boot_times(nocloud, "nc", runs, files)
    finally:
        stack.close()
    xen_median, nc_median = statistics.median(xen_times), statistics.median(nc_times)
    return {
        "xenchannel_seconds": xen_times,
        "nocloud_seconds": nc_times,
        "xenchannel_median": xen_median,
        "nocloud_median": nc_median,
        "ratio": xen_median / nc_median,
        "met": xen_median / nc_median <= TARGET_RATIO,
    }


def _detect_child(version: str, calls: int) -> None:
    """In a process with this version's cloud-init on the path: time detection."""
    # This version's cloud-init is importable only in this child process.
    from cloudinit import distros, helpers, sources  # noqa: PLC0415
    from DataSourceXenChannel import DataSourceXenChannel  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="xcb-dd-") as tmp:
        groot = os.path.join(tmp, "groot")
        os.makedirs(os.path.join(groot, "dev"))
        paths = helpers.Paths({"cloud_dir": tmp, "run_dir": tmp})
        distro = distros.fetch("debian")("debian", {}, paths)
        ds = DataSourceXenChannel({"datasource": {"XenChannel": {"root": groot}}}, distro, paths)
        # 22.4's DataSource has no ds_detect: cloud-init calls _get_data() straight away.
        call = ds.ds_detect if hasattr(sources.DataSource, "ds_detect") else ds._get_data
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            found = call()
            samples.append(time.perf_counter() - start)
            assert found is False
        print(json.dumps({"function": call.__name__, "median": statistics.median(samples),
                          "max": max(samples), "calls": calls}))  # fmt: skip


def _detect(version: str, calls: int) -> Dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [
            os.path.join(REPO, "runtime"),
            os.path.join(REPO, "datasource"),
            REPO,
            *python_path(version),
        ]
    )
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.cloud_init", "--detect-child", version, str(calls)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    if proc.returncode != 0:
        raise BenchError(f"detection timing on {version} failed: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(rate: float = 256000.0, runs: int = 5) -> Dict[str, Any]:
    """Section (d); prints its table and returns its figures."""
    started = time.monotonic()
    print(f"\n(d) cloud-init init --local, XenChannel at {rate:g} B/s vs NoCloud seed dir")
    print(f"    median of {runs} boots each; detection with no channel, {DETECT_CALLS} calls")
    print(
        f"    {'version':8} {'XenChannel':>11} {'NoCloud':>9} {'ratio':>6}  target <= "
        f"{TARGET_RATIO:g}   {'detect':>14}"
    )
    figures: Dict[str, Any] = {}
    for version in VERSIONS:
        boots = _boots(version, rate, runs)
        detect = _detect(version, DETECT_CALLS)
        figures[version] = {"boot": boots, "detect": detect}
        print(
            f"    {version:8} {boots['xenchannel_median']:10.3f}s {boots['nocloud_median']:8.3f}s "
            f"{boots['ratio']:6.2f}  {'met' if boots['met'] else 'NOT met':14} "
            f"{detect['median'] * 1e6:8.1f} us ({detect['function']})",
            flush=True,
        )
    figures["seconds"] = time.monotonic() - started
    print(f"    section (d) took {figures['seconds']:.1f} s")
    return figures


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--detect-child"]:
        _detect_child(argv[1], int(argv[2]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cloud_init", description=__doc__)
    parser.add_argument("--rate", type=float, default=256000.0, help="channel rate in B/s")
    parser.add_argument("--runs", type=int, default=5, help="boots per datasource and version")
    args = parser.parse_args(argv)
    if args.runs < 1 or not args.rate > 0:
        parser.error("--runs must be >= 1 and --rate positive")
    try:
        run(args.rate, args.runs)
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""(e) xl_channel vs ansible.builtin.template: ``python -m benchmarks.xl_channel_bench
[--configs N]`` (or ``python -m benchmarks.run --xl``).

N (default 200) realistic xl domain configs (name, type, memory, vcpus, a disk list, a
vif list, comments) are generated in a temp dir, in two identical copies.  Then, in the
same run, on localhost with connection local:

* *xl_channel*: one ``ansible-playbook`` run whose task loops over the N files and adds
  the provisioning channel with ``xenchannel.provision.xl_channel``;
* *template*: one run whose task loops over the same N domains and renders each whole
  config from a Jinja template that has the channel line - the way users do it today;

then a second run of each.  Wall time is the whole ``ansible-playbook`` process (both
playbooks end with the same small task that dumps the loop's registered results, which
is where the changed counts come from: the PLAY RECAP counts tasks, not loop items).
ratio = xl_channel / template wall time of the first run (< 1 means xl_channel is
faster).  On the second run xl_channel must report changed=0 for all N; the template's
count is printed beside it.  The two copies must end byte-identical (the template mirrors
the generator and puts the channel line where xl_channel does).  Nothing here asserts on
time.  Figures go to ``benchmarks/results/xl_channel.json``.

Each loop item is one module process (about 0.25 s for xl_channel; template runs stat and
copy, about 0.5 s), so 200 configs take about 5 minutes on 2 CPUs; ``--configs`` scales it.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

from testbed.ansible_run import make_collection_tree, playbook_argv, playbook_env

from .harness import BenchError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
CHANNEL_NAME = "org.xenchannel.provision.0"
SOCKET_DIR = "/run/xenchannel"
RUN_TIMEOUT = 600

# The whole config as users template it today; the generator below writes the same text
# without the channel line, so both copies start identical and should end identical.
TEMPLATE = """\
# {{ d.name }} - {{ d.role }} guest, owner {{ d.owner }}
# Managed by the ops team; ticket {{ d.ticket }}.
name = "{{ d.name }}"
type = "{{ d.type }}"
memory = {{ d.memory }}
maxmem = {{ d.maxmem }}
vcpus = {{ d.vcpus }}
{% if d.type == 'pv' %}
kernel = "/usr/lib/grub-xen/grub-x86_64-xen.bin"
{% endif %}

# Storage: root first, then data volumes
disk = [
{% for disk in d.disks %}
    "{{ disk }}",
{% endfor %}
]

# Network
vif = [ {% for vif in d.vifs %}"{{ vif }}"{{ ", " if not loop.last else "" }}{% endfor %} ]
channel = [ "connection=socket, name={{ channel_name }}, path={{ socket_dir }}/{{ d.name }}.sock" ]

on_poweroff = "destroy"
on_reboot = "restart"
on_crash = "restart"
"""

ROLES = ["web", "db", "cache", "build", "mail", "dns", "ci", "mon"]
OWNERS = ["alice", "bob", "carol", "dave", "erin"]


def _domains(count: int, seed: int = 1) -> List[Dict[str, Any]]:
    rng = random.Random(seed)
    domains = []
    for n in range(count):
        role = rng.choice(ROLES)
        name = f"{role}{n:03d}"
        memory = rng.choice([512, 1024, 2048, 4096, 8192])
        disks = [f"phy:/dev/vg0/{name}-root,xvda,w"]
        for index in range(rng.randint(0, 3)):
            letter = "bcd"[index]
            disks.append(f"phy:/dev/vg{rng.randint(0, 2)}/{name}-data{index},xvd{letter},w")
        vifs = []
        for index in range(rng.randint(1, 3)):
            mac = ":".join(f"{rng.randint(0, 255):02x}" for _ in range(3))
            vifs.append(f"mac=00:16:3e:{mac},bridge=xenbr{index},vifname={name}.{index}")
        domains.append(
            {
                "name": name,
                "role": role,
                "owner": rng.choice(OWNERS),
                "ticket": f"OPS-{rng.randint(1000, 9999)}",
                "type": rng.choice(["pv", "pvh", "hvm"]),
                "memory": memory,
                "maxmem": memory * 2,
                "vcpus": rng.choice([1, 2, 4, 8]),
                "disks": disks,
                "vifs": vifs,
            }
        )
    return domains


def _config(d: Dict[str, Any]) -> str:
    """The generator's text: TEMPLATE without its channel line."""
    kernel = 'kernel = "/usr/lib/grub-xen/grub-x86_64-xen.bin"\n' if d["type"] == "pv" else ""
    disks = "".join(f'    "{disk}",\n' for disk in d["disks"])
    vifs = ", ".join(f'"{vif}"' for vif in d["vifs"])
    return (
        f"# {d['name']} - {d['role']} guest, owner {d['owner']}\n"
        f"# Managed by the ops team; ticket {d['ticket']}.\n"
        f'name = "{d["name"]}"\n'
        f'type = "{d["type"]}"\n'
        f"memory = {d['memory']}\n"
        f"maxmem = {d['maxmem']}\n"
        f"vcpus = {d['vcpus']}\n"
        f"{kernel}\n"
        "# Storage: root first, then data volumes\n"
        f"disk = [\n{disks}]\n\n"
        "# Network\n"
        f"vif = [ {vifs} ]\n\n"
        'on_poweroff = "destroy"\n'
        'on_reboot = "restart"\n'
        'on_crash = "restart"\n'
    )


def _playbook(workdir: str, kind: str, confdir: str) -> str:
    if kind == "xl_channel":
        task = {
            "name": "add the channel",
            "xenchannel.provision.xl_channel": {
                "path": confdir + "/{{ d.name }}.cfg",
                "socket_dir": SOCKET_DIR,
                "channels": [
                    {
                        "name": CHANNEL_NAME,
                        "connection": "socket",
                        "path": SOCKET_DIR + "/{{ d.name }}.sock",
                    }
                ],
            },
        }
    else:
        task = {
            "name": "render the config",
            "ansible.builtin.template": {
                "src": os.path.join(workdir, "domain.cfg.j2"),
                "dest": confdir + "/{{ d.name }}.cfg",
                "mode": "0644",
            },
        }
    task.update(loop="{{ domains }}", loop_control={"loop_var": "d", "label": "{{ d.name }}"})
    task["register"] = "edit"
    dump = {
        "name": "dump changed flags",
        "ansible.builtin.copy": {
            "content": "{{ edit.results | map(attribute='changed') | list | to_json }}",
            "dest": os.path.join(workdir, f"{kind}-changed.json"),
            "mode": "0600",
        },
    }
    play = [
        {
            "hosts": "localhost",
            "gather_facts": False,
            "vars_files": [os.path.join(workdir, "domains.json")],
            "vars": {"channel_name": CHANNEL_NAME, "socket_dir": SOCKET_DIR},
            "tasks": [task, dump],
        }
    ]
    path = os.path.join(workdir, f"{kind}.yml")
    with open(path, "w") as handle:
        json.dump(play, handle)
    return path


def _run(workdir: str, collections: str, kind: str, playbook: str) -> Dict[str, Any]:
    # No xl on the PATH: xl_channel's running is "unknown", as on any non-Xen host.
    env = playbook_env(
        collections, workdir, PATH=os.path.dirname(sys.executable) + ":/usr/bin:/bin"
    )
    dump = os.path.join(workdir, f"{kind}-changed.json")
    if os.path.exists(dump):
        os.unlink(dump)
    command = playbook_argv(playbook)
    start = time.monotonic()
    try:
        proc = subprocess.run(
            command,
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"the {kind} playbook did not finish in {RUN_TIMEOUT} s") from exc
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise BenchError(
            f"the {kind} playbook failed (rc {proc.returncode}): "
            f"{(proc.stdout + proc.stderr).strip()[-600:]}"
        )
    with open(dump) as handle:
        flags = json.load(handle)
    return {"seconds": wall, "items": len(flags), "changed": sum(1 for f in flags if f)}


def run(configs: int = 200) -> Dict[str, Any]:
    """Section (e); prints its table and returns its figures."""
    started = time.monotonic()
    print(f"\n(e) adding a channel to {configs} xl domain configs: xl_channel vs template")
    print("    one ansible-playbook run each (localhost, connection local), then a second")
    top, remove_tree = make_collection_tree(prefix="xcb-xl-")
    try:
        domains = _domains(configs)
        with open(os.path.join(top, "domains.json"), "w") as handle:
            json.dump({"domains": domains}, handle)
        with open(os.path.join(top, "domain.cfg.j2"), "w") as handle:
            handle.write(TEMPLATE)
        dirs = {}
        for kind in ("xl_channel", "template"):
            dirs[kind] = os.path.join(top, kind + "-configs")
            os.makedirs(dirs[kind])
            for d in domains:
                with open(os.path.join(dirs[kind], d["name"] + ".cfg"), "w") as handle:
                    handle.write(_config(d))
        books = {kind: _playbook(top, kind, dirs[kind]) for kind in dirs}
        runs: Dict[str, List[Dict[str, Any]]] = {kind: [] for kind in dirs}
        for _ in (1, 2):
            for kind in dirs:
                runs[kind].append(_run(top, top, kind, books[kind]))
        identical = sum(
            1
            for d in domains
            if _read(dirs["xl_channel"], d["name"]) == _read(dirs["template"], d["name"])
        )
    finally:
        remove_tree()
    xl, tpl = runs["xl_channel"], runs["template"]
    figures: Dict[str, Any] = {
        "configs": configs,
        "xl_channel": {"first": xl[0], "second": xl[1]},
        "template": {"first": tpl[0], "second": tpl[1]},
        "ratio_first": xl[0]["seconds"] / tpl[0]["seconds"],
        "ratio_second": xl[1]["seconds"] / tpl[1]["seconds"],
        "xl_channel_second_changed_zero": xl[1]["changed"] == 0 and xl[1]["items"] == configs,
        "identical_files": identical,
    }
    print(f"    {'':12} {'1st run':>9} {'changed':>8} {'2nd run':>9} {'changed':>8}  per config")
    for kind, label in (("xl_channel", "xl_channel"), ("template", "template")):
        first, second = runs[kind]
        print(
            f"    {label:12} {first['seconds']:8.2f}s {first['changed']:4d}/{first['items']:<3d} "
            f"{second['seconds']:8.2f}s {second['changed']:4d}/{second['items']:<3d} "
            f"{first['seconds'] / configs * 1000:7.1f} ms"
        )
    print(
        f"    ratio xl_channel/template: {figures['ratio_first']:.2f} (1st run), "
        f"{figures['ratio_second']:.2f} (2nd run)"
    )
    verdict = "met" if figures["xl_channel_second_changed_zero"] else "NOT met"
    print(f"    xl_channel changed=0 for all {configs} on the 2nd run: {verdict}")
    print(f"    files byte-identical after both: {identical}/{configs}")
    figures["seconds"] = time.monotonic() - started
    print(f"    section (e) took {figures['seconds']:.1f} s", flush=True)
    return figures


def _read(directory: str, name: str) -> bytes:
    with open(os.path.join(directory, name + ".cfg"), "rb") as handle:
        return handle.read()


def write_results(figures: Dict[str, Any]) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, "xl_channel.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(figures, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.xl_channel_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--configs", type=int, default=200, help="domain configs (default 200)")
    args = parser.parse_args(argv)
    if args.configs < 1:
        parser.error("--configs must be at least 1")
    try:
        figures = run(args.configs)
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    path = write_results(figures)
    print(f"figures in {os.path.relpath(path, os.getcwd())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Running Ansible against this collection, for tests and benchmarks.

Ansible finds a collection only at ``<path>/ansible_collections/<namespace>/<name>``, so
the repository is linked there from a temporary directory, never a file in the
repository. Playbooks run on localhost with the venv's ansible-playbook and Python,
with Ansible's home, temporary directories and configuration kept out of the user's.
"""

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
PLAYBOOK = os.path.join(BIN, "ansible-playbook")
GALAXY = os.path.join(BIN, "ansible-galaxy")


def make_collection_tree(prefix: str = "xc-collections-") -> Tuple[str, Callable[[], None]]:
    """A collections path holding this repository as xenchannel.provision, and its remover."""
    top = tempfile.mkdtemp(prefix=prefix)
    link = os.path.join(top, "ansible_collections", "xenchannel", "provision")
    os.makedirs(os.path.dirname(link))
    os.symlink(ROOT, link)

    def remove() -> None:
        # The link first, so that nothing can ever walk into the repository.
        if os.path.islink(link):
            os.unlink(link)
        shutil.rmtree(top, ignore_errors=True)

    return top, remove


@contextlib.contextmanager
def collection_tree(prefix: str = "xc-collections-") -> Iterator[str]:
    top, remove = make_collection_tree(prefix)
    try:
        yield top
    finally:
        remove()


def playbook_env(collections: str, workdir: str, **extra: str) -> Dict[str, str]:
    """The environment for ansible-playbook: this collection, private dirs, no colour."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=collections,
        ANSIBLE_CONFIG=os.path.join(workdir, "none.cfg"),
        ANSIBLE_HOME=os.path.join(workdir, "ansible-home"),
        ANSIBLE_LOCAL_TEMP=os.path.join(workdir, "tmp"),
        ANSIBLE_REMOTE_TEMP=os.path.join(workdir, "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
    )
    env.update(extra)
    return env


def playbook_argv(path: str, *options: str) -> List[str]:
    """ansible-playbook on localhost, connection local, with the venv's Python as target."""
    return [
        PLAYBOOK,
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        *options,
        path,
    ]


def run_tasks(
    collections: str,
    workdir: str,
    tasks: List[Dict[str, Any]],
    *options: str,
    env: Dict[str, str],
    timeout: float = 120,
) -> "subprocess.CompletedProcess[str]":
    """Run ``tasks`` on localhost; each task's registered result is saved as JSON.

    ansible-core has no json stdout callback (that is ansible.posix's), so a last task
    writes ``{task name: registered result}`` to results.json, which ``saved_results``
    reads.
    """
    tasks = [dict(task, register=f"r{index}") for index, task in enumerate(tasks)]
    saved = ", ".join(f"{task['name']!r}: r{index}" for index, task in enumerate(tasks))
    save = {
        "name": "save results",
        "ansible.builtin.copy": {
            "content": "{{ {" + saved + "} | to_json }}",
            "dest": os.path.join(workdir, "results.json"),
            "mode": "0600",
        },
        "diff": False,
    }
    path = os.path.join(workdir, "play.yml")
    with open(path, "w") as handle:
        # JSON is YAML; no quoting surprises.
        json.dump([{"hosts": "localhost", "gather_facts": False, "tasks": [*tasks, save]}], handle)
    return subprocess.run(
        playbook_argv(path, *options),
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def saved_results(run: "subprocess.CompletedProcess[str]", workdir: str) -> Dict[str, Any]:
    """Each task's result by task name; the run must have succeeded."""
    assert run.returncode == 0, run.stdout + run.stderr
    with open(os.path.join(workdir, "results.json")) as handle:
        saved: Dict[str, Any] = json.load(handle)
    return saved


def build_collection(output_dir: str) -> str:
    """Build the collection tarball with the venv's ansible-galaxy; returns its path."""
    out = subprocess.run(
        [GALAXY, "collection", "build", "--output-path", output_dir, ROOT],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (tarball,) = glob.glob(os.path.join(output_dir, "xenchannel-provision-*.tar.gz"))
    return tarball

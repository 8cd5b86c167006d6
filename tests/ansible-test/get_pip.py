# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A stand-in for ansible-test's get-pip bootstrap script, which it cannot download here.

ansible-test fetches get-pip from ci-files.testing.ansible.com, a host this project's
machines cannot reach, unless a copy is cached at ~/.ansible/test/cache/get_pip_<ver>.py.
run.py puts this file there, beside a pip wheel it downloaded from PyPI. Like get-pip, it
runs pip from the wheel to install pip (and what else it is given) into the running
Python, which is a fresh virtual environment without pip.
"""

import glob
import os
import sys

# get-pip's own switches; pip install does not know them, and pip itself never installs
# setuptools or wheel unless asked, which is what they mean.
GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    wheels = sorted(glob.glob(os.path.join(here, "pip-*-py3-none-any.whl")))
    if not wheels:
        sys.exit(f"no pip wheel beside {here}; run tests/ansible-test/run.py, which downloads it")
    sys.path.insert(0, wheels[-1])
    from pip._internal.cli.main import main as pip_main  # noqa: PLC0415 - from the wheel

    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
    sys.exit(pip_main(["install", "--upgrade", "--force-reinstall", *args]))


if __name__ == "__main__":
    main()

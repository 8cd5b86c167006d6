"""``python -m xenchannel.dom0``: the dom0 agent's command line (see ``cli``)."""

import sys

from xenchannel.dom0.cli import main

if __name__ == "__main__":
    sys.exit(main())

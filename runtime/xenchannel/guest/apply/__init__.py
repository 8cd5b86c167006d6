"""What the in-guest agent applies, one module per step.

``files`` is the transaction every step is made of (temporary files, rename, rollback);
``hostname``, ``keys`` and ``network`` plan one step each from the bundle without
touching anything; ``script`` runs a ``#!`` user-data script once per instance.
docs/guest-agent.md describes the rules.

Standard library only; runs on Python 3.6 to 3.13.
"""

from .files import ApplyError, Step, commit, under, write_file

__all__ = ["ApplyError", "Step", "commit", "under", "write_file"]

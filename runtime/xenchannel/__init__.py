"""xenchannel runtime: the code that runs on dom0 and inside guests.

Standard library only.  ``protocol`` is imported by every party; ``dom0`` is the host
agent, ``guest`` the guest client library and the in-guest agent.
"""

__version__ = "0.1.0"

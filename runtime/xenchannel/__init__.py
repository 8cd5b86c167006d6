"""xenchannel runtime: the code that runs on dom0 and inside guests.

Standard library only.  ``protocol`` is imported by every party; ``dom0`` is the host
agent, ``guest`` the guest client library, ``simulator`` a stand-in for QEMU + hvc.
"""

__version__ = "0.1.0"

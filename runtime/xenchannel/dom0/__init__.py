"""The dom0 side of xenchannel: one agent process serving every domain of a host.

* ``store``  - the per-domain store the agent serves from (``<store>/<domain>/domain.json``)
* ``state``  - the per-domain records of what happened (``<state>/<domain>.json``)
* ``agent``  - the supervisor: one ``DomainLink`` (``link``) per domain of the store
* ``link``, ``connection``, ``outbox`` - a domain's link, one connect of it, its writes
* ``control`` - the control socket, server and client
* ``config`` - ``AgentConfig``, every setting and bound
* ``cli``    - ``python -m xenchannel.dom0 run | status | query``

Standard library only; runs on Python 3.8 and later (Debian bookworm's dom0 and newer).
This module also holds the one log-line format every part uses: logfmt,
``domain=NAME event=EVENT key=value ...``, on the logger ``xenchannel.dom0``.
"""

import json
import logging
from typing import Any

LOGGER_NAME = "xenchannel.dom0"
LOG = logging.getLogger(LOGGER_NAME)

# Characters that force a logfmt value into quotes.
_QUOTE_CHARS = frozenset(' "=\\')


def logfmt_value(value: Any) -> str:
    """One logfmt value: bare if safe, else a JSON string (quotes, escapes, no newlines).

    Guest-supplied text goes through here, so a guest cannot forge log lines.
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text and text.isprintable() and text.isascii() and not (_QUOTE_CHARS & set(text)):
        return text
    return json.dumps(text)


def logfmt(**fields: Any) -> str:
    return " ".join(f"{key}={logfmt_value(value)}" for key, value in fields.items())


def log_event(domain: str, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """One log line for one event of one domain (``domain="-"`` for the agent itself)."""
    if LOG.isEnabledFor(level):
        LOG.log(level, "%s", logfmt(domain=domain, event=event, **fields))

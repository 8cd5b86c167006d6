"""The agent's per-domain counters in the Prometheus text format, for node_exporter.

node_exporter's textfile collector reads ``*.prom`` files from one directory; a file must
be replaced atomically (written beside it, then renamed) so that it is never read half
written.  The agent writes ``metrics_file`` every ``metrics_interval`` seconds from its
state records (``counters`` and ``link``, see ``dom0/link.py``), and once more at
shutdown.  Nothing in it is secret: domain names, counts, error kinds.
"""

from typing import Any, Dict, Iterable, List, Tuple

from xenchannel.dom0.files import atomic_write

PREFIX = "xenchannel_"
# (counter in the record, metric, help) for the plain counters.
_TOTALS: Tuple[Tuple[str, str, str], ...] = (
    ("connects", "connects_total", "Connections the agent made to the domain's channel socket."),
    ("deliveries", "deliveries_total", "Bundles the guest verified and acknowledged."),
    (
        "log_lines_suppressed",
        "log_lines_suppressed_total",
        "Log lines the domain's traffic caused past its budget, counted instead of logged.",
    ),
    ("skipped_bytes", "skipped_bytes_total", "Bytes from the guest that were not frames."),
)
# (counter kept by reason, metric, label, help).
_BY_REASON: Tuple[Tuple[str, str, str, str], ...] = (
    ("refusals", "refusals_total", "code", "Guest requests refused, by error code."),
    (
        "dropped_requests",
        "dropped_requests_total",
        "reason",
        "Guest requests or their replies dropped rather than queued, by reason.",
    ),
)


def _label(value: Any) -> str:
    text = str(value)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _metric(name: str, kind: str, text: str) -> List[str]:
    return [f"# HELP {PREFIX}{name} {text}", f"# TYPE {PREFIX}{name} {kind}"]


def render(states: Iterable[Dict[str, Any]]) -> str:
    """The text format for the active domains among ``states`` (state records)."""
    active = sorted(
        (s for s in states if s.get("active", True) and s.get("domain")),
        key=lambda s: str(s["domain"]),
    )
    lines = _metric("domains", "gauge", "Domains in the store the agent serves.")
    lines.append(f"{PREFIX}domains {len(active)}")
    for key, name, text in _TOTALS:
        lines += _metric(name, "counter", text)
        for state in active:
            value = (state.get("counters") or {}).get(key, 0)
            lines.append(f'{PREFIX}{name}{{domain="{_label(state["domain"])}"}} {int(value)}')
    for key, name, label, text in _BY_REASON:
        lines += _metric(name, "counter", text)
        for state in active:
            by_reason = (state.get("counters") or {}).get(key) or {}
            for reason, value in sorted(by_reason.items()):
                lines.append(
                    f'{PREFIX}{name}{{domain="{_label(state["domain"])}",'
                    f'{label}="{_label(reason)}"}} {int(value)}'
                )
    lines += _metric("link_state", "gauge", "The link's run state (1 for the current one).")
    for state in active:
        if state.get("link"):
            lines.append(
                f'{PREFIX}link_state{{domain="{_label(state["domain"])}",'
                f'state="{_label(state["link"])}"}} 1'
            )
    lines += _metric("last_error_info", "gauge", "The kind of the domain's last error.")
    for state in active:
        kind = (state.get("counters") or {}).get("last_error_class")
        if kind:
            lines.append(
                f'{PREFIX}last_error_info{{domain="{_label(state["domain"])}",'
                f'class="{_label(kind)}"}} 1'
            )
    return "\n".join(lines) + "\n"


def write(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` (``render``'s), atomically, readable by
    node_exporter's user.  Rendered apart: the records it reads are the event loop's,
    and only the loop's thread may read them while the agent runs."""
    atomic_write(path, text.encode("utf-8"), sync=False, mode=0o644)

"""The counters in the Prometheus text format node_exporter's textfile collector reads."""

import os
import re
import stat
from typing import Any, Dict

import pytest

from xenchannel.dom0 import metrics
from xenchannel.dom0.config import AgentConfig, AgentError
from xenchannel.dom0.state import new_state

# One sample: name{label="value",...} integer (the text format's grammar, as far as used).
LABEL = r'[a-z_]+="([^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf"^xenchannel_[a-z_]+(\{{{LABEL}(,{LABEL})*\}})? \d+$")


def record(domain: str, **fields: Any) -> Dict[str, Any]:
    state = new_state(domain)
    state.update(fields)
    return state


def test_render_counts_every_active_domain_in_the_text_format() -> None:
    states = [
        record(
            "web1",
            link="serving",
            counters={
                "connects": 2,
                "deliveries": 1,
                "refusals": {"busy": 3, "unknown-session": 1},
                "dropped_requests": {"paced": 7},
                "log_lines_suppressed": 40,
                "last_error_class": "refused:busy",
            },
        ),
        record("web2", link="waiting"),  # nothing counted yet
        record("gone", active=False, counters={"connects": 9}),
    ]
    text = metrics.render(states)
    lines = text.splitlines()
    for line in lines:
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or SAMPLE.match(line), line
    assert "xenchannel_domains 2" in lines
    assert 'xenchannel_connects_total{domain="web1"} 2' in lines
    assert 'xenchannel_connects_total{domain="web2"} 0' in lines
    assert 'xenchannel_refusals_total{domain="web1",code="busy"} 3' in lines
    assert 'xenchannel_dropped_requests_total{domain="web1",reason="paced"} 7' in lines
    assert 'xenchannel_log_lines_suppressed_total{domain="web1"} 40' in lines
    assert 'xenchannel_link_state{domain="web2",state="waiting"} 1' in lines
    assert 'xenchannel_last_error_info{domain="web1",class="refused:busy"} 1' in lines
    assert "gone" not in text  # left the store
    # Each metric is declared once, before its samples.
    types = [line.split()[2] for line in lines if line.startswith("# TYPE ")]
    assert len(types) == len(set(types))


def test_label_values_are_escaped() -> None:
    text = metrics.render([record("web1", counters={"refusals": {'a"b\\c\nd': 1}})])
    assert 'code="a\\"b\\\\c\\nd"} 1' in text


def test_write_replaces_the_file_atomically_readable_by_node_exporter(tmp_path: Any) -> None:
    path = str(tmp_path / "xenchannel.prom")
    old = os.umask(0o077)  # the file's mode must not depend on the agent's umask
    try:
        metrics.write(path, metrics.render([record("web1")]))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(tmp_path) == ["xenchannel.prom"]  # no temporary left beside it
    with open(path, encoding="utf-8") as handle:
        assert "xenchannel_domains 1" in handle.read()


@pytest.mark.parametrize("value", ["relative.prom", "/var/lib/x/xenchannel.txt"])
def test_metrics_file_must_be_absolute_and_end_in_prom(value: str) -> None:
    config = AgentConfig("/s", "/t", "/r", None, metrics_file=value)
    with pytest.raises(AgentError, match=r"metrics_file must be an absolute path ending in \.prom"):
        config.validate()

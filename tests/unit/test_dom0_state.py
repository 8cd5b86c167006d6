"""Tests of the dom0 agent's state records: format, summary, coalesced writes."""

import asyncio
import json
import os
import shutil
import stat
import tempfile
import time
from typing import Any, Dict, Iterator, List

import pytest

from xenchannel.dom0.state import (
    STATE_FIELDS,
    StateRecorder,
    load_state,
    load_states,
    new_state,
    now_iso,
    save_state,
    summarise,
)


@pytest.fixture
def state_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="xcsd", dir="/tmp")
    yield os.path.join(path, "state")
    shutil.rmtree(path, ignore_errors=True)


def record(**fields: Any) -> Dict[str, Any]:
    state = new_state("web1", "/run/xenchannel/web1.sock")
    state.update(fields)
    return state


def test_now_iso_is_utc_with_milliseconds() -> None:
    value = now_iso()
    assert value.endswith("Z")
    assert len(value) == len("2024-05-01T12:00:00.123Z")


def test_save_and_load_round_trip(state_dir: str) -> None:
    state = record(connected=True, connected_at=now_iso())
    save_state(state_dir, state)
    path = os.path.join(state_dir, "web1.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    loaded = load_state(state_dir, "web1")
    assert loaded == state
    assert set(loaded) == set(STATE_FIELDS)
    # Nested records that never happened are absent on disk, not null.
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    assert "status" not in raw and "delivered" not in raw
    assert raw["connected"] is True and raw["disconnected_at"] is None
    assert load_state(state_dir, "other") is None


def test_load_states_fills_missing_fields_and_skips_junk(state_dir: str) -> None:
    os.makedirs(state_dir)
    with open(os.path.join(state_dir, "old.json"), "w", encoding="utf-8") as handle:
        json.dump({"domain": "ignored", "connected": True, "delivered": "junk"}, handle)
    with open(os.path.join(state_dir, "broken.json"), "w", encoding="utf-8") as handle:
        handle.write("{not json")
    with open(os.path.join(state_dir, "deep.json"), "w", encoding="utf-8") as handle:
        handle.write("[" * 100000 + "]" * 100000)
    with open(os.path.join(state_dir, ".tmp.json"), "w", encoding="utf-8") as handle:
        handle.write("{}")
    problems: List[str] = []
    states = load_states(state_dir, problems)
    assert list(states) == ["old"]
    assert states["old"]["domain"] == "old"  # the file name wins
    assert states["old"]["delivered"] is None
    assert states["old"]["active"] is True
    assert len(problems) == 2
    assert "broken.json is not a valid state record" in problems[0]
    assert "deep.json is not a valid state record" in problems[1]
    assert load_states(os.path.join(state_dir, "missing")) == {}


def test_summarise_delivered_yes_stale_no() -> None:
    bundle = {"sha256": "b" * 64, "instance_id": "iid-2", "size": 10}
    yes = record(bundle=bundle, delivered={"sha256": "b" * 64, "count": 3})
    stale = record(bundle=bundle, delivered={"sha256": "a" * 64, "count": 1})
    never = record(bundle=bundle)
    assert summarise(yes)["delivered"] == "yes"
    assert summarise(yes)["delivered_count"] == 3
    assert summarise(stale)["delivered"] == "stale"
    assert summarise(never)["delivered"] == "no"
    assert summarise(never)["delivered_count"] == 0
    # A bundle that became invalid: what was delivered is no longer current.
    assert summarise(record(delivered={"sha256": "a" * 64}))["delivered"] == "stale"


def test_summarise_other_columns() -> None:
    empty = summarise(new_state("web1"))
    assert empty == {
        "domain": "web1",
        "active": True,
        "connected": "no",
        "handshake": "no",
        "delivered": "no",
        "delivered_count": 0,
        "status": "-",
        "ready": "no",
        "address": "-",
        "hostname": "-",
        "instance_id": "-",
        "last_error": "-",
        "updated_at": None,
    }
    full = summarise(
        record(
            connected=True,
            handshake={"at": now_iso(), "version": 1, "guest_agent": "g/1"},
            bundle={"sha256": "x", "instance_id": "iid-1", "size": 1},
            status={"state": "applied", "mismatch": True},
            last_error={"at": now_iso(), "message": "boom"},
        )
    )
    assert full["connected"] == "yes"
    assert full["handshake"] == "v1"
    assert full["status"] == "applied (mismatch)"
    assert full["instance_id"] == "iid-1"
    assert full["last_error"] == "boom"
    assert summarise(record(active=False, connected=True))["connected"] == "removed"


def test_recorder_without_a_loop_writes_at_once(state_dir: str) -> None:
    recorder = StateRecorder(state_dir)
    recorder.restore()
    recorder.update("web1", connected=True)
    assert load_state(state_dir, "web1")["connected"] is True
    with pytest.raises(KeyError):
        recorder.update("web1", nonsense=1)


def test_recorder_coalesces_a_burst_and_flushes_within_the_bound(
    state_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: List[float] = []
    original = StateRecorder._write_file

    def counting(self: StateRecorder, path: str, data: bytes) -> None:
        writes.append(time.monotonic())
        original(self, path, data)

    monkeypatch.setattr(StateRecorder, "_write_file", counting)

    async def scenario() -> None:
        recorder = StateRecorder(state_dir, min_interval=0.2)
        recorder.restore()
        started = time.monotonic()
        for i in range(100):
            recorder.update("web1", delivered={"count": i})
            await asyncio.sleep(0.005)  # a burst lasting about 0.5 s
        last_change = time.monotonic()
        # The last change reaches the disk within the bound, without a flush.
        while time.monotonic() - last_change < 1.0:
            state = load_state(state_dir, "web1")
            if state and state["delivered"] == {"count": 99}:
                break
            await asyncio.sleep(0.01)
        assert load_state(state_dir, "web1")["delivered"] == {"count": 99}
        assert time.monotonic() - last_change < 0.5
        elapsed = time.monotonic() - started
        # At most one write per 0.2 s (plus the first, immediate one).
        assert len(writes) <= elapsed / 0.2 + 2
        gaps = [b - a for a, b in zip(writes, writes[1:])]
        assert all(gap >= 0.19 for gap in gaps)
        recorder.update("web1", connected=True)
        await recorder.flush()
        assert load_state(state_dir, "web1")["connected"] is True
        assert recorder.pending == 0

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_recorder_keeps_many_domains_apart(state_dir: str) -> None:
    async def scenario() -> None:
        recorder = StateRecorder(state_dir)
        recorder.restore()
        for i in range(200):
            recorder.update(f"vm{i}", connected=True, socket=f"/run/x/{i}.sock")
        await recorder.flush()
        states = load_states(state_dir)
        assert len(states) == 200
        assert states["vm7"]["socket"] == "/run/x/7.sock"

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_recorder_survives_write_failures(state_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    failures = {"left": 1}
    original = StateRecorder._write_file

    def flaky(self: StateRecorder, path: str, data: bytes) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(28, "No space left on device")
        original(self, path, data)

    monkeypatch.setattr(StateRecorder, "_write_file", flaky)

    async def scenario() -> None:
        recorder = StateRecorder(state_dir, min_interval=0.05)
        recorder.restore()
        recorder.update("web1", connected=True)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and load_state(state_dir, "web1") is None:
            await asyncio.sleep(0.02)
        assert load_state(state_dir, "web1")["connected"] is True

    asyncio.run(asyncio.wait_for(scenario(), 10))

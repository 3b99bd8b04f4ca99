"""state.json: strict versioned JSON, bounded reads, atomic writes, quarantine of corrupt files."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from edgeseal.device_agent.state import (
    MAX_STATE_BYTES,
    AgentState,
    StateStore,
    Trial,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


def _store(tmp_path: Path) -> StateStore:
    store = StateStore(tmp_path, now=lambda: NOW)
    store.create_layout()
    return store


def test_layout_and_round_trip(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for sub in ("tuf", "downloads", "slots/a", "slots/b"):
        assert (tmp_path / sub).is_dir()
    assert store.load() == (None, None)
    state = AgentState(
        active="b",
        previous="a",
        trial=Trial("b", "2026-03-01T12:00:00Z"),
        boot_attempts=2,
        last_update={"outcome": "committed"},
        last_error=None,
    )
    store.save(state)
    loaded, report = store.load()
    assert report is None and loaded == state
    assert loaded.last_update == {"outcome": "committed"}
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o640
    assert not list(tmp_path.glob(".state.json.*"))  # no temp file left behind


GOOD = AgentState(active="a").to_json()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not valid JSON"),
        (b'{"version": 1, "active": "a"', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (json.dumps({**GOOD, "version": 2}).encode(), "unsupported version 2"),
        (json.dumps({**GOOD, "extra": 1}).encode(), "unknown ['extra']"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "trial"}).encode(), "missing"),
        (json.dumps({**GOOD, "active": "c"}).encode(), "active must be one of"),
        (json.dumps({**GOOD, "boot_attempts": -1}).encode(), "boot_attempts"),
        (json.dumps({**GOOD, "trial": {"slot": "b", "started_at": "x"}}).encode(), "trial.slot"),
        (json.dumps([1]).encode(), "JSON object"),
        (b" " * (MAX_STATE_BYTES + 1), "larger than"),
    ],
)
def test_corrupt_state_is_quarantined(tmp_path: Path, content: bytes, reason: str) -> None:
    store = _store(tmp_path)
    (tmp_path / "state.json").write_bytes(content)
    state, report = store.load()
    assert state is None and report is not None
    assert reason in report.reason
    assert not (tmp_path / "state.json").exists()
    assert report.moved_to == tmp_path / "state.json.corrupt-20260301T120000Z"
    assert report.moved_to.read_bytes() == content  # evidence kept, byte for byte
    # A second corrupt file in the same second gets its own name.
    (tmp_path / "state.json").write_bytes(content)
    _, second = store.load()
    assert second is not None and second.moved_to is not None
    assert second.moved_to.name == "state.json.corrupt-20260301T120000Z-2"

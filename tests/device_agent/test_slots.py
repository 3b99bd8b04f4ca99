"""slot.json: strict parsing; a corrupt one is quarantined and the slot reads bad."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from edgeseal.device_agent.slots import Slot, SlotInfo, other_slot

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
INFO = SlotInfo(
    name="b",
    status="good",
    family="detector",
    model_version=7,
    target_path="detector/7/detector-7.esm",
    sealed_sha256="ab" * 32,
    plaintext_digest="cd" * 32,
    digest_alg="blake3",
    installed_at="2026-03-01T12:00:00Z",
)


def test_round_trip_and_empty(tmp_path: Path) -> None:
    slot = Slot(tmp_path, "b")
    assert slot.read_info(NOW) == (SlotInfo("b"), None)
    slot.write_info(INFO)
    assert slot.read_info(NOW) == (INFO, None)
    doc = json.loads(slot.info_path.read_text())
    assert doc["version"] == 1 and doc["status"] == "good" and doc["model_version"] == 7
    slot.write_info(SlotInfo("b", "bad"))
    assert slot.read_info(NOW)[0] == SlotInfo("b", "bad")
    assert other_slot("a") == "b" and other_slot("b") == "a"
    with pytest.raises(ValueError):
        Slot(tmp_path, "c")
    with pytest.raises(ValueError):
        slot.write_info(SlotInfo("a"))


GOOD = INFO.to_json()


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({**GOOD, "status": "great"}, "status 'great'"),
        ({**GOOD, "version": 0}, "unsupported version 0"),
        ({**GOOD, "sealed_sha256": "AB" * 32}, "sealed_sha256"),
        ({**GOOD, "model_version": -1}, "model_version"),
        ({**GOOD, "model_version": True}, "model_version"),
        ({**GOOD, "digest_alg": "md5"}, "digest_alg"),
        ({**GOOD, "family": ""}, "family"),
        ({**GOOD, "reason": "x"}, "unknown ['reason']"),
        (dict.fromkeys(GOOD) | {"version": 1, "status": "good"}, "must describe its model"),
    ],
)
def test_corrupt_slot_json_is_quarantined_and_reads_bad(
    tmp_path: Path, doc: dict[str, object], reason: str
) -> None:
    slot = Slot(tmp_path, "b")
    slot.dir.mkdir(parents=True)
    slot.info_path.write_text(json.dumps(doc))
    info, report = slot.read_info(NOW)
    assert info == SlotInfo("b", "bad")
    assert report is not None and reason in report.reason
    assert report.moved_to == slot.dir / "slot.json.corrupt-20260301T120000Z"
    assert not slot.info_path.exists()
    assert report.to_json()["moved_to"].endswith("slot.json.corrupt-20260301T120000Z")

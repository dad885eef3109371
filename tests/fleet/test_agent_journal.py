"""The journal: durable appends, a torn last line ignored, compaction that loses nothing recent."""

from __future__ import annotations

from edgeforge.fleet.agent._files import Journal, atomic_write_json, read_json


def test_torn_last_line_is_ignored_and_healed(tmp_path):
    journal = Journal(tmp_path / "journal.log")
    journal.append({"state": "downloading", "version": 2})
    with open(journal.path, "a") as handle:
        handle.write('{"state": "stag')  # what a power cut mid-write leaves
    assert journal.last()["state"] == "downloading"
    journal.append({"state": "idle"})
    assert [e["state"] for e in journal.entries()] == ["downloading", "idle"]


def test_compaction_keeps_the_last_entries(tmp_path):
    journal = Journal(tmp_path / "journal.log")
    journal.max_bytes, journal.keep = 4096, 10
    for i in range(200):
        journal.append({"state": "idle", "n": i})
    entries = journal.entries()
    assert 10 <= len(entries) < 200 and entries[-1]["n"] == 199
    assert journal.path.stat().st_size <= 4096 + 200


def test_atomic_write_replaces_whole(tmp_path):
    path = tmp_path / "active.json"
    atomic_write_json(path, {"slot": "a"})
    atomic_write_json(path, {"slot": "b"})
    assert read_json(path) == {"slot": "b"}
    assert [p.name for p in tmp_path.iterdir()] == ["active.json"]  # no temporary left

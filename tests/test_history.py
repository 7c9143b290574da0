"""The use-history store and its state file (no Docker needed)."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest

from fsm_cleaner import history
from fsm_cleaner.history import History, Usage


def test_record_counts_uses_and_keeps_the_latest_time() -> None:
    h = History()
    h.record("a", 100.0)
    h.record("a", 300.0)
    h.record("a", 200.0)  # arrived late: the last use stays 300
    h.record("a", 350.0, counts=False)  # a container exit: time only
    h.record("b", 50.0, counts=False)
    assert h.snapshot() == {"a": Usage(350.0, 3), "b": Usage(50.0, 0)}


def test_snapshot_is_a_copy() -> None:
    h = History()
    h.record("a", 1.0)
    snap = h.snapshot()
    h.record("b", 2.0)
    assert set(snap) == {"a"}


def test_forget_keeps_only_present_images() -> None:
    h = History({"a": Usage(1, 1), "b": Usage(2, 1), "c": Usage(3, 1)})
    assert sorted(h.forget(["b", "x"])) == ["a", "c"]
    assert h.snapshot() == {"b": Usage(2, 1)}


@pytest.mark.parametrize(
    ("known", "images", "containers", "expected"),
    [
        # never used: its creation time, no use
        ({}, {"i": 100.0}, [], {"i": Usage(100.0, 0)}),
        # containers: the latest of them, one use each; a container of another image does not matter
        ({}, {"i": 100.0}, [("i", 150.0), ("i", 120.0), ("j", 900.0)], {"i": Usage(150.0, 2)}),
        # a container older than the image's creation (re-tagged id) cannot make it older
        ({}, {"i": 100.0}, [("i", 50.0)], {"i": Usage(100.0, 1)}),
        # a future time (clock skew) is clamped to now
        ({}, {"i": 5000.0}, [], {"i": Usage(1000.0, 0)}),
        # images the record knows keep their record
        ({"i": Usage(10.0, 7)}, {"i": 100.0, "k": 20.0}, [("i", 500.0)],
         {"i": Usage(10.0, 7), "k": Usage(20.0, 0)}),
    ],
)
def test_seed_starts_unknown_images_from_docker(known, images, containers, expected) -> None:
    h = History(known)
    seeded = h.seed(images, containers, now=1000.0)
    assert h.snapshot() == expected
    assert sorted(seeded) == sorted(set(images) - set(known))


def test_the_store_is_bounded_by_dropping_the_least_recently_used() -> None:
    h = History(max_entries=3)
    for i, t in enumerate([5, 1, 4, 2, 3]):
        h.record(f"i{i}", float(t))
    assert sorted(h.snapshot()) == ["i0", "i2", "i4"]  # last used at 5, 4, 3
    h.seed({"new": 10.0, "old": 0.5}, [], now=100.0)
    assert sorted(h.snapshot()) == ["i0", "i2", "new"]


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    h = History(cursor_ns=1_796_121_425_203_074_963)
    h.record("sha256:" + "a" * 64, 1796121425.25)
    h.record("sha256:" + "a" * 64, 1796121426.5, counts=False)
    assert history.save(h, tmp_path / "state")  # the directory is created
    back = history.load(tmp_path / "state")
    assert back.snapshot() == h.snapshot()
    assert back.cursor_ns == h.cursor_ns
    data = json.loads((tmp_path / "state" / history.FILE_NAME).read_text())
    assert data["version"] == history.VERSION
    assert [p.name for p in (tmp_path / "state").iterdir()] == [history.FILE_NAME]  # no temp left


def test_save_only_if_changed(tmp_path: Path) -> None:
    h = History()
    h.record("a", 1.0)
    assert history.save(h, tmp_path, only_if_changed=True)
    assert not history.save(h, tmp_path, only_if_changed=True)
    h.advance(5)
    assert history.save(h, tmp_path, only_if_changed=True)


def test_a_failed_save_leaves_the_old_file_and_retries_later(tmp_path: Path, monkeypatch) -> None:
    h = History()
    h.record("a", 1.0)
    history.save(h, tmp_path)
    h.record("b", 2.0)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", disk_full)
        with pytest.raises(OSError, match="No space"):
            history.save(h, tmp_path, only_if_changed=True)
    assert set(history.load(tmp_path).snapshot()) == {"a"}  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == [history.FILE_NAME]
    assert history.save(h, tmp_path, only_if_changed=True)  # still marked as changed
    assert set(history.load(tmp_path).snapshot()) == {"a", "b"}


def test_missing_file_starts_empty(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, "fsm_cleaner.history"):
        h = history.load(tmp_path / "nowhere")
    assert h.snapshot() == {} and h.cursor_ns is None
    assert "no use history" in caplog.text


def _valid(tmp_path: Path) -> bytes:
    h = History(cursor_ns=7)
    h.record("sha256:" + "b" * 64, 100.0)
    history.save(h, tmp_path)
    return (tmp_path / history.FILE_NAME).read_bytes()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda raw: raw[: len(raw) // 2], "Unterminated|Expecting"),  # truncated by a crash
        (lambda raw: b"", "Expecting value"),
        (lambda raw: b"\xff\xfe garbage", "codec|Expecting"),
        (lambda raw: b"[1, 2]", "not a JSON object"),
        (lambda raw: raw.replace(b'"version":1', b'"version":2'), "version 2"),
        (lambda raw: raw.replace(b"[100.0,1]", b"[100.0,-1]"), "bad entry"),
        (lambda raw: raw.replace(b"[100.0,1]", b'{"t":1}'), "bad entry"),
        (lambda raw: raw.replace(b'"cursor_ns":7', b'"cursor_ns":"7"'), "wrong field types"),
        (lambda raw: b" " * (history.MAX_FILE_BYTES + 1), "larger than"),
    ],
)
def test_an_unreadable_file_is_rebuilt_with_a_warning(tmp_path: Path, caplog, damage, why) -> None:
    path = tmp_path / history.FILE_NAME
    path.write_bytes(damage(_valid(tmp_path)))
    with caplog.at_level(logging.WARNING, "fsm_cleaner.history"):
        h = history.load(tmp_path)
    assert h.snapshot() == {} and h.cursor_ns is None
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "rebuilding" in record.getMessage()
    assert re.search(why, record.getMessage())
    h.record("c", 1.0)
    history.save(h, tmp_path)  # the next save replaces the bad file
    assert set(history.load(tmp_path).snapshot()) == {"c"}

"""A JSON-lines log torn by a full disk: the next append and every read still work."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess

import pytest

from taglens.atomic import append_jsonl, read_jsonl


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KB tmpfs where the machine allows it (root), else None."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount") or os.environ.get("TAGLENS_NO_TMPFS"):
        yield None
        return
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=65536", "tmpfs", str(disk)], capture_output=True
        ).returncode
        == 0
    )
    yield disk if mounted else None
    if mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _torn_log(tiny_disk, tmp_path):
    """A log with one whole row and a torn second one, torn for real by ENOSPC when possible."""
    log = (tiny_disk or tmp_path) / "promotions.jsonl"
    append_jsonl(log, {"version": "1", "decision": "champion"})
    big = {"version": "2", "note": "x" * 200_000}
    if tiny_disk is not None:
        with pytest.raises(OSError, match="No space left"):
            append_jsonl(log, big)  # the disk fills up half-way through the line
    else:  # what a crash mid-write leaves: a prefix of the line, no newline
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(big)[:30_000])
    assert not log.read_bytes().endswith(b"\n")
    return log


def test_a_torn_last_line_is_skipped_on_read_with_a_warning(tiny_disk, tmp_path, caplog):
    log = _torn_log(tiny_disk, tmp_path)
    with caplog.at_level(logging.WARNING, logger="taglens.atomic"):
        rows = read_jsonl(log)
    assert rows == [{"version": "1", "decision": "champion"}]
    assert "torn last line" in caplog.text and "promotions.jsonl:2" in caplog.text


def test_appending_after_a_torn_line_cuts_it_and_keeps_the_file_readable(
    tiny_disk, tmp_path, caplog
):
    # Given a log whose last append was cut short by a full disk (space is free again once the
    # torn line is gone: it held what was left)
    log = _torn_log(tiny_disk, tmp_path)

    # When two more rows are appended
    with caplog.at_level(logging.WARNING, logger="taglens.atomic"):
        append_jsonl(log, {"version": "3", "decision": "champion"})
        append_jsonl(log, {"version": "4", "decision": "kept"})

    # Then the torn line was cut (once, with a warning) and every whole row reads back
    assert [row["version"] for row in read_jsonl(log)] == ["1", "3", "4"]
    assert caplog.text.count("ended with a torn line") == 1
    lines = log.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["version"] for line in lines] == ["1", "3", "4"]

"""Atomic writes leave the old file or the new one, never a torn one."""

import json

import pytest

from taglens.atomic import (
    append_jsonl,
    atomic_open,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_jsonl,
    read_jsonl,
)


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as handle:
            handle.write('{"version": 2, "half')
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_creates_parent_directories(tmp_path):
    target = tmp_path / "a" / "b" / "rows.jsonl"
    atomic_write_jsonl(target, [{"n": 1}, {"n": 2}])
    assert read_jsonl(target) == [{"n": 1}, {"n": 2}]


def test_read_skips_a_torn_last_line(tmp_path):
    target = tmp_path / "log.jsonl"
    append_jsonl(target, {"n": 1})
    append_jsonl(target, {"n": 2})
    with open(target, "a", encoding="utf-8") as handle:
        handle.write('{"n": 3, "cut')  # what a kill mid-append leaves
    assert read_jsonl(target) == [{"n": 1}, {"n": 2}]


def test_read_refuses_corruption_before_the_last_line(tmp_path):
    target = tmp_path / "log.jsonl"
    target.write_text('{"n": 1}\nnot json\n{"n": 3}\n')
    with pytest.raises(ValueError, match=r"log\.jsonl:2 is not valid JSON"):
        read_jsonl(target)


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    expected = 0o666 & ~os.umask(0o022)
    os.umask(0o666 & ~expected)  # put the umask back
    target = atomic_write_json(tmp_path / "report.json", {})
    assert target.stat().st_mode & 0o777 == expected
    assert expected & 0o044  # group/others can read, unlike mkstemp's 0600


def test_missing_file_reads_as_empty(tmp_path):
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_csv_has_the_columns_in_order_blanks_for_missing_keys_and_no_extras(tmp_path):
    target = tmp_path / "t" / "rows.csv"
    rows = [{"b": 2, "a": "x,y", "extra": 9}, {"a": 1}]
    assert atomic_write_csv(target, iter(rows), ("a", "b")) == target
    assert target.read_bytes() == b'a,b\n"x,y",2\n1,\n'


def test_failed_csv_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "rows.csv"
    atomic_write_csv(target, [{"a": 1}], ("a",))

    def rows():
        yield {"a": 2}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write_csv(target, rows(), ("a",))
    assert target.read_text() == "a\n1\n" and [p.name for p in tmp_path.iterdir()] == ["rows.csv"]

"""The lineage record: DVC's hashes when the lock has them, an md5 of the files otherwise."""

from __future__ import annotations

import hashlib

import yaml

from taglens import lineage


def _lock(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {
                    "scrape": {"outs": [{"path": "data/raw", "hash": "md5", "md5": "aa.dir"}]},
                    "clean": {
                        "outs": [{"path": "data/clean/", "md5": "cc.dir"}]
                    },  # older lock: md5 only
                    "train": {
                        "deps": [
                            {"path": "data/raw", "hash": "md5", "md5": "aa.dir"},
                            {"path": "params.yaml"},
                        ],  # params entries carry no hash
                        "outs": [{"path": "models", "hash": "md5", "md5": "mm.dir"}],
                    },
                },
            }
        )
    )
    return lock


def test_out_hashes_cover_every_stage_and_both_lock_formats(tmp_path):
    assert lineage.out_hashes(_lock(tmp_path)) == {
        "data/raw": "aa.dir",
        "data/clean": "cc.dir",
        "models": "mm.dir",
    }
    assert lineage.out_hashes(tmp_path / "absent.lock") == {}


def test_data_record_prefers_dvc_lock_hashes_and_falls_back_to_md5(tmp_path):
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "posts.jsonl").write_text("{}\n")
    (tmp_path / "data" / "clean").mkdir()
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  clean:\n    outs:\n    - path: data/clean\n"
        "      md5: 0123456789abcdef.dir\n"
    )
    data = tmp_path / "data"
    record = lineage.data_record(
        tmp_path, {"raw": data / "raw", "clean": data / "clean", "features": data / "features"}
    )
    raw_md5 = hashlib.md5(b"raw/posts.jsonl{}\n").hexdigest()
    joined = f"clean:0123456789abcdef.dir\nraw:{raw_md5}"
    assert (
        record
        == {
            "data.clean": "0123456789abcdef.dir",
            "data.raw": raw_md5,  # absent features: left out
            "data_version": hashlib.sha256(joined.encode()).hexdigest()[:12],
        }
    )


def test_tags_round_trip_under_one_prefix():
    record = {"data.raw": "aa.dir", "data_version": "0123456789ab", "image_size": "32"}
    tags = lineage.as_tags(record)
    assert tags == {
        "lineage.data.raw": "aa.dir",
        "lineage.data_version": "0123456789ab",
        "lineage.image_size": "32",
    }
    assert lineage.from_tags({**tags, "stage": "train", "metric.accuracy": "1"}) == record


def test_record_joins_the_model_identity_and_leaves_out_unknowns(tmp_path):
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "manifest.csv").write_text("id\n")
    record = lineage.record(
        tmp_path,
        {"clean": tmp_path / "clean"},
        {"backbone": "vgg19", "image_size": 32, "experiment": None},
    )
    assert record["backbone"] == "vgg19" and record["image_size"] == "32"
    assert "experiment" not in record and set(record) == {
        "backbone",
        "image_size",
        "data.clean",
        "data_version",
    }
    assert lineage.data_record(tmp_path, {"raw": tmp_path / "absent"}) == {}

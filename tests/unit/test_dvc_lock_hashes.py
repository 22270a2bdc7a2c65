"""Reading DVC's recorded hashes: outputs of every stage, dependencies of one stage."""

import yaml

from taglens.lifecycle.dvc_lock import dep_hashes, out_hashes


def _lock(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "scrape": {"outs": [{"path": "data/raw", "hash": "md5", "md5": "aa.dir"}]},
        "clean": {"outs": [{"path": "data/clean/", "md5": "cc.dir"}]},  # older lock: md5 only
        "train": {"deps": [{"path": "data/raw", "hash": "md5", "md5": "aa.dir"},
                           {"path": "stages/train.py", "hash": "md5", "md5": "tt"},
                           {"path": "params.yaml"}],  # params entries carry no hash
                  "outs": [{"path": "models", "hash": "md5", "md5": "mm.dir"}]},
    }}))  # fmt: skip
    return lock


def test_out_hashes_cover_every_stage_and_both_lock_formats(tmp_path):
    assert out_hashes(_lock(tmp_path)) == {
        "data/raw": "aa.dir", "data/clean": "cc.dir", "models": "mm.dir",
    }  # fmt: skip


def test_dep_hashes_of_one_stage(tmp_path):
    lock = _lock(tmp_path)
    assert dep_hashes(lock, "train") == {"data/raw": "aa.dir", "stages/train.py": "tt"}
    assert dep_hashes(lock, "evaluate") == {}


def test_no_lock_yet_means_no_hashes(tmp_path):
    assert out_hashes(tmp_path / "dvc.lock") == {}
    assert dep_hashes(tmp_path / "dvc.lock", "train") == {}

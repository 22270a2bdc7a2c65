"""Every reader of a stage's file, given no file, names the stage to run, in one error type."""

from __future__ import annotations

import pytest

from taglens import artifacts
from taglens.data.posts import read_raw_posts
from taglens.errors import TaglensError
from taglens.features import split
from taglens.lifecycle.evaluation import read_metrics as gate_read_metrics
from taglens.training import splits

# (reader, the artifact it reads): each called on an empty folder
READERS = [
    (read_raw_posts, artifacts.POSTS),
    (artifacts.read_feature_meta, artifacts.FEATURE_META),
    (split.read_manifest, artifacts.MANIFEST),
    (lambda folder: splits.read_manifest(folder, ("cat",)), artifacts.MANIFEST),
    (splits.manifest_classes, artifacts.MANIFEST),
    (lambda folder: splits.load_splits(folder, None, ()), artifacts.FEATURES),
    (artifacts.read_model_info, artifacts.MODEL_INFO),
    (lambda folder: gate_read_metrics(folder / "metrics.json"), artifacts.METRICS),
]


@pytest.mark.parametrize(
    ("reader", "artifact"),
    READERS,
    ids=[f"{a.stage}-{a.name}-{i}" for i, (_, a) in enumerate(READERS)],
)
def test_a_missing_artifact_names_the_stage_that_writes_it(tmp_path, reader, artifact):
    with pytest.raises(artifacts.MissingArtifactError) as caught:
        reader(tmp_path)
    error = caught.value
    assert isinstance(error, TaglensError) and isinstance(error, FileNotFoundError)
    assert error.stage == artifact.stage and error.path == tmp_path / artifact.name
    assert str(error) == (
        f"no {tmp_path / artifact.name}: run the {artifact.stage} stage first "
        f"(`dvc repro {artifact.stage}`)"
    )


def test_each_artifact_sits_in_the_dvc_yaml_layout():
    assert artifacts.POSTS.default.as_posix() == "data/raw/posts.jsonl"
    assert artifacts.MODEL_INFO.default.as_posix() == "models/model_info.json"
    assert artifacts.PER_CLASS.default.as_posix() == "reports/evaluate/per_class.json"
    assert artifacts.MODEL_INFO.at("elsewhere").as_posix() == "elsewhere/model_info.json"


def test_empty_posts_and_non_object_json_are_refused_with_the_stage_to_rerun(tmp_path):
    (tmp_path / "posts.jsonl").write_text("")
    with pytest.raises(TaglensError, match="holds no posts: scrape accepted no images"):
        read_raw_posts(tmp_path)
    (tmp_path / "model_info.json").write_text("[1, 2]")
    with pytest.raises(TaglensError, match="must hold a JSON object: re-run the train stage"):
        artifacts.read_model_info(tmp_path)

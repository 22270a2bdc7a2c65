"""The scrape stage: demo and folder sources end to end through run() and main()."""

from __future__ import annotations

import io
import json

import pytest
import yaml
from PIL import Image

from stages import scrape
from taglens.atomic import read_jsonl
from taglens.data.posts import read_posts
from tests.helpers.params import tiny_params_raw


def run_scrape(params, **paths):
    """The stage's run() with the sections it reads."""
    return scrape.run(params.base, params.scrape, params.ingest, **paths)


def with_scrape(params, **changes):
    return params.model_copy(update={"scrape": params.scrape.model_copy(update=changes)})


def test_demo_source_writes_the_raw_layout(tiny_params, tmp_path):
    report = run_scrape(tiny_params, out=tmp_path / "raw", reports=tmp_path / "reports")
    posts = read_posts(tmp_path / "raw" / "posts.jsonl")
    expected = tiny_params.scrape.demo.images_per_class * len(tiny_params.base.classes)
    assert report.accepted + len(report.duplicates) == expected
    assert len(posts) == report.accepted
    assert {p.source for p in posts} == {"demo"}
    assert all((tmp_path / "raw" / p.image).is_file() for p in posts)
    assert sum(1 for p in posts if p.hashtags) == len(posts)
    saved = json.loads((tmp_path / "reports" / "ingest.json").read_text())
    assert saved["accepted"] == report.accepted and saved["rejected"] == 0
    assert read_jsonl(tmp_path / "raw" / "rejected.jsonl") == []
    classes = len({post.label for post in posts})
    assert report.summary.startswith(f"accepted {report.accepted} images in {classes} classes")


def jpeg(color, size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def params_file(tmp_path):
    """A tiny params file pointing scrape at a small folder of photos."""
    photos = tmp_path / "photos"
    for index, cls in enumerate(["food", "food", "art", "weird"]):
        (photos / cls).mkdir(parents=True, exist_ok=True)
        (photos / cls / f"{index}.jpg").write_bytes(jpeg((index * 60, 90, 20)))
    (photos / "art" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    (photos / "posts.jsonl").write_text(json.dumps({"image": "food/0.jpg", "caption": "#Yum"}))
    raw = tiny_params_raw()
    raw["scrape"]["source"] = "folder"
    raw["scrape"]["folder"] = str(photos)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_main_folder_source(params_file, tmp_path, capsys):
    code = scrape.main(
        [
            "--params",
            str(params_file),
            "--out",
            str(tmp_path / "raw"),
            "--reports",
            str(tmp_path / "rep"),
        ]
    )
    assert code == 0
    posts = read_posts(tmp_path / "raw" / "posts.jsonl")
    assert sorted(p.id for p in posts) == ["art/2.jpg", "food/0.jpg", "food/1.jpg"]
    assert next(p for p in posts if p.id == "food/0.jpg").hashtags == ("yum",)
    report = json.loads((tmp_path / "rep" / "ingest.json").read_text())
    assert report["accepted"] == 3
    assert report["rejected_by_reason"] == {"not_image": 1}
    assert any("weird" in note for note in report["notes"])
    assert "rejected 1 (not_image 1)" in capsys.readouterr().out


def test_main_turns_user_errors_into_messages(params_file, tmp_path, capsys):
    raw = yaml.safe_load(params_file.read_text())
    raw["scrape"]["folder"] = str(tmp_path / "missing")
    params_file.write_text(yaml.safe_dump(raw))
    assert scrape.main(["--params", str(params_file), "--out", str(tmp_path / "raw")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_nothing_accepted_is_an_error(tiny_params, tmp_path):
    photos = tmp_path / "photos" / "food"
    photos.mkdir(parents=True)
    (photos / "a.jpg").write_bytes(b"")
    params = with_scrape(tiny_params, source="folder", folder=str(photos.parent))
    with pytest.raises(ValueError, match="no image was accepted from the folder source"):
        run_scrape(params, out=tmp_path / "raw", reports=tmp_path / "rep")
    assert read_jsonl(tmp_path / "raw" / "rejected.jsonl")[0]["reason"].startswith("empty")


def test_instagram_without_session_says_how_to_log_in(tiny_params, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TAGLENS_INSTAGRAM_SESSION", raising=False)
    monkeypatch.setenv("TAGLENS_OWNER_SALT", "pepper")
    params = with_scrape(tiny_params, source="instagram")
    with pytest.raises(ValueError, match=r"instaloader --login USER"):
        run_scrape(params, out=tmp_path / "raw", reports=tmp_path / "rep")
    params_path = tmp_path / "p.yaml"
    raw = tiny_params_raw()
    raw["scrape"]["source"] = "instagram"
    params_path.write_text(yaml.safe_dump(raw))
    code = scrape.main(
        [
            "--params",
            str(params_path),
            "--out",
            str(tmp_path / "raw"),
            "--session-file",
            str(tmp_path / "session-nobody"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "session-nobody does not exist" in err and "instaloader --login USER" in err
    assert not (tmp_path / "raw" / "posts.jsonl").exists()

"""The folder source: DIR/<class>/<files>, configured classes only, optional metadata."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from taglens.data.sources.folder import FolderSource
from taglens.errors import TaglensError


def jpeg(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    for name in ["food/b.jpg", "food/a.jpg", "art/x.png", "holiday/y.jpg", "food/.DS_Store"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(jpeg((len(name) * 9, 30, 60)))
    (root / "food" / "nested").mkdir()
    return root


def test_yields_configured_classes_in_class_then_name_order(photos):
    source = FolderSource(photos, ["art", "food", "nature"])
    items = list(source)
    assert [(i.id, i.label) for i in items] == [
        ("art/x.png", "art"),
        ("food/a.jpg", "food"),
        ("food/b.jpg", "food"),
    ]
    assert items[0].data == (photos / "art/x.png").read_bytes()
    assert items[0].origin == str(photos / "art/x.png")
    assert source.skipped_folders == ["holiday"]
    assert source.missing_classes == ["nature"]
    assert any("holiday" in note for note in source.notes)
    assert len(source) == 3


def test_metadata_is_merged_by_relative_path(photos):
    rows = [
        {
            "image": "food/a.jpg",
            "caption": "Noodles #Food",
            "likes": 12,
            "comments": 3,
            "date": "2024-05-01T10:00:00+02:00",
        },
        {"image": "food/gone.jpg", "caption": "deleted"},
    ]
    (photos / "posts.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    source = FolderSource(photos, ["food"])
    items = {item.id: item for item in source}
    assert items["food/a.jpg"].caption == "Noodles #Food"
    assert (items["food/a.jpg"].likes, items["food/a.jpg"].comments) == (12, 3)
    assert items["food/a.jpg"].date == "2024-05-01T08:00:00"  # converted to UTC
    assert items["food/b.jpg"].caption == "" and items["food/b.jpg"].likes is None
    assert any("1 lines of posts.jsonl" in note for note in source.notes)


def test_bad_metadata_names_file_line_and_field(photos):
    (photos / "posts.jsonl").write_text(
        json.dumps({"image": "food/a.jpg"})
        + "\n"
        + json.dumps({"image": "food/b.jpg", "likes": -1})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"posts.jsonl:2: likes: .*greater than or equal to 0"):
        FolderSource(photos, ["food"])
    (photos / "posts.jsonl").write_text(json.dumps({"image": "food/a.jpg", "colour": "red"}) + "\n")
    with pytest.raises(ValueError, match=r"posts.jsonl:1: colour"):
        FolderSource(photos, ["food"])
    (photos / "posts.jsonl").write_text(json.dumps({"image": "food/a.jpg", "date": "May"}) + "\n")
    with pytest.raises(ValueError, match=r"posts.jsonl:1: date: .*not an ISO 8601 date: 'May'"):
        FolderSource(photos, ["food"])


def test_missing_dir_and_no_class_folder_are_clear_errors(tmp_path, photos):
    with pytest.raises(FileNotFoundError, match="scrape.folder .* is not a directory"):
        FolderSource(tmp_path / "nope", ["food"])
    with pytest.raises(ValueError, match=r"no folder named after a class in base.classes \(sports"):
        FolderSource(photos, ["sports"])


def test_without_configured_classes_every_folder_is_a_class(photos):
    # Given a user's own folders and base.classes: null
    source = FolderSource(photos, None)
    # Then the classes are the folder names, in name order, and nothing is skipped
    assert source.classes == ["art", "food", "holiday"]
    assert [(i.id, i.label) for i in source] == [
        ("art/x.png", "art"),
        ("food/a.jpg", "food"),
        ("food/b.jpg", "food"),
        ("holiday/y.jpg", "holiday"),
    ]
    assert source.skipped_folders == [] and source.notes == []


def test_without_configured_classes_one_folder_is_not_enough(tmp_path):
    (tmp_path / "only" / "cats").mkdir(parents=True)
    with pytest.raises(TaglensError, match=r"1 class folder\(s\) \(cats\).*at least two"):
        FolderSource(tmp_path / "only", None)

"""posts.jsonl files from elsewhere: paths out of the data folder, and hashes that do not match."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from PIL import Image

from taglens.atomic import read_jsonl
from taglens.data.ingest import ingest
from taglens.data.posts import read_posts
from taglens.data.sources.folder import FolderSource
from tests.helpers.params import tiny_params

PARAMS = tiny_params()
ESCAPES = [
    "../secret.jpg",
    "/etc/passwd",
    "flowers/../../secret.jpg",
    "C:\\photos\\a.jpg",
    "flowers\\..\\..\\a.jpg",
]


def _jpeg(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), color).save(buffer, "JPEG")
    return buffer.getvalue()


def _folder(tmp_path, meta: list[dict]):
    root = tmp_path / "source"
    (root / "flowers").mkdir(parents=True)
    for i in range(2):
        (root / "flowers" / f"{i}.jpg").write_bytes(_jpeg((40 * i, 90, 10)))
    (tmp_path / "secret.jpg").write_bytes(_jpeg((1, 2, 3)))
    (root / "posts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in meta))
    return root


@pytest.mark.parametrize("image", ESCAPES)
def test_a_source_posts_file_naming_a_path_outside_the_folder_is_refused(tmp_path, image):
    root = _folder(tmp_path, [{"image": "flowers/0.jpg"}, {"image": image, "caption": "#x"}])
    with pytest.raises(ValueError, match=r"posts.jsonl:2: image: .*without '\.\.'"):
        FolderSource(root, PARAMS.base.classes)


@pytest.mark.parametrize("image", ESCAPES)
def test_a_raw_posts_file_naming_a_path_outside_the_folder_is_refused(tmp_path, image):
    row = {
        "id": "p1",
        "label": "food",
        "image": image,
        "sha256": "a" * 64,
        "width": 32,
        "height": 32,
        "source": "folder",
    }
    path = tmp_path / "posts.jsonl"
    path.write_text(
        json.dumps({**row, "image": "images/" + "a" * 64 + ".jpg"}) + "\n" + json.dumps(row) + "\n"
    )
    with pytest.raises(ValueError, match=r"posts.jsonl:2: image: .*without '\.\.'"):
        read_posts(path)


def test_a_file_that_does_not_match_its_stated_sha256_is_a_rejected_row(tmp_path):
    # Given metadata stating the hash of each file, and one file replaced since
    good = hashlib.sha256(_jpeg((0, 90, 10))).hexdigest()
    stale = hashlib.sha256(b"the photo that was there before").hexdigest()
    root = _folder(
        tmp_path,
        [
            {"image": "flowers/0.jpg", "sha256": good, "caption": "#a"},
            {"image": "flowers/1.jpg", "sha256": stale, "caption": "#b"},
        ],
    )

    # When the folder is ingested
    out = tmp_path / "raw"
    report = ingest(
        FolderSource(root, PARAMS.base.classes), PARAMS.ingest, out=out, source="folder"
    )

    # Then the matching file is accepted and the other is one rejected row with the reason
    assert report.accepted == 1 and dict(report.rejected) == {"sha256_mismatch": 1}
    rejected = read_jsonl(out / "rejected.jsonl")
    assert [row["path"].rsplit("/", 2)[-2:] for row in rejected] == [["flowers", "1.jpg"]]
    assert rejected[0]["reason"].startswith("sha256_mismatch: the file's bytes do not match")
    assert [post.caption for post in read_posts(out / "posts.jsonl")] == ["#a"]

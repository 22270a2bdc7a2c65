"""Batch predict: input listing, streaming scoring with error rows, resumable writers, merge."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from taglens.serving.batch.inputs import list_inputs, plan_shards, shard
from taglens.serving.batch.outputs import OutputWriter, read_rows
from taglens.serving.batch.scoring import merge_outputs, predict_to_file
from taglens.serving.model_ref import ModelRef
from tests.helpers.pixel_recorder import PixelRecorder

MODEL = ModelRef("taglens", "3")
FORMATS = ["csv", "jsonl", "parquet"]


class FakePredictor:
    """Deterministic stand-in for HashtagPredictor: the class is decided by mean brightness."""

    image_size = 8

    def __init__(self, fail_after_batches: int | None = None):
        self.seen = 0
        self.batches = 0
        self.fail_after = fail_after_batches

    def predict_pixels(self, batch):
        assert batch.dtype == np.float32 and batch.shape[1:] == (8, 8, 3)
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.batches += 1
        self.seen += len(batch)
        out = []
        for image in batch:
            mean = float(image.mean())
            top = "bright" if mean > 127 else "dark"
            out.append(
                {
                    "top_class": top,
                    "top_probability": round(mean / 255, 6),
                    "probabilities": {},
                    "hashtags": [
                        {"tag": top, "score": 0.9, "posts": 3, "engagement": 1.0},
                        {"tag": "photo", "score": 0.1, "posts": 9, "engagement": 0.5},
                    ],
                }
            )
        return out


def _images(folder: Path, count: int, bad_at: int | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:03d}.{'png' if i % 2 else 'jpg'}"
        if i == bad_at:
            path.write_bytes(b"this is not an image at all")
        else:
            shade = (i * 37) % 256
            Image.new("RGB", (20 + i, 16), (shade, shade, shade)).save(path)
        paths.append(path)
    return paths


def _score(paths, output, predictor=None, **kwargs):
    return predict_to_file(
        paths, output, predictor or FakePredictor(), MODEL, batch_size=4, progress=False, **kwargs
    )


def test_list_inputs_folder_glob_list_and_single(tmp_path):
    paths = _images(tmp_path / "photos" / "sub", 3) + _images(tmp_path / "photos", 2)
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    listed = list_inputs(tmp_path / "photos")
    assert sorted(listed) == sorted(paths) and len(listed) == 5
    assert list_inputs(str(tmp_path / "photos" / "**" / "*.png")) == sorted(
        p for p in paths if p.suffix == ".png"
    )
    listing = tmp_path / "photos" / "list.txt"
    listing.write_text("# my photos\nsub/img000.jpg\n\n" + f"{paths[3]}\nmissing.jpg\n")
    assert list_inputs(listing) == [
        tmp_path / "photos" / "sub" / "img000.jpg",
        paths[3],
        tmp_path / "photos" / "missing.jpg",
    ]
    assert list_inputs(paths[0]) == [paths[0]]


def test_list_inputs_errors_are_actionable(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder, an image, a list file or a glob"):
        list_inputs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        list_inputs(tmp_path / "empty")


def test_a_job_plans_its_shards_and_files_beside_the_output():
    paths = [f"/in/{i}.jpg" for i in range(5)]
    plan = plan_shards(paths, "/out/scores.csv", "models:/taglens/3", 2)
    assert plan.shards == [paths[0:2], paths[2:4], paths[4:]]
    prefix, job = plan.dir.rsplit("/", 1)
    assert prefix == "/out/scores.csv.shards" and len(job) == 12
    assert plan.files == [f"{plan.dir}/shard-{n:06d}.jsonl" for n in range(3)]
    # the same job resumes in the same folder; another model or shard size does not
    assert plan_shards(paths, "/out/scores.csv", "models:/taglens/3", 2).dir == plan.dir
    assert plan_shards(paths, "/out/scores.csv", "models:/taglens/4", 2).dir != plan.dir
    assert plan_shards(paths, "/out/scores.csv", "models:/taglens/3", 3).dir != plan.dir
    with pytest.raises(ValueError, match="shard_size"):
        plan_shards(paths, "/out/scores.csv", "models:/taglens/3", 0)


def test_shard_keeps_every_path_once():
    paths = [Path(f"{i}.jpg") for i in range(10)]
    shards = shard(paths, 4)
    assert [len(s) for s in shards] == [4, 4, 2]
    assert sum(shards, []) == paths
    with pytest.raises(ValueError, match="shard_size"):
        shard(paths, 0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_file_mid_way_is_an_error_row_and_rest_is_scored(tmp_path, fmt):
    paths = _images(tmp_path / "in", 9, bad_at=4)
    missing = tmp_path / "in" / "gone.jpg"
    out = tmp_path / f"out.{fmt}"
    predictor = FakePredictor()
    report = _score([*paths, missing], out, predictor)
    rows = list(read_rows(out))
    assert [r["path"] for r in rows] == [str(p) for p in [*paths, missing]]
    assert (report.scored, report.errors, report.skipped, report.total) == (8, 2, 0, 10)
    assert predictor.seen == 8
    bad, gone = rows[4], rows[9]
    assert (
        bad["error"]
        == "refused before decoding: not an image in an allowed format (JPEG, "
        "PNG, GIF, BMP, WebP or TIFF)"
        and bad["top_class"] is None
    )
    assert bad["sha256"] == hashlib.sha256(paths[4].read_bytes()).hexdigest()
    assert gone["error"].startswith("cannot read file") and gone["hashtags"] == []
    good = [r for i, r in enumerate(rows) if i not in (4, 9)]
    assert all(r["error"] is None for r in good)
    assert [r["sha256"] for r in good] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for i, p in enumerate(paths) if i != 4
    ]
    assert good[0]["hashtags"] == [{"tag": "dark", "score": 0.9}, {"tag": "photo", "score": 0.1}]
    assert {(r["model_name"], r["model_version"]) for r in rows} == {("taglens", "3")}
    assert not (tmp_path / f"out.{fmt}.parts").exists()


def test_csv_serializes_hashtags_as_json(tmp_path):
    _score(_images(tmp_path / "in", 2), tmp_path / "out.csv")
    with open(tmp_path / "out.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    assert list(records[0]) == [
        "path",
        "sha256",
        "hashtags",
        "top_class",
        "top_probability",
        "model_name",
        "model_version",
        "error",
    ]
    assert json.loads(records[0]["hashtags"]) == [
        {"tag": "dark", "score": 0.9},
        {"tag": "photo", "score": 0.1},
    ]
    assert records[0]["error"] == "" and float(records[1]["top_probability"]) > 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_after_interruption_scores_only_what_is_missing(tmp_path, fmt):
    paths = _images(tmp_path / "in", 14, bad_at=2)
    reference = tmp_path / f"ref.{fmt}"
    _score(paths, reference)
    out = tmp_path / f"out.{fmt}"
    with pytest.raises(KeyboardInterrupt):
        _score(paths, out, FakePredictor(fail_after_batches=2), part_rows=1)
    partial = list(OutputWriter(out).existing_rows())
    assert len(partial) == 9  # two batches of 4 images, plus the bad file's error row
    second = FakePredictor()
    report = _score(paths, out, second)
    assert (report.skipped, report.scored, second.seen) == (9, 5, 5)
    assert list(read_rows(out)) == list(read_rows(reference))
    again = FakePredictor()
    report = _score([*paths, tmp_path / "gone.jpg"], out, again)
    assert (report.skipped, report.errors, again.seen) == (14, 1, 0)
    report = _score([*paths, tmp_path / "gone.jpg"], out, again)  # idempotent, errors included
    assert (report.skipped, report.errors, len(list(read_rows(out)))) == (15, 0, 15)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_torn_last_line_from_a_killed_run_is_cut(tmp_path, fmt):
    paths = _images(tmp_path / "in", 5)
    out = tmp_path / f"out.{fmt}"
    _score(paths[:3], out)
    with open(out, "a") as handle:
        handle.write('{"path": "half' if fmt == "jsonl" else "/x/half,abc")
    report = _score(paths, out)
    rows = list(read_rows(out))
    assert report.skipped == 3 and [r["path"] for r in rows] == [str(p) for p in paths]


def test_other_model_version_is_scored_again(tmp_path):
    paths = _images(tmp_path / "in", 3)
    out = tmp_path / "out.jsonl"
    _score(paths, out)
    report = predict_to_file(
        paths, out, FakePredictor(), ModelRef("taglens", "4"), batch_size=4, progress=False
    )
    rows = list(read_rows(out))
    assert report.scored == 3 and [r["model_version"] for r in rows] == ["3"] * 3 + ["4"] * 3


def test_csv_with_foreign_columns_is_refused(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a batch predict output"):
        _score(_images(tmp_path / "in", 1), out)


def test_unknown_output_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.csv, \.jsonl, \.parquet"):
        _score(_images(tmp_path / "in", 1), tmp_path / "out.xlsx")


@pytest.mark.parametrize("fmt", FORMATS)
def test_merge_of_shards_loses_and_duplicates_nothing(tmp_path, fmt):
    paths = _images(tmp_path / "in", 10, bad_at=7)
    parts = []
    for number, chunk in enumerate(shard(paths, 4)):
        part = tmp_path / f"shard-{number}.jsonl"
        _score(chunk, part)
        parts.append(part)
    reference = tmp_path / f"ref.{fmt}"
    _score(paths, reference)
    out = tmp_path / f"out.{fmt}"
    assert merge_outputs(parts, out, MODEL) == 10
    assert merge_outputs(parts, out, MODEL) == 0  # a re-run merge adds nothing twice
    assert list(read_rows(out)) == list(read_rows(reference))


def test_a_tiff_and_a_paletted_bmp_are_scored_with_the_pixels_pillow_reads(tmp_path):
    # Given one photo as PNG; as a TIFF stored sideways (its orientation tag shows it upright),
    # which TensorFlow cannot read; as a paletted BMP, whose colours TensorFlow reads wrongly; a
    # TIFF whose pixels are cut short; and the folder they are in
    rng = np.random.default_rng(0)
    photo = Image.fromarray((rng.random((24, 16, 3)) * 255).astype(np.uint8)).quantize(64)
    photo = photo.convert("RGB")  # 64 colours: the BMP's palette holds them exactly
    folder = tmp_path / "inbox"
    folder.mkdir()
    photo.save(folder / "a.png")
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # turn 90 degrees clockwise to show it
    photo.transpose(Image.Transpose.ROTATE_90).save(folder / "b.tiff", exif=exif)
    photo.quantize(64).save(folder / "c.bmp")
    photo.save(folder / "d.tif")
    (folder / "d.tif").write_bytes((folder / "d.tif").read_bytes()[:400])

    # When batch predict scores the folder
    paths = list_inputs(folder)
    predictor = PixelRecorder()
    _score(paths, tmp_path / "out.jsonl", predictor)
    rows = list(read_rows(tmp_path / "out.jsonl"))

    # Then all are listed; the TIFF and the BMP are scored with the PNG's very pixels and their
    # own files' hashes, and the cut TIFF is an error row that says why
    assert [p.name for p in paths] == ["a.png", "b.tiff", "c.bmp", "d.tif"]
    assert [r["error"] or "" for r in rows[:3]] == ["", "", ""]
    assert rows[1]["sha256"] == hashlib.sha256((folder / "b.tiff").read_bytes()).hexdigest()
    assert len(predictor.pixels) == 3
    assert np.array_equal(predictor.pixels[1], predictor.pixels[0])
    assert np.array_equal(predictor.pixels[2], predictor.pixels[0])
    assert (
        rows[3]["error"].startswith("not a decodable image: ") and "truncated" in rows[3]["error"]
    )
    assert rows[3]["top_class"] is None


def test_transparent_pixels_are_scored_on_white_as_the_page_and_training_see_them(tmp_path):
    # Given photos whose lower half is transparent, storing black there (as editors often do):
    # an RGBA PNG, an RGBA WebP (lossless) and a GIF with a transparent palette entry; and the
    # same photos put on white, as ingest, the page and the pyfunc decode them, saved as RGB PNG
    rng = np.random.default_rng(1)
    colours = (rng.random((16, 16, 3)) * 200 + 40).astype(np.uint8)
    colours[8:] = 0
    alpha = np.full((16, 16), 255, np.uint8)
    alpha[8:] = 0
    rgba = Image.fromarray(np.dstack([colours, alpha]), "RGBA")
    folder = tmp_path / "inbox"
    folder.mkdir()
    rgba.save(folder / "a.png")
    rgba.save(folder / "b.webp", lossless=True)
    paletted = Image.fromarray(colours).quantize(32)
    key = int(np.asarray(paletted)[15, 0])  # the palette entry of the black half
    paletted.save(folder / "c.gif", transparency=key)
    on_white = tmp_path / "on_white"
    on_white.mkdir()
    white = colours.copy()
    white[8:] = 255
    Image.fromarray(white).save(on_white / "a.png")
    gif_on_white = np.asarray(Image.open(folder / "c.gif").convert("RGBA")).copy()
    gif_on_white[gif_on_white[..., 3] == 0, :3] = 255
    Image.fromarray(gif_on_white[..., :3]).save(on_white / "c.png")

    # When batch predict scores both folders
    seen = PixelRecorder()
    _score(list_inputs(folder), tmp_path / "out.jsonl", seen)
    reference = PixelRecorder()
    _score(list_inputs(on_white), tmp_path / "reference.jsonl", reference)

    # Then every transparent photo is scored with the pixels of its version on white
    assert [row["error"] for row in read_rows(tmp_path / "out.jsonl")] == [None] * 3
    assert len(seen.pixels) == 3 and len(reference.pixels) == 2
    assert np.array_equal(seen.pixels[0], reference.pixels[0])  # PNG
    assert np.array_equal(seen.pixels[1], reference.pixels[0])  # WebP, lossless
    assert np.array_equal(seen.pixels[2], reference.pixels[1])  # GIF
    assert seen.pixels[0][-1].min() > 254  # the transparent half is white, not black


def test_a_photo_that_fails_only_while_it_is_read_is_scored_by_the_next_run(tmp_path, monkeypatch):
    from taglens.serving.batch import scoring

    # Given three photos, one of which fails in the pipeline once (still being copied in: its
    # header unreadable then) and reads well when the job looks at it again
    paths = _images(tmp_path / "inbox", 3)
    flaky = {str(paths[1])}
    real_check = scoring.check_header

    def check_once_failing(path, max_pixels):
        if str(path) in flaky:
            flaky.discard(str(path))
            raise ValueError("unreadable image header: truncated")
        return real_check(path, max_pixels)

    monkeypatch.setattr(scoring, "check_header", check_once_failing)
    out = tmp_path / "out.jsonl"
    # When the job runs, and runs again
    first = _score(paths, out)
    first_rows = list(read_rows(out))
    second = _score(paths, out)
    rows = list(read_rows(out))
    # Then the first run says why, without the file's hash (a hash would mark it done) ...
    assert (first.scored, first.errors) == (2, 1)
    [failed] = [row for row in first_rows if row["error"]]
    assert failed["path"] == str(paths[1]) and failed["sha256"] == ""
    assert "the next run retries it" in failed["error"]
    # ... and the second scores that photo and skips the two scored ones
    assert (second.scored, second.skipped, second.errors) == (1, 2, 0)
    assert sorted(row["path"] for row in rows if not row["error"]) == sorted(map(str, paths))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_file_name_that_is_not_utf8_is_scored_and_resumed_like_any(tmp_path, suffix):
    import os

    # Given a folder with a photo whose name is Latin-1 bytes (a Windows share, an old camera)
    folder = tmp_path / "inbox"
    paths = _images(folder, 2)
    latin1 = os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png")
    Image.new("RGB", (20, 16), (90, 30, 200)).save(latin1, format="PNG")
    listed = list_inputs(folder)
    assert len(listed) == 3
    out = tmp_path / f"out{suffix}"
    # When the job scores it, and runs again
    first = _score(listed, out)
    again = _score(listed, out)
    # Then every photo is scored, the odd name is held with its byte escaped, and the re-run
    # recognises all three
    rows = list(read_rows(out))
    assert (first.scored, first.errors) == (3, 0) and (again.scored, again.skipped) == (0, 3)
    names = sorted(Path(row["path"]).name for row in rows)
    assert names == sorted([paths[0].name, paths[1].name, "caf\\xe9.png"])
    assert all(not row["error"] for row in rows)


def test_shard_paths_reach_the_dask_subflow_as_json_and_come_back_exactly():
    import os

    from flows.predict import _score_shards
    from taglens.serving.batch.inputs import param_path, path_param

    # Given shards holding a Latin-1 name (a str with a lone surrogate), a space and a '%'
    odd = os.fsdecode(b"/in/caf\xe9 100%.png")
    shards = [["/in/a.jpg", odd], ["/in/ü.png"]]

    def sent(parts):  # as the Prefect client sends a flow run's parameters to its API
        body = _score_shards.serialize_parameters({"shards": parts})
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    # Then the raw names cannot be sent, the quoted ones can, and each comes back exactly
    with pytest.raises(UnicodeEncodeError):
        sent(shards)
    quoted = [[path_param(path) for path in part] for part in shards]
    assert json.loads(sent(quoted))["shards"] == quoted
    assert [[param_path(text) for text in part] for part in quoted] == shards

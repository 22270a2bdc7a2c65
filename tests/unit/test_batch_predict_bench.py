"""The batch predict benchmark's report (pure formatting) and its memory probe."""

from __future__ import annotations

from bench.predict import _rss_mb, to_markdown


def test_markdown_has_ratios_and_memory_rows():
    result = {
        "cpus": 2,
        "loadavg_start": 1.0,
        "loadavg_end": 2.0,
        "image_size": 224,
        "batch_size": 32,
        "images": 1000,
        "backbone": "mobilenet",
        "engine": "openvino",
        "photo_side": 640,
        "command_seconds": {"featurize": [30.0, 28.0], "predict": [31.0, 29.5]},
        "featurize_img_s": 1000 / 28.0,
        "predict_img_s": 1000 / 29.5,
        "predict_over_featurize": 28.0 / 29.5,
        "rss_size": 64,
        "rss_engine": "openvino",
        "command_cpu_seconds": {"featurize": [20.0, 19.0], "predict": [19.5, 20.0]},
        "predict_over_featurize_cpu": 19.0 / 19.5,
        "predict_over_featurize_by_repeat": [0.97, 0.95],
        "rss_format": "parquet",
        "rss_ratio": 1.02,
        "rss": [
            {
                "images": 1000,
                "img_s": 300.0,
                "loaded_rss_mb": 700,
                "job_peak_rss_mb": 750,
                "peak_rss_mb": 760,
            },
            {
                "images": 10000,
                "img_s": 400.0,
                "loaded_rss_mb": 701,
                "job_peak_rss_mb": 765,
                "peak_rss_mb": 770,
            },
        ],
    }
    text = to_markdown(result)
    assert "`featurize.engine: openvino`, 1000 flowers photos re-encoded as 640x640 JPEGs" in text
    assert (
        "| `python -m stages.featurize` (empty feature store) | 30.0, 28.0 | 35.7 | **1.00** "
        "| 20.0, 19.0 | **1.00** |"
    ) in text
    assert (
        "| `python -m stages.predict` (Parquet output) | 31.0, 29.5 | 33.9 | **0.95** "
        "| 19.5, 20.0 | **0.97** |"
    ) in text
    assert "within each repeat (the two commands back to back): 0.97, 0.95; median 0.96." in text
    assert "| 10000 | 701 | 765 | 770 | 400.0 |" in text
    assert "largest / smallest peak during the job: 1.02" in text


def test_markdown_gives_featurize_over_batch_predict_against_its_target():
    result = {
        "cpus": 2,
        "loadavg_start": 1.0,
        "loadavg_end": 2.0,
        "image_size": 224,
        "batch_size": 32,
        "images": 800,
        "engine": "openvino",
        "photo_side": 640,
        "command_seconds": {"featurize": [20.0], "predict": [19.0]},
        "command_cpu_seconds": {"featurize": [30.0], "predict": [29.1]},
        "featurize_img_s": 40.0,
        "predict_img_s": 800 / 19.0,
        "predict_over_featurize": 20.0 / 19.0,
        "predict_over_featurize_cpu": 30.0 / 29.1,
        "featurize_over_predict": 19.0 / 20.0,
        "featurize_over_predict_cpu": 29.1 / 30.0,
        "views": ["flip", "colour"],
    }
    text = to_markdown(result)
    assert (
        "Featurize (views: flip, colour) over batch predict: **0.95** by wall time "
        "(target >= 0.9), 0.97 per CPU-second."
    ) in text


def test_rss_probe_reads_this_process():
    assert 10 < _rss_mb() < 100_000


def test_photos_are_re_encoded_at_640_px_as_a_raw_directory(flowers_dir, tmp_path, monkeypatch):
    import hashlib

    from PIL import Image

    import bench.predict as bench_predict
    from taglens.data.posts import POSTS_FILE, read_posts

    monkeypatch.setattr(bench_predict, "FLOWERS", flowers_dir)
    paths = bench_predict.reencode_photos(3, tmp_path / "raw")
    posts = read_posts(tmp_path / "raw" / POSTS_FILE)
    assert [tmp_path / "raw" / post.image for post in posts] == paths
    for post, path in zip(posts, paths, strict=True):
        with Image.open(path) as image:
            assert image.size == (640, 640) and image.format == "JPEG"
        assert post.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len({post.label for post in posts}) > 1  # spread over the classes, not one folder

"""The batch predict benchmark's report (pure formatting) and its memory probe."""

from __future__ import annotations

from bench.predict import _rss_mb, to_markdown


def test_markdown_has_ratios_and_memory_rows():
    result = {
        "cpus": 2, "loadavg_start": 1.0, "loadavg_end": 2.0, "image_size": 128,
        "batch_size": 32, "images": 512, "featurize_img_s": 100.0,
        "featurize_overall_img_s": 90.0, "featurize_xla_img_s": 10.0,
        "featurize_xla_overall_img_s": 8.0, "predict_img_s": 95.0, "predict_overall_img_s": 91.0,
        "naive_img_s": 5.0, "predict_over_featurize": 0.95, "rss_size": 64,
        "rss_format": "parquet", "rss_ratio": 1.02,
        "rss": [
            {"images": 1000, "img_s": 300.0, "loaded_rss_mb": 700, "job_peak_rss_mb": 750,
             "peak_rss_mb": 760},
            {"images": 10000, "img_s": 400.0, "loaded_rss_mb": 701, "job_peak_rss_mb": 765,
             "peak_rss_mb": 770},
        ],
    }  # fmt: skip
    text = to_markdown(result)
    assert "hashtags, write) | 95.0 | 91.0 | 0.95 |" in text
    assert "| featurize, XLA (`featurize.jit_compile: true`) | 10.0 | 8.0 | 0.10 |" in text
    assert "| naive loop, `model.predict` per image | 5.0 | - | 0.05 |" in text
    assert "| 10000 | 701 | 765 | 770 | 400.0 |" in text
    assert "largest / smallest peak during the job: 1.02" in text


def test_rss_probe_reads_this_process():
    assert 10 < _rss_mb() < 100_000

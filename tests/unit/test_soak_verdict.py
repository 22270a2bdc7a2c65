"""The web soak's verdict (bench/soak_web.judge) and answer check, on hand-made tallies."""

from __future__ import annotations

import json

import pytest

from bench.hostile_uploads import Hostile, hostile_uploads
from bench.soak_web import CHECKS, GOOD, documented, judge, to_markdown

WARMUP = 60.0
WINDOW = 60.0


def _uploads(**changes: dict) -> dict[str, dict]:
    """Tallies of a clean soak: 100 good photos, 20 bombs, 10 empty files; `changes` per kind."""
    uploads = {
        GOOD: {"sent": 100, "as_expected": 100, "statuses": {"200": 100}},
        "bomb_png_real": {"sent": 20, "as_expected": 20, "statuses": {"422": 20}},
        "empty": {"sent": 10, "as_expected": 10, "statuses": {"400": 10}},
    }
    for kind, change in changes.items():
        uploads[kind] = {**uploads[kind], **change}
    return uploads


def _samples(first_mb: float, last_mb: float, seconds: int = 600) -> list[list[float]]:
    """RSS every 5 s: `first_mb` up to the middle, `last_mb` after; load average 3."""
    return [
        [float(t), first_mb if t < seconds / 2 else last_mb, 3.0] for t in range(0, seconds + 1, 5)
    ]


def _judge(uploads=None, samples=None, **kwargs) -> dict:
    return judge(
        uploads or _uploads(),
        _samples(800.0, 812.0) if samples is None else samples,
        warmup_s=WARMUP,
        window_s=WINDOW,
        max_rss_change=0.10,
        **kwargs,
    )


def test_a_clean_soak_with_flat_memory_passes():
    verdict = _judge()
    assert verdict["passed"] and all(verdict["checks"].values())
    assert tuple(verdict["checks"]) == CHECKS  # the order the table states them in
    assert verdict["rss_first_window_mb"] == 800.0 and verdict["rss_last_window_mb"] == 812.0
    assert verdict["rss_change"] == pytest.approx(0.015)
    assert (verdict["good_sent"], verdict["good_answered"]) == (100, 100)
    assert (verdict["hostile_sent"], verdict["hostile_as_documented"]) == (30, 30)
    assert verdict["statuses"] == {"200": 100, "400": 10, "422": 20}


@pytest.mark.parametrize(("last_mb", "flat"), [(879.0, True), (881.0, False), (719.0, False)])
def test_rss_is_flat_only_within_ten_percent_either_way(last_mb, flat):
    verdict = _judge(samples=_samples(800.0, last_mb))
    assert verdict["checks"]["rss_flat"] is flat
    assert verdict["passed"] is flat


def test_memory_that_grows_steadily_is_a_leak():
    # 800 MB rising 1.25 MB per sample (5 s): medians at 90 s and 570 s, 120 MB apart
    samples = [[float(t), 800.0 + t / 4, 3.0] for t in range(0, 601, 5)]
    verdict = _judge(samples=samples)
    assert verdict["rss_change"] == pytest.approx(942.5 / 822.5 - 1, abs=1e-4)
    assert not verdict["checks"]["rss_flat"] and not verdict["passed"]


def test_too_few_samples_for_two_windows_fail():
    verdict = _judge(samples=_samples(800.0, 800.0, seconds=150))
    assert verdict["rss_change"] is None and not verdict["checks"]["rss_flat"]
    assert not _judge(samples=[])["passed"]


def test_a_500_fails_but_a_503_does_not():
    with_500 = _judge(_uploads(**{GOOD: {"as_expected": 99, "statuses": {"200": 99, "500": 1}}}))
    assert with_500["unexpected_5xx"] == 1 and not with_500["checks"]["no_unexpected_5xx"]
    assert not with_500["checks"]["every_good_photo_answered"] and not with_500["passed"]
    bomb_502 = _judge(
        _uploads(bomb_png_real={"as_expected": 19, "statuses": {"422": 19, "502": 1}})
    )
    assert bomb_502["unexpected_5xx"] == 1 and not bomb_502["passed"]
    # a 503 retried until it was answered is the documented overload answer, not a failure
    busy = _judge(_uploads(**{GOOD: {"statuses": {"200": 100}, "retried_503": 7}}))
    assert busy["passed"]
    # a 503 that stayed a 503 after the retries is allowed as a 5xx, but the photo is unanswered
    refused = _judge(_uploads(**{GOOD: {"as_expected": 99, "statuses": {"200": 99, "503": 1}}}))
    assert refused["checks"]["no_unexpected_5xx"] and refused["unexpected_5xx"] == 0
    assert not refused["checks"]["every_good_photo_answered"] and not refused["passed"]


def test_a_hostile_upload_with_another_status_or_no_answer_fails():
    accepted = _judge(_uploads(empty={"as_expected": 9, "statuses": {"400": 9, "200": 1}}))
    assert accepted["checks"] == {
        **accepted["checks"],
        "every_hostile_upload_documented_4xx": False,
    }
    assert not accepted["passed"] and accepted["hostile_as_documented"] == 29
    hung = _judge(_uploads(empty={"as_expected": 9, "statuses": {"400": 9, "ReadTimeout": 1}}))
    assert hung["no_answer"] == 1 and not hung["checks"]["every_request_answered"]
    assert not _judge(hung_clients=1)["checks"]["every_request_answered"]


def test_a_traceback_or_a_dead_server_fails():
    assert not _judge(tracebacks=1)["passed"]
    assert not _judge(healthy_after=False)["passed"]


def test_an_answer_is_documented_only_with_its_status_and_message():
    bomb = Hostile("bomb", b"", 422, "too many pixels")
    assert documented(
        bomb, 422, json.dumps({"detail": "the image has too many pixels (9)"}).encode()
    )
    assert not documented(bomb, 415, json.dumps({"detail": "too many pixels"}).encode())
    assert not documented(bomb, 422, json.dumps({"detail": "the image is damaged"}).encode())
    assert not documented(bomb, 422, b"<html>Internal Server Error</html>")
    good = json.dumps({"top_class": "roses", "hashtags": [{"tag": "roses"}]}).encode()
    assert documented(None, 200, good)
    assert not documented(None, 200, json.dumps({"top_class": "roses", "hashtags": []}).encode())
    assert not documented(None, 503, json.dumps({"detail": "the server is busy"}).encode())


def test_the_hostile_corpus_follows_the_served_limits(tiny_params):
    photo = bytes(range(256)) * 8
    uploads = {upload.kind: upload for upload in hostile_uploads(tiny_params, photo)}
    limit = int(tiny_params.serve.max_upload_mb * 1_000_000)
    assert len(uploads["oversized_by_one_byte"].data) == limit + 1
    assert len(uploads["oversized_declared"].data) > limit + 64 * 1024
    assert uploads["oversized_streamed"].streamed
    assert b"".join(uploads["oversized_streamed"].body()) == uploads["oversized_streamed"].data
    assert len(uploads["bomb_png_real"].data) < 100_000  # a bomb: small file, too many pixels
    assert {u.status for u in uploads.values()} == {400, 413, 415, 422}
    assert any(kind.startswith("corpus/") for kind in uploads)
    with pytest.raises(ValueError, match="has only 10 bytes"):
        hostile_uploads(tiny_params, b"x" * 10)


def test_the_report_names_every_kind_and_the_verdict():
    uploads = {
        kind: {
            **tally,
            "expected": 200 if kind == GOOD else 422,
            "retried_503": 0,
            "p50_ms": 10.0,
            "p99_ms": 20.0,
        }
        for kind, tally in _uploads().items()
    }
    samples = _samples(800.0, 812.0)
    result = {
        "model": "m",
        "photos": "p",
        "clients": 32,
        "seconds": 600.0,
        "hostile_share": 0.25,
        "load_avg_start": 1.0,
        "load_avg_end": 2.0,
        "load_avg_max": 3.0,
        "cpus": 2,
        "good_per_second": 0.17,
        "sample_every_s": 5.0,
        "uploads": uploads,
        "rss": {"warmup_s": WARMUP, "window_s": WINDOW, "max_change": 0.1, "samples": samples},
        "verdict": _judge(),
    }
    text = to_markdown(result)
    assert "| bomb_png_real | 422 | 20 | 20 | 422: 20 | 10.0 | 20.0 |" in text
    assert "Verdict: **passed**" in text and "+1.5% (limit +-10%)" in text
    assert "100 of 100 good photos answered 200" in text
    assert f"MB every 30 s: {', '.join(['800'] * 10 + ['812'] * 11)}." in text

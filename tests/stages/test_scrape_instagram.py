"""The scrape stage with the instagram source, against the offline Instagram of the fixtures."""

from __future__ import annotations

import json

import pytest
import responses

from stages import scrape
from taglens.data.posts import read_posts
from taglens.data.sources import instagram
from tests.fixtures.instagram.fake import SESSION_ID, FakeInstagram, write_session


def run_scrape(params, **paths):
    """The stage's run() with the sections it reads."""
    return scrape.run(params.base, params.scrape, params.ingest, **paths)


@pytest.fixture
def fake():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeInstagram(mock)


@pytest.fixture
def instagram_params(tiny_params, tmp_path, monkeypatch):
    monkeypatch.setenv("TAGLENS_OWNER_SALT", "stage-salt")
    session = write_session(tmp_path / "session-tester")
    monkeypatch.setenv(instagram.SESSION_ENV, str(session))
    # Keep the real pacing code but skip its random pauses between requests.
    real = instagram.make_loader
    monkeypatch.setattr(
        instagram,
        "make_loader",
        lambda session, wait, **kw: real(session, wait, polite=False),
    )
    settings = tiny_params.scrape.instagram.model_copy(
        update={"hashtags": ("food", "art"), "posts_per_hashtag": 3, "order": "recent"}
    )
    scrape_params = tiny_params.scrape.model_copy(
        update={"source": "instagram", "instagram": settings}
    )
    return tiny_params.model_copy(update={"scrape": scrape_params})


def test_instagram_posts_reach_posts_jsonl(fake, instagram_params, tmp_path):
    out, reports = tmp_path / "data" / "raw", tmp_path / "reports"
    report = run_scrape(instagram_params, out=out, reports=reports)

    posts = read_posts(out / "posts.jsonl")
    stored = {
        instagram.post_id(code, "stage-salt"): code
        for code in ("C7RcFood1AA", "C7RcFood3AA", "C7RcFood4AA", "C7RcArt01AA")
    }
    assert [(stored.get(p.id), p.label) for p in posts] == [
        ("C7RcFood1AA", "food"),
        ("C7RcFood3AA", "food"),
        ("C7RcFood4AA", "food"),
        ("C7RcArt01AA", "art"),
    ]
    first = posts[0]
    assert first.source == "instagram"
    assert first.hashtags == ("food", "brunch", "yummy")
    assert (first.likes, first.comments, first.date) == (321, 14, "2024-06-03T07:33:20")
    assert first.owner == instagram.owner_hash("1234567890", "stage-salt")
    assert (first.width, first.height) == (64, 80)
    # The brunch photo was also posted under #art: kept once, under the first hashtag listed.
    assert [
        (d["kept_label"], d["dropped_label"], stored.get(d["dropped_id"]))
        for d in report.duplicates
    ] == [("food", "art", "C7RcFood1AA")]
    saved = json.loads((reports / "ingest.json").read_text())
    assert saved["accepted"] == 4 and saved["duplicates"] == 1
    assert (tmp_path / "data" / "instagram" / instagram.COLLECTED_FILE).is_file()
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.name.startswith("session-"):
            assert SESSION_ID.encode() not in path.read_bytes()

    downloads = sum(v for k, v in fake.calls.items() if k.startswith("image:"))
    again = run_scrape(instagram_params, out=out, reports=reports)  # a re-run is offline work
    assert again.accepted == 4
    assert sum(v for k, v in fake.calls.items() if k.startswith("image:")) == downloads


def test_hashtags_must_be_classes(instagram_params, tmp_path):
    settings = instagram_params.scrape.instagram.model_copy(update={"hashtags": ("food", "cats")})
    params = instagram_params.model_copy(
        update={"scrape": instagram_params.scrape.model_copy(update={"instagram": settings})}
    )
    with pytest.raises(ValueError, match=r"\['cats'\] are not in base.classes"):
        run_scrape(params, out=tmp_path / "raw", reports=tmp_path / "rep")

"""The instagram source against an offline Instagram (fixture responses through `responses`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests
import responses

from taglens.atomic import read_jsonl
from taglens.data.sources import instagram
from taglens.params import InstagramSourceParams
from tests.fixtures.instagram.fake import SESSION_ID, FakeInstagram, write_session

SALT = "test-salt"


def settings(**changes) -> InstagramSourceParams:
    base = dict(
        hashtags=("food",),
        posts_per_hashtag=10,
        keep_days=None,
        order="recent",
        skip_videos=True,
        since=None,
        until=None,
        max_wait_seconds=1800,
        owner_salt_env="TAGLENS_OWNER_SALT",
    )
    return InstagramSourceParams(**{**base, **changes})


@pytest.fixture
def fake():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeInstagram(mock)


@pytest.fixture
def session(tmp_path):
    return write_session(tmp_path / "session-tester")


class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


def loader_for(session, max_wait=1800.0, sleeps=None):
    sleeps = Sleeps() if sleeps is None else sleeps
    return instagram.make_loader(session, max_wait, polite=False, sleep=sleeps)


# The shortcodes the fixture responses hold: stored post ids are keyed hashes of them.
FIXTURE_CODES = set(
    re.findall(
        r'"(?:shortcode|code)":\s*"(\w+)"',
        "".join(
            p.read_text()
            for p in (Path(__file__).parents[1] / "fixtures" / "instagram").glob("*.json")
        ),
    )
)


def shortcode_of(post_id: str, salt: str = SALT) -> str:
    """The fixture shortcode a stored post id was hashed from."""
    return {instagram.post_id(code, salt): code for code in FIXTURE_CODES}[post_id]


def shortcodes(cache, tag=None):
    return [
        shortcode_of(r["post_id"])
        for r in read_jsonl(cache / instagram.COLLECTED_FILE)
        if tag is None or r["label"] == tag
    ]


def test_two_pages_video_skipped_and_no_caption(fake, session, tmp_path):
    cache = tmp_path / "cache"
    result = instagram.collect(loader_for(session), settings(), cache=cache, salt=SALT)
    assert shortcodes(cache) == ["C7RcFood1AA", "C7RcFood3AA", "C7RcFood4AA", "C7RcFood5AA"]
    assert (result.per_tag["food"], result.videos_skipped, result.complete) == (4, 1, True)
    assert fake.calls["graphql:food:1"] == 1 and fake.calls["graphql:food:2"] == 1
    assert fake.calls["image:C7RcFood2VD"] == 0  # the video is never downloaded
    rows = {shortcode_of(r["post_id"]): r for r in read_jsonl(cache / instagram.COLLECTED_FILE)}
    first = rows["C7RcFood1AA"]
    assert first["caption"] == "Sunday brunch #food #brunch #Yummy"
    assert (first["likes"], first["comments"]) == (321, 14)
    assert first["date"] == "2024-06-03T07:33:20"
    assert first["owner"] == instagram.owner_hash("1234567890", SALT) != "1234567890"
    assert rows["C7RcFood5AA"]["owner"] == first["owner"]  # same owner, same hash
    assert rows["C7RcFood3AA"]["caption"] == ""

    items = list(instagram.collected_items(cache, settings()))
    assert [shortcode_of(i.id) for i in items] == list(rows)
    assert items[0].hashtags == ("food", "brunch", "yummy") and items[1].hashtags == ()
    assert items[0].data[:2] == b"\xff\xd8"


def test_top_posts_use_the_section_pages(fake, session, tmp_path):
    cache = tmp_path / "cache"
    result = instagram.collect(loader_for(session), settings(order="top"), cache=cache, salt=SALT)
    assert shortcodes(cache) == ["C7TopFd1AAA", "C7TopFd3AAA", "C7TopFd4AAA", "C7TopFd5CAR"]
    assert result.videos_skipped == 1 and fake.calls["top:food:2"] == 1
    # A carousel contributes its first slide.
    assert (fake.calls["image:C7TopFd5CAR_1"], fake.calls["image:C7TopFd5CAR_2"]) == (1, 0)
    rows = {shortcode_of(r["post_id"]): r for r in read_jsonl(cache / instagram.COLLECTED_FILE)}
    assert (rows["C7TopFd1AAA"]["likes"], rows["C7TopFd1AAA"]["comments"]) == (880, 31)
    assert rows["C7TopFd1AAA"]["owner"] == instagram.owner_hash("7001", SALT)
    assert rows["C7TopFd3AAA"]["caption"] == ""


def test_429_is_waited_out_through_the_rate_controller(fake, session, tmp_path):
    fake.faults["graphql:food:2"] = [429]
    sleeps = Sleeps()
    cache = tmp_path / "cache"
    result = instagram.collect(
        loader_for(session, sleeps=sleeps), settings(), cache=cache, salt=SALT
    )
    assert result.complete and len(shortcodes(cache)) == 4
    assert fake.calls["graphql:food:2"] == 2
    # instaloader's own 429 back-off (about 11 minutes), honoured because it is under the bound;
    # the fake sleep does not advance the clock, so the follow-up pacing check waits once more.
    assert 1 <= len(sleeps) <= 2 and all(600 < seconds <= 1800 for seconds in sleeps)


def test_429_longer_than_max_wait_stops_cleanly_then_resumes(fake, session, tmp_path):
    fake.faults["graphql:food:2"] = [429]
    cache = tmp_path / "cache"
    params = settings(hashtags=("food", "art"), max_wait_seconds=60)
    first = instagram.collect(loader_for(session, max_wait=60), params, cache=cache, salt=SALT)
    assert not first.complete
    assert "max_wait_seconds=60" in first.notes[0] and "resume" in first.notes[0]
    assert shortcodes(cache) == ["C7RcFood1AA", "C7RcFood3AA"]
    assert fake.calls["web_info:art"] == 0  # stopped: no further hashtag is tried
    assert len(list((cache / "resume").glob("food_*.json"))) == 1

    second = instagram.collect(loader_for(session), params, cache=cache, salt=SALT)
    assert second.complete
    assert shortcodes(cache, "food") == ["C7RcFood1AA", "C7RcFood3AA", "C7RcFood4AA", "C7RcFood5AA"]
    assert shortcodes(cache, "art") == ["C7RcArt01AA", "C7RcFood1AA"]
    assert fake.calls["image:C7RcFood1AA"] == 1  # shared by two hashtags, downloaded once
    assert not list((cache / "resume").glob("food_*.json"))  # finished: resume file removed


def test_connection_error_midway_keeps_what_it_has_and_resumes(fake, session, tmp_path):
    fake.faults["graphql:food:2"] = [requests.ConnectionError("connection reset")] * 3
    cache = tmp_path / "cache"
    params = settings(hashtags=("food", "art"))
    first = instagram.collect(loader_for(session), params, cache=cache, salt=SALT)
    assert not first.complete and "ConnectionException" in first.notes[0]
    assert shortcodes(cache, "food") == ["C7RcFood1AA", "C7RcFood3AA"]
    assert shortcodes(cache, "art") == ["C7RcArt01AA", "C7RcFood1AA"]  # next hashtag still ran

    second = instagram.collect(loader_for(session), params, cache=cache, salt=SALT)
    assert second.complete and second.downloaded == 2
    assert shortcodes(cache, "food")[2:] == ["C7RcFood4AA", "C7RcFood5AA"]


def test_changed_response_shape_ends_the_hashtag_not_the_run(fake, session, tmp_path):
    fake.faults["graphql:food:2"] = [{"data": {"hashtag": None}, "status": "ok"}]
    cache = tmp_path / "cache"
    result = instagram.collect(
        loader_for(session), settings(hashtags=("food", "art")), cache=cache, salt=SALT
    )
    assert not result.complete and "stopped by TypeError" in result.notes[0]
    assert shortcodes(cache, "food") == ["C7RcFood1AA", "C7RcFood3AA"]
    assert result.per_tag["art"] == 2


def test_resume_after_interruption_has_no_duplicates_and_no_redownloads(fake, session, tmp_path):
    fake.faults["image:C7RcFood5AA"] = [KeyboardInterrupt()]
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        instagram.collect(loader_for(session), settings(), cache=cache, salt=SALT)
    assert shortcodes(cache) == ["C7RcFood1AA", "C7RcFood3AA", "C7RcFood4AA"]
    before = fake.calls.copy()

    result = instagram.collect(loader_for(session), settings(), cache=cache, salt=SALT)
    assert shortcodes(cache) == ["C7RcFood1AA", "C7RcFood3AA", "C7RcFood4AA", "C7RcFood5AA"]
    assert result.downloaded == 1
    new = fake.calls - before
    assert new["graphql:food:2"] == 0  # the saved page is reused, not fetched again
    assert new["image:C7RcFood5AA"] == 1
    assert all(new[f"image:{code}"] == 0 for code in ["C7RcFood1AA", "C7RcFood3AA", "C7RcFood4AA"])


def test_the_second_run_adds_exactly_the_newer_posts(fake, session, tmp_path):
    cache = tmp_path / "cache"
    first = instagram.collect(loader_for(session), settings(), cache=cache, salt=SALT)
    assert first.new_per_tag["food"] == 4
    before = fake.calls.copy()

    fake.newer = True  # a week later: a page of newer posts heads the listing
    second = instagram.collect(loader_for(session), settings(), cache=cache, salt=SALT)

    assert shortcodes(cache) == [
        "C7RcFood1AA",
        "C7RcFood3AA",
        "C7RcFood4AA",
        "C7RcFood5AA",
        "C7RcFood6AA",
        "C7RcFood7AA",
    ]
    assert (second.new_per_tag["food"], second.per_tag["food"], second.downloaded) == (2, 6, 2)
    new = fake.calls - before
    assert new["graphql:food:newer"] == 1 and new["graphql:food:2"] == 0  # stops at held posts
    assert all(new[f"image:{code}"] == 0 for code in ["C7RcFood1AA", "C7RcFood3AA"])
    assert not list((cache / instagram.RUNS_DIR).iterdir())  # both runs finished
    items = list(instagram.collected_items(cache, settings()))
    assert [shortcode_of(i.id) for i in items][-2:] == ["C7RcFood6AA", "C7RcFood7AA"]
    assert items[-1].caption == "Fresh figs #food #fruit"

    third = instagram.collect(loader_for(session), settings(), cache=cache, salt=SALT)
    assert third.new_per_tag["food"] == 0 and len(shortcodes(cache)) == 6


def test_the_per_run_cap_and_a_resumed_run_keep_their_cut_off(fake, session, tmp_path):
    cache = tmp_path / "cache"
    instagram.collect(loader_for(session), settings(posts_per_hashtag=2), cache=cache, salt=SALT)
    assert shortcodes(cache) == ["C7RcFood1AA", "C7RcFood3AA"]
    assert fake.calls["graphql:food:2"] == 0  # stopped before pulling another page

    fake.newer = True
    fake.faults["image:C7RcFood7AA"] = [KeyboardInterrupt()]
    with pytest.raises(KeyboardInterrupt):
        instagram.collect(
            loader_for(session), settings(posts_per_hashtag=2), cache=cache, salt=SALT
        )
    assert shortcodes(cache)[2:] == ["C7RcFood6AA"]
    # resumed: the cut-off is still the newest post before this run (not C7RcFood6AA), and the
    # post it already added counts towards its cap of 2
    resumed = instagram.collect(
        loader_for(session), settings(posts_per_hashtag=2), cache=cache, salt=SALT
    )
    assert shortcodes(cache)[2:] == ["C7RcFood6AA", "C7RcFood7AA"]
    assert resumed.new_per_tag["food"] == 2


def test_keep_days_keeps_a_rolling_window(fake, session, tmp_path):
    cache = tmp_path / "cache"
    instagram.collect(loader_for(session), settings(), cache=cache, salt=SALT)
    fake.newer = True
    # the newest post is 2024-06-05 15:06:40; three days back keeps food 1 and 3 (2.3 and 2.5
    # days older) and drops 4 and 5 (3.5 and 4.6 days older)
    window = settings(keep_days=3)
    instagram.collect(loader_for(session), window, cache=cache, salt=SALT)
    items = list(instagram.collected_items(cache, window))
    kept = ["C7RcFood1AA", "C7RcFood3AA", "C7RcFood6AA", "C7RcFood7AA"]
    assert [shortcode_of(i.id) for i in items] == kept
    media = {code: cache / f"media/{instagram.post_id(code, SALT)}.jpg" for code in FIXTURE_CODES}
    assert not media["C7RcFood4AA"].exists()
    assert media["C7RcFood3AA"].is_file()
    with pytest.raises(ValueError, match="keep_days"):
        settings(keep_days=0)


def test_failed_image_download_is_logged_and_skipped(fake, session, tmp_path, caplog):
    fake.faults["image:C7RcFood3AA"] = [404]
    cache = tmp_path / "cache"
    result = instagram.collect(loader_for(session), settings(), cache=cache, salt=SALT)
    assert shortcodes(cache) == ["C7RcFood1AA", "C7RcFood4AA", "C7RcFood5AA"]
    assert result.failed == 1 and "C7RcFood3AA" in caplog.text


def test_date_window(fake, session, tmp_path):
    cache = tmp_path / "cache"
    params = settings(since="2024-06-01T01:00:00", until="2024-06-03T07:00:00")
    instagram.collect(loader_for(session), params, cache=cache, salt=SALT)
    assert shortcodes(cache) == ["C7RcFood3AA", "C7RcFood4AA"]
    other = tmp_path / "other"  # the same window given with an offset
    offset = settings(since="2024-06-01T03:00:00+02:00", until="2024-06-03T09:00:00+02:00")
    instagram.collect(loader_for(session), offset, cache=other, salt=SALT)
    assert shortcodes(other) == ["C7RcFood3AA", "C7RcFood4AA"]
    with pytest.raises(ValueError, match="scrape.instagram.since must be an ISO date"):
        instagram.collect(loader_for(session), settings(since="last week"), cache=cache, salt=SALT)


def test_unknown_hashtag_is_skipped_with_a_note(fake, session, tmp_path):
    result = instagram.collect(
        loader_for(session), settings(hashtags=("nosuchtag", "art")), cache=tmp_path, salt=SALT
    )
    assert "#nosuchtag: Instagram has no such hashtag" in result.notes[0]
    assert result.per_tag == {"art": 2}


def test_login_missing_or_unreadable(tmp_path, monkeypatch):
    with pytest.raises(instagram.InstagramLoginError, match="instaloader --login USER"):
        instagram.make_loader(None, 10)
    with pytest.raises(instagram.InstagramLoginError, match="does not exist"):
        instagram.make_loader(tmp_path / "session-x", 10)
    (tmp_path / "session-bad").write_text("not a pickle")
    not_a_session = "not an instaloader session file"
    with pytest.raises(instagram.InstagramLoginError, match=not_a_session):
        instagram.make_loader(tmp_path / "session-bad", 10)
    loader = instagram.make_loader(write_session(tmp_path / "session-tester"), 10)
    assert loader.context.is_logged_in and loader.context.username == "tester"
    monkeypatch.delenv("TAGLENS_OWNER_SALT", raising=False)
    with pytest.raises(ValueError, match="set TAGLENS_OWNER_SALT"):
        instagram.owner_salt(settings())


def test_session_secret_is_never_written(fake, session, tmp_path):
    cache = tmp_path / "cache"
    instagram.collect(
        loader_for(session), settings(hashtags=("food", "art")), cache=cache, salt=SALT
    )
    for path in cache.rglob("*"):
        if path.is_file():
            assert SESSION_ID.encode() not in path.read_bytes(), path
    assert json.dumps(read_jsonl(cache / instagram.COLLECTED_FILE)).count("someone") == 0


def test_a_cache_from_before_hashed_ids_is_read_with_hashed_ids(tmp_path, monkeypatch):
    # Given a cache row written with the raw shortcode and a mention in the caption
    cache = tmp_path / "cache"
    (cache / "media").mkdir(parents=True)
    (cache / "media" / "C7Old.jpg").write_bytes(b"\xff\xd8jpeg")
    row = {
        "shortcode": "C7Old",
        "label": "food",
        "caption": "hi @pal #food",
        "likes": 1,
        "comments": 0,
        "date": "2024-06-01T00:00:00",
        "owner": None,
        "media": "media/C7Old.jpg",
    }
    (cache / instagram.COLLECTED_FILE).write_text(json.dumps(row) + "\n")

    # Then without the salt it says what to do, and with it the id is the keyed hash
    monkeypatch.delenv("TAGLENS_OWNER_SALT", raising=False)
    with pytest.raises(ValueError, match="TAGLENS_OWNER_SALT"):
        list(instagram.collected_items(cache, settings()))
    monkeypatch.setenv("TAGLENS_OWNER_SALT", SALT)
    (item,) = instagram.collected_items(cache, settings())
    assert item.id == instagram.post_id("C7Old", SALT) and item.caption == "hi #food"

"""Dynamic batching: concurrent uploads share forward passes and get their own answers back."""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest
from web_helpers import photo_bytes

from taglens.data.images import normalize_image
from taglens.serving.web import create_app
from taglens.serving.web.batching import MicroBatcher, Overloaded


def _recording_batcher(**kwargs) -> tuple[MicroBatcher, list[list[int]]]:
    """A batcher whose batch doubles each item and records the items of each call."""
    calls: list[list[int]] = []

    def run_batch(items):
        calls.append(list(items))
        return [item * 2 for item in items]

    options = {"max_batch_size": 8, "max_wait_s": 0.05, "max_queue": 100, **kwargs}
    return MicroBatcher(run_batch, **options), calls


def test_concurrent_submits_share_batches_and_get_their_own_results():
    batcher, calls = _recording_batcher()

    async def scenario():
        return await asyncio.gather(*(batcher.submit(i) for i in range(20)))

    results = asyncio.run(scenario())
    batcher.close()
    # each caller gets the result of its own item, in order
    assert results == [2 * i for i in range(20)]
    # 20 items in batches of at most 8: 3 calls, every item exactly once
    assert [len(call) for call in calls] == [8, 8, 4]
    assert sorted(i for call in calls for i in call) == list(range(20))
    assert (batcher.stats.batches, batcher.stats.items) == (3, 20)


def test_a_full_batch_does_not_wait_for_the_timeout():
    # with a wait far longer than the test's own timeout, a full batch still runs at once
    batcher, calls = _recording_batcher(max_batch_size=4, max_wait_s=3600)

    async def scenario():
        return await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(4))), 30)

    assert asyncio.run(scenario()) == [0, 2, 4, 6]
    assert calls == [[0, 1, 2, 3]]
    batcher.close()


def test_a_lone_item_does_not_wait_when_nobody_else_is_coming():
    # with a wait far longer than the test's own timeout and nothing on its way, it runs at once
    batcher, calls = _recording_batcher(max_wait_s=3600, upstream=lambda: 0)

    async def scenario():
        return await asyncio.wait_for(batcher.submit(21), 30)

    assert asyncio.run(scenario()) == 42
    assert calls == [[21]]
    batcher.close()


def test_a_batch_waits_for_items_on_their_way_and_no_longer():
    on_the_way = [1]
    batcher, calls = _recording_batcher(max_wait_s=3600, upstream=lambda: on_the_way[0])

    async def scenario():
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.2)
        assert not first.done()  # one more is decoding: the batch waits for it
        on_the_way[0] = 0
        second = await asyncio.wait_for(batcher.submit(2), 30)  # the last one: runs at once
        return await first, second

    assert asyncio.run(scenario()) == (2, 4)
    assert calls == [[1, 2]]
    batcher.close()


def test_items_arriving_while_a_batch_runs_form_the_next_batch():
    # given a model that is busy with a first item
    busy, release = threading.Event(), threading.Event()
    calls: list[list[int]] = []

    def run_batch(items):
        calls.append(list(items))
        if items == [0]:
            busy.set()
            release.wait(10)
        return list(items)

    batcher = MicroBatcher(run_batch, max_batch_size=16, max_wait_s=0, max_queue=100)

    async def scenario():
        first = asyncio.create_task(batcher.submit(0))
        while not busy.is_set():
            await asyncio.sleep(0.01)
        later = [asyncio.create_task(batcher.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        assert batcher.waiting == 5  # queued while the model works
        release.set()
        return await first, await asyncio.gather(*later)

    assert asyncio.run(scenario()) == (0, [1, 2, 3, 4, 5])
    # then the five that waited went through together, even with no wait configured
    assert calls == [[0], [1, 2, 3, 4, 5]]
    batcher.close()


def test_the_queue_is_bounded():
    busy, release = threading.Event(), threading.Event()

    def run_batch(items):
        busy.set()
        release.wait(10)
        return list(items)

    batcher = MicroBatcher(run_batch, max_batch_size=2, max_wait_s=0, max_queue=3)

    async def scenario():
        running = asyncio.create_task(batcher.submit("running"))
        while not busy.is_set():
            await asyncio.sleep(0.01)
        queued = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="3 requests are already waiting"):
            await batcher.submit("one too many")
        release.set()
        return await running, await asyncio.gather(*queued)

    assert asyncio.run(scenario()) == ("running", [0, 1, 2])
    batcher.close()


def test_a_failing_item_fails_only_its_own_request():
    def run_batch(items):
        if "bad" in items:
            raise ValueError("cannot score 'bad'")
        return [item.upper() for item in items]

    batcher = MicroBatcher(run_batch, max_batch_size=8, max_wait_s=0.05, max_queue=10)

    async def scenario():
        return await asyncio.gather(
            *(batcher.submit(item) for item in ("a", "bad", "c")), return_exceptions=True
        )

    a, bad, c = asyncio.run(scenario())
    batcher.close()
    assert (a, c) == ("A", "C")
    assert isinstance(bad, ValueError) and "cannot score 'bad'" in str(bad)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size >= 1"):
        MicroBatcher(list, max_batch_size=0, max_wait_s=0, max_queue=1)


@pytest.mark.slow
def test_batched_answers_equal_single_image_answers(tiny_models_dir, tiny_params):
    """Given the real tiny model, uploads sent together equal each photo predicted alone."""
    from taglens.model.predictor import HashtagPredictor

    predictor = HashtagPredictor.from_dir(tiny_models_dir)
    serve = tiny_params.serve.model_copy(update={"batch_max_wait_ms": 200.0})
    app = create_app(
        predictor,
        {"name": "taglens", "version": "1"},
        2_000_000,
        ingest=tiny_params.ingest,
        serve=serve,
    )
    photos = [photo_bytes(64 + 8 * i, "JPEG" if i % 2 else "PNG", seed=i) for i in range(12)]

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await asyncio.gather(
                *(client.post("/predict", files={"file": ("p", data)}) for data in photos)
            )

    responses = asyncio.run(scenario())
    batcher = app.state.slot.current.batcher
    batcher.close()
    assert [r.status_code for r in responses] == [200] * len(photos)
    # the twelve went through fewer forward passes than uploads
    assert batcher.stats.items == 12 and batcher.stats.batches < 12
    assert max(batcher.stats.sizes) > 1
    for data, response in zip(photos, responses, strict=True):
        body = response.json()
        alone = predictor.predict_bytes([normalize_image(data, tiny_params.ingest).jpeg])[0]
        assert body["top_class"] == alone["top_class"]
        assert [t["tag"] for t in body["hashtags"]] == [t["tag"] for t in alone["hashtags"]]
        assert [t["score"] for t in body["hashtags"]] == pytest.approx(
            [t["score"] for t in alone["hashtags"]], rel=1e-5, abs=1e-6
        )
        classes = list(alone["probabilities"])
        assert list(body["probabilities"]) == classes
        np.testing.assert_allclose(
            [body["probabilities"][c] for c in classes],
            [alone["probabilities"][c] for c in classes],
            rtol=1e-5,
            atol=1e-6,
        )
    # and different photos got different answers (the batch did not mix them up)
    assert len({tuple(r.json()["probabilities"].values()) for r in responses}) == len(photos)

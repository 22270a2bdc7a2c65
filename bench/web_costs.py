"""Where the web server's CPU goes per upload, and the request rate that cost allows.

The load benchmark measures the server from outside; this measures its steps one by one, in
this process, on the same model, engine and photos: the upload checks and normalization
(`prepare_image`, as ingest does for training photos), the decode to model pixels
(`HashtagPredictor.decode`) and the forward pass plus hashtag ranking (`predict_pixels`) for one
image and for a full batch; and, for batch predict's side, the decode of the photo as sent.
CPU seconds count every thread of the process, so a forward pass
that spreads over the cores costs what it costs in total.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def cpu_ms_per_item(step: Callable[[], object], items: int, repeats: int = 3) -> float:
    """The least process CPU ms per item over `repeats` runs of `step`, after a warm-up."""
    step()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        step()
        best = min(best, (time.process_time() - start) * 1000 / items)
    return round(best, 2)


def cpu_breakdown(models: Path, params_path: Path, images: list[bytes], batch: int) -> dict:
    """CPU ms per image of each step the server runs for an upload."""
    import numpy as np

    from taglens.features.engines import on_engine
    from taglens.model.predictor import HashtagPredictor
    from taglens.params import load_params
    from taglens.serving.web.upload import prepare_image

    params = load_params(params_path)
    predictor = on_engine(HashtagPredictor.from_dir(models), params.featurize.engine)
    uploads = (images * (batch // len(images) + 1))[:batch]
    normalized = [prepare_image(data, params.ingest).jpeg for data in uploads]
    pixels = predictor.decode(normalized)
    return {
        "engine": params.featurize.engine,
        "batch": batch,
        "upload_checks_and_normalize": cpu_ms_per_item(
            lambda: [prepare_image(data, params.ingest) for data in uploads], batch
        ),
        "decode_to_pixels": cpu_ms_per_item(
            lambda: [predictor.decode([jpeg]) for jpeg in normalized], batch
        ),
        # what batch predict decodes: the file as it is, without the upload's normalization
        "decode_as_sent": cpu_ms_per_item(
            lambda: [predictor.decode([data]) for data in uploads], batch
        ),
        "model_one_image": cpu_ms_per_item(
            lambda: [predictor.predict_pixels(pixels[i : i + 1]) for i in range(batch)], batch
        ),
        "model_full_batch": cpu_ms_per_item(
            lambda: predictor.predict_pixels(np.ascontiguousarray(pixels)), batch
        ),
    }


def ceiling(single: dict, loaded: dict) -> dict:
    """The most requests/s the machine's cores allow at the loaded server's CPU per request.

    `single` and `loaded` are the scaling rows of one client and of many: requests_per_second
    and server_cpu_ms_per_request. However the work is spread, the server cannot answer more
    than cores x 1000 / (CPU ms per request) requests a second.
    """
    cores = os.cpu_count() or 1
    per_request = loaded["server_cpu_ms_per_request"]
    most = cores * 1000 / max(per_request, 1e-9)
    single_rate = max(single["requests_per_second"], 1e-9)
    return {
        "cores": cores,
        "single_client_cores_busy": round(
            single_rate * single["server_cpu_ms_per_request"] / 1000, 2
        ),
        "most_requests_per_second": round(most, 1),
        "most_ratio": round(most / single_rate, 2),
        "cpu_ms_per_request_for_3x": round(cores * 1000 / (3 * single_rate), 2),
    }

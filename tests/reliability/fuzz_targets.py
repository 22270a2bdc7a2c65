"""Fuzz targets: every parser a stranger's bytes reach, with the only exceptions it may raise.

Each target takes raw bytes and calls one parser. An exception outside the target's `allowed`
types is a bug (a crash instead of a clear refusal). The same functions serve the atheris runs
(`fuzz_harness.py`, in a subprocess) and the regression tests over `corpus/<target>/`.
"""

from __future__ import annotations

import atexit
import copy
import functools
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"


@functools.cache
def _scratch() -> Path:
    """A private temp folder for the file-based parsers, removed when the process exits.

    libFuzzer ends its process without running atexit hooks, so the fuzz runs name a folder of
    their own in TAGLENS_FUZZ_SCRATCH instead.
    """
    if os.environ.get("TAGLENS_FUZZ_SCRATCH"):
        return Path(os.environ["TAGLENS_FUZZ_SCRATCH"])
    path = Path(tempfile.mkdtemp(prefix="taglens-fuzz-"))
    atexit.register(shutil.rmtree, path, True)
    return path


@dataclass(frozen=True)
class Target:
    """A parser under fuzz and the exception types that count as a clean refusal."""

    name: str
    run: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...]


def _params_file(data: bytes) -> object:
    """Raw bytes as a whole params.yaml file."""
    from taglens.params import load_params

    path = _scratch() / "params.yaml"
    path.write_bytes(data)
    return load_params(path)


@functools.cache
def _fixture_raw() -> dict:
    from tests.helpers.params import tiny_params_raw

    return tiny_params_raw()


_VALUES: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**64,
    -(2**63),
    0.0,
    -0.0,
    1e-300,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    "x",
    "0",
    "null",
    "é",
    "\x00",
    [],
    {},
    ["a"],
    [1, 2],
    {"a": 1},
    {"": None},
    "a" * 1000,
]


def _leaves(node: object, prefix: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        out = [prefix] if prefix else []
        for key, value in node.items():
            out += _leaves(value, (*prefix, key))
        return out
    return [prefix]


def _params_values(data: bytes) -> object:
    """The fixture params with a few keys replaced by hostile values chosen by the fuzz bytes."""
    import atheris

    from taglens.params import parse_params

    fdp = atheris.FuzzedDataProvider(data)
    raw = copy.deepcopy(_fixture_raw())
    paths = _leaves(raw)
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        path = paths[fdp.ConsumeIntInRange(0, len(paths) - 1)]
        kind = fdp.ConsumeIntInRange(0, 4)
        if kind == 0:
            value = _VALUES[fdp.ConsumeIntInRange(0, len(_VALUES) - 1)]
        elif kind == 1:
            value = fdp.ConsumeInt(8)
        elif kind == 2:
            value = fdp.ConsumeRegularFloat()
        elif kind == 3:
            value = fdp.ConsumeUnicodeNoSurrogates(20)
        else:
            value = [fdp.ConsumeUnicodeNoSurrogates(5) for _ in range(fdp.ConsumeIntInRange(0, 3))]
        node = raw
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue  # an earlier replacement turned this section into a plain value
        if fdp.ConsumeBool():
            node.pop(path[-1], None)  # a missing key
            node[fdp.ConsumeUnicodeNoSurrogates(8)] = value  # and an unknown one
        else:
            node[path[-1]] = value
    return parse_params(raw)


def _posts_file(data: bytes) -> object:
    """Raw bytes as data/raw/posts.jsonl."""
    from taglens.data.posts import read_posts

    path = _scratch() / "posts.jsonl"
    path.write_bytes(data)
    return read_posts(path)


_INGEST_PARAMS = None


def _ingest_image(data: bytes) -> object:
    """Raw bytes as a candidate image through ingest's decoder and normalizer."""
    global _INGEST_PARAMS
    from taglens.data.images import normalize_image
    from taglens.params import parse_params

    if _INGEST_PARAMS is None:
        _INGEST_PARAMS = parse_params(_fixture_raw()).ingest
    return normalize_image(data, _INGEST_PARAMS)


def _upload_image(data: bytes) -> object:
    """Raw bytes as a web upload through the app's checks (what runs before the model)."""
    global _INGEST_PARAMS
    from taglens.params import parse_params
    from taglens.serving.web.upload import prepare_image, read_limited

    if _INGEST_PARAMS is None:
        _INGEST_PARAMS = parse_params(_fixture_raw()).ingest
    return prepare_image(read_limited(io.BytesIO(data), 1_000_000), _INGEST_PARAMS)


def _predict_list(data: bytes) -> object:
    """Raw bytes as a batch-predict list file (one path per line)."""
    from taglens.serving.batch.inputs import list_inputs

    path = _scratch() / "inputs.txt"
    path.write_bytes(data)
    return list_inputs(path)


def _ingest_rejection() -> tuple[type[BaseException], ...]:
    from taglens.data.images import RejectedImage

    return (RejectedImage,)


def _upload_rejection() -> tuple[type[BaseException], ...]:
    from taglens.serving.web.upload import UploadError

    return (UploadError,)


def _params_error() -> tuple[type[BaseException], ...]:
    from taglens.params import ParamsError

    return (ParamsError,)


def targets() -> dict[str, Target]:
    """Every fuzz target by name."""
    return {
        "params_file": Target("params_file", _params_file, _params_error()),
        "params_values": Target("params_values", _params_values, _params_error()),
        "posts_jsonl": Target("posts_jsonl", _posts_file, (ValueError,)),
        "ingest_image": Target("ingest_image", _ingest_image, _ingest_rejection()),
        "upload_image": Target("upload_image", _upload_image, _upload_rejection()),
        # A listed path that does not exist becomes an error row, so the only refusals are
        # "no images listed" and an unreadable (non-UTF-8) list file.
        "predict_list": Target("predict_list", _predict_list, (ValueError, FileNotFoundError)),
    }


def check(target: Target, data: bytes) -> None:
    """Run one input; exceptions outside `target.allowed` propagate (atheris records a crash)."""
    try:
        target.run(data)
    except target.allowed:
        pass


def _image_seeds() -> list[bytes]:
    from PIL import Image

    seeds = []
    for fmt, mode in (
        ("PNG", "RGBA"),
        ("JPEG", "RGB"),
        ("GIF", "P"),
        ("BMP", "RGB"),
        ("WEBP", "RGB"),
        ("PNG", "I;16"),
        ("TIFF", "CMYK"),
    ):
        buf = io.BytesIO()
        Image.new(mode, (40, 36)).save(buf, fmt)
        seeds.append(buf.getvalue())
    return seeds


def seeds(name: str) -> list[bytes]:
    """Valid starting inputs for a target, so the fuzzer mutates from the real format."""
    if name in ("params_file",):
        tiny = yaml.safe_dump(_fixture_raw(), sort_keys=False).encode()
        return [(ROOT / "params.yaml").read_bytes(), tiny]
    if name == "params_values":
        return [bytes(range(64)), b"\x00" * 16]
    if name == "posts_jsonl":
        line = (
            '{"id": "p1", "label": "food", "image": "images/'
            + "a" * 64
            + '.jpg", "sha256": "'
            + "a" * 64
            + '", "width": 32, "height": 32, "caption": "#food", "hashtags": ["food"], '
            '"likes": 3, "comments": null, "date": null, "owner": null, "source": "demo"}\n'
        )
        return [line.encode(), (line * 3).encode()]
    if name in ("ingest_image", "upload_image"):
        return _image_seeds()
    if name == "predict_list":
        return [b"# photos\na.jpg\n\nsub/b.png\n/abs/c.webp\n"]
    raise KeyError(name)

"""How image files become feature vectors: batched decoding overlapped with the forward pass.

The feature store (so the featurize stage) and the Dask featurize flow turn image files into
vectors with these functions, so both decode, resize and batch the same way; missing files are
refused before the (slow) model build. The forward pass itself (`featurize.engine`) is in
`taglens.features.engines`; what the stage writes from the vectors (features.npz, meta.json) is
`taglens.features.store`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Required, TypedDict, Unpack

import numpy as np

from taglens import artifacts
from taglens.data.images import image_dataset
from taglens.errors import TaglensError
from taglens.features.engines import Outputs, compile_forward
from taglens.progress import progress_bar

if TYPE_CHECKING:
    import keras


class ForwardOptions(TypedDict, total=False):
    """How `iter_feature_batches` runs the forward pass (`featurize_paths` passes them on).

    image_size: the extractor's input side. batch_size: images per forward pass. jit_compile:
    compile full batches with XLA (`featurize.jit_compile`). engine: what runs the forward pass
    (`featurize.engine`, see taglens.features.engines). All four come from params.
    """

    image_size: Required[int]
    batch_size: Required[int]
    jit_compile: Required[bool]
    engine: Required[str]


def check_files(paths: Sequence[Path | str]) -> None:
    """Refuse a list of image files of which some are missing, before any model is built.

    Raises:
        FileNotFoundError: a file does not exist (the count and one example are named).
    """
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image file(s) are missing, for example {missing[0]}: re-run the "
            f"scrape stage (dvc repro scrape) so {artifacts.POSTS.name} and "
            f"{artifacts.RAW_DIR / artifacts.RAW_IMAGES} agree"
        )


def iter_feature_batches(
    paths: Sequence[Path | str],
    extractor: keras.Model,
    *,
    image_size: int,
    batch_size: int,
    jit_compile: bool,
    engine: str,
) -> Iterator[Outputs]:
    """Yield feature batches for image files, in order (decode overlaps the forward pass).

    A batch is one array, or a dict of arrays for a dict-output extractor (`views_model`).

    The keyword arguments are those of `ForwardOptions`.

    Raises:
        FileNotFoundError: an image file does not exist.
        ValueError: an image in a batch cannot be decoded (the batch's first file is named).

    """
    import tensorflow as tf

    check_files(paths)
    if not paths:
        return
    forward = compile_forward(extractor, engine, batch_size=batch_size, jit_compile=jit_compile)
    batches = iter(image_dataset(paths, image_size, batch_size))
    start = 0
    while True:
        try:
            images = next(batches)
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError as exc:
            raise TaglensError(
                f"cannot decode an image among {len(paths) - start} files starting at "
                f"{paths[start]}: {exc.message.splitlines()[0]}"
            ) from None
        start += int(images.shape[0])
        yield forward(images)


def featurize_paths(
    paths: Sequence[Path | str],
    extractor: keras.Model,
    *,
    progress: bool = True,
    on_batch: Callable[[np.ndarray], None] | None = None,
    **options: Unpack[ForwardOptions],
) -> np.ndarray:
    """Feature vectors (N, D) float32 for image files, in order; reusable by batch predict.

    Args:
        paths: Image files in any format TensorFlow decodes.
        extractor: Raw RGB pixels (0-255) to vectors, as from `build_feature_extractor`.
        progress: Show a tqdm bar with images/s.
        on_batch: Called with each batch's vectors as soon as it is computed.
        **options: How the forward pass runs (`ForwardOptions`: image_size, batch_size,
            jit_compile and engine, all required).

    """
    chunks = []
    with progress_bar(total=len(paths), unit="img", desc="featurize", disable=not progress) as bar:
        for vectors in iter_feature_batches(paths, extractor, **options):
            chunks.append(vectors)
            if on_batch is not None:
                on_batch(vectors)
            bar.update(len(vectors))
    if not chunks:
        return np.zeros((0, int(extractor.output_shape[-1])), dtype="float32")
    return np.concatenate(chunks).astype("float32", copy=False)

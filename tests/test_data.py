"""Data loading: the bundled MNIST, tfds via mock data, and clear refusals."""

import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.conftest import fake_tfds
from vae_jax.data import (
    Splits,
    binarize_once,
    check_data,
    check_disjoint,
    load_mnist,
    load_mnist_labels,
    load_tfds,
)


def test_bundled_mnist_is_the_classic_split():
    splits = load_mnist()
    assert [s.shape for s in splits] == [(50_000, 784), (10_000, 784), (10_000, 784)]
    for s in splits:
        assert s.dtype == np.float32 and s.min() == 0.0 and s.max() == 1.0
    assert 0.1 < splits.train.mean() < 0.15  # mean MNIST intensity is about 0.13


def test_mnist_intensities_are_bytes_over_255_by_default_and_over_256_on_request():
    k255, k256 = load_mnist(), load_mnist(intensity="k256")
    for x255, x256 in zip(k255, k256, strict=True):
        k = np.rint(x256.astype(np.float64) * 256)
        np.testing.assert_array_equal(x256, (k / 256).astype(np.float32))  # the pickle's own
        assert x256.max() == np.float32(255 / 256)
        # exactly what the papers' code computes: (bytes / 255.0).astype(float32)
        np.testing.assert_array_equal(x255, (k / 255.0).astype(np.float32))
        assert x255.max() == 1.0
    with pytest.raises(ValueError, match="unknown MNIST intensity 'k254'"):
        load_mnist(intensity="k254")


def test_burda_split_is_the_first_59600_training_images_then_400_for_validation():
    classic, burda = load_mnist(), load_mnist(split="burda")
    assert [s.shape[0] for s in burda] == [59_600, 400, 10_000]
    sixty_k = np.concatenate([classic.train, classic.valid])
    np.testing.assert_array_equal(burda.train, sixty_k[:59_600])
    np.testing.assert_array_equal(burda.valid, sixty_k[59_600:])
    np.testing.assert_array_equal(burda.test, classic.test)
    # The pickle's train split starts as the raw training file does (labels 5 0 4 1 9 ...).
    np.testing.assert_array_equal(load_mnist_labels().train[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    with pytest.raises(ValueError, match="unknown MNIST split 'paper'"):
        load_mnist(split="paper")


@pytest.mark.parametrize("split", ["classic", "burda"])
def test_mnist_splits_share_no_image(split):
    check_disjoint(load_mnist(split=split), split)  # raises if any row is in two splits


def test_overlapping_splits_are_named():
    x = np.arange(20, dtype=np.float32).reshape(10, 2) / 20
    with pytest.raises(ValueError, match="2 images of the test split are also in the train split"):
        check_disjoint(Splits(x[:6], x[6:8], x[4:6]), "x")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_tfds_image_dataset_through_data_source(name):
    with tfds.testing.mock_data(num_examples=9):
        x = load_tfds(name, "train")
    assert x.shape == (9, 784) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5  # scaled from 0..255


def test_unprepared_tfds_dataset_fails_fast_with_instructions_that_work(tmp_path):
    # A plain `tfds build` writes TFRECORD, which tfds.data_source cannot read, and
    # needs TensorFlow, which is not installed: the advice must say both.
    with pytest.raises(FileNotFoundError) as missing:
        load_tfds("mnist", "train", data_dir=str(tmp_path))
    message = str(missing.value)
    assert "\n" not in message  # one line, not tfds's own multi-line guess
    assert f"not prepared in {tmp_path}" in message
    assert "TensorFlow" in message and "TFRECORD" in message
    assert "--config.data.tfds_data_dir=DIR" in message
    # The advised command is one the tfds CLI (tensorflow_datasets 4.9.10) parses,
    # and it asks for array_record, the format tfds.data_source reads.
    from tensorflow_datasets.scripts.cli import build, cli_utils

    command = re.search(r"`(tfds build [^`]*)`", message).group(1).split()
    assert command[:3] == ["tfds", "build", "mnist"]
    parser = cli_utils.ArgumentParser(allow_abbrev=False)
    parser.add_arguments(build.Args, dest="args")
    args = parser.parse_args(command[2:]).args
    assert args.generation.file_format == "array_record" and str(args.paths.data_dir) == "DIR"
    with pytest.raises(FileNotFoundError, match="tfds has no dataset named 'mnits'"):
        load_tfds("mnits", "train", data_dir=str(tmp_path))


@pytest.mark.parametrize(
    "x,match",
    [
        (np.full((3, 4), np.nan), "NaN"),
        (np.full((3, 4), 1.5), r"values in \[0, 1\]"),
        (-np.ones((3, 4)), r"values in \[0, 1\]"),
        (np.zeros((3, 4, 1)), r"shape \[N, D\]"),
        (np.zeros((0, 4)), "no examples"),
    ],
)
def test_check_data_names_the_problem(x, match):
    with pytest.raises(ValueError, match=match):
        check_data(x, "x", "bernoulli")


def test_gaussian_likelihood_accepts_real_values():
    check_data(np.full((3, 4), -2.5), "x", "gaussian")


def test_fixed_binarisation_is_reproducible_and_unbiased():
    x = np.full((200, 50), 0.3, np.float32)
    bits = binarize_once(5, x)
    np.testing.assert_array_equal(bits, binarize_once(5, x))
    assert set(np.unique(bits)) == {0.0, 1.0}
    assert abs(bits.mean() - 0.3) < 0.01  # 5 standard errors at n = 1e4


def test_mnist_is_read_once_and_no_caller_can_change_it():
    first, again = load_mnist(), load_mnist()
    assert again.train is first.train and load_mnist_labels().test.shape == (10_000,)
    with pytest.raises(ValueError, match="read-only"):
        first.train[0, 0] = 0.5


def test_tfds_splits_must_be_disjoint():
    from experiments import factory
    from experiments.cli import UserError
    from experiments.configs.base import base_config

    config = base_config()
    config.data.source, config.data.tfds_name = "tfds", "mnist"
    config.eval.plots = False
    with fake_tfds(num_train=40, num_test=30):
        config.data.tfds_splits = ("train[:20]", "train[20:]", "test")
        splits = factory.load_data(config)
        assert [s.shape[0] for s in splits] == [20, 20, 30]
        config.data.tfds_splits = ("train[:20]", "train[15:]", "test")
        with pytest.raises(UserError, match="5 images of the valid split are also in the train"):
            factory.load_data(config)


def test_binarization_entropy_is_the_bernoulli_entropy_summed_over_pixels():
    from vae_jax.data import binarization_entropy

    x = np.array([[0.5, 0.5, 0.0, 1.0], [0.1, 0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(
        binarization_entropy(x), [2 * np.log(2), -(0.1 * np.log(0.1) + 0.9 * np.log(0.9))]
    )
    # MNIST's bits at k/256 carry more noise than at k/255, never less
    k255, k256 = load_mnist().test[:500], load_mnist(intensity="k256").test[:500]
    assert np.all(binarization_entropy(k256) > binarization_entropy(k255))

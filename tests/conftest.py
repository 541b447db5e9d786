"""Test-wide settings.

* Implicit rank promotion is an error (it hides [B] vs [B, 1] bugs).
* Compiled programs are cached on disk (JAX's persistent compilation cache) and
  shared by every test, pytest-xdist worker and subprocess: many tests train the
  same smoke config, whose programs then compile once. The cache is keyed by the
  program and the JAX version, so a stale entry is never used; it lives in the
  system's temporary directory, outside the repository.
* XLA compiles for speed of compilation, not of the program: the tests run tiny
  models, and most of the suite's time went to compiling. LLVM's optimisation
  level 0 and XLA CPU's older fusion path took `pytest -n 2` from 6 min 14 s to
  3 min 43 s (empty cache, 2 idle cores). The programs compute the same maths, and
  every comparison in the suite is between runs compiled the same way.
  Subprocesses inherit the flags; code that sets XLA_FLAGS for a child appends.
"""

import os
import tempfile
from pathlib import Path

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import jax  # noqa: E402  (XLA reads its flags when the CPU backend starts)
import pytest  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "vae_jax_test_compilation_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(CACHE))  # subprocesses too
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)


PPCA_D, PPCA_L = 12, 3


@pytest.fixture
def ppca():
    """Probabilistic PCA with a diagonal exact posterior, and 8 data points."""
    from vae_jax import linear_gaussian as lg

    model = lg.make_linear_gaussian(PPCA_D, PPCA_L)
    theta = lg.init_orthogonal_theta(jax.random.key(0), PPCA_D, PPCA_L, noise_scale=0.7)
    x_NxD = jax.random.normal(jax.random.key(1), (8, PPCA_D)) * 1.5
    return model, theta, x_NxD


def tied_and_untied(data_dim: int, latent_dim: int, hidden: int, kind: str):
    """A VAE whose encoder and decoder share one kernel (``tie_weights=kind``), and an
    untied one from the same key with its two copies of that kernel set equal: one
    function, two parameterisations, for comparing gradients.

    Returns ``(tied, theta_t, phi_t), (untied, theta_u, phi_u), (decoder_layer,
    encoder_layer)``."""
    from vae_jax.models import make_vae

    tied = make_vae(data_dim, latent_dim, (hidden,), tie_weights=kind)
    untied = make_vae(data_dim, latent_dim, (hidden,))
    theta_t, phi_t = tied.init(jax.random.key(0))
    theta_u, phi_u = untied.init(jax.random.key(0))
    dec, enc = tied.tying.decoder_layer, tied.tying.encoder_layer
    theta_u["p_x_given_z"][dec]["kernel"] = phi_u["q_z_given_x"][enc]["kernel"].T
    return (tied, theta_t, phi_t), (untied, theta_u, phi_u), (dec, enc)


def fake_tfds(num_train: int = 40, num_test: int = 30):
    """``tfds.testing.mock_data`` whose splits hold different images and honour slices
    (``train[:20]``): tfds's own mock yields the same examples for every split, so
    it cannot show which images a run trained on."""
    import re

    import numpy as np
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(0)
    images = {
        name: rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
        for name, n in (("train", num_train), ("test", num_test))
    }

    def as_data_source(self, split, **kwargs):
        del self, kwargs
        name, start, stop = re.fullmatch(r"(\w+)(?:\[(-?\d*):(-?\d*)\])?", split).groups()
        rows = images[name][int(start) if start else None : int(stop) if stop else None]
        return [{"image": image, "label": 0} for image in rows]

    return tfds.testing.mock_data(as_data_source_fn=as_data_source)

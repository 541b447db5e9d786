"""Test-wide settings: implicit rank promotion is an error (it hides [B] vs [B, 1] bugs)."""

import jax
import pytest

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

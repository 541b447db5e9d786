"""Distributions against jax.scipy.stats, Monte Carlo, and extreme inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy import stats

from vae_jax.distributions import (
    Bernoulli,
    DiagonalGaussian,
    StandardNormal,
    kl_divergence,
    kl_divergence_per_dim,
    softplus,
)
from vae_jax.networks import LOG_SCALE_BOUND, make_gaussian_mlp


def _gaussian(key, shape=(5,)):
    loc_key, scale_key = jax.random.split(key)
    return DiagonalGaussian(
        jax.random.normal(loc_key, shape), 0.5 * jax.random.normal(scale_key, shape)
    )


def test_gaussian_log_prob_matches_scipy(key):
    q = _gaussian(key)
    x = jax.random.normal(jax.random.fold_in(key, 1), (7, 5))
    expected = jnp.sum(stats.norm.logpdf(x, q.loc[None, :], q.scale[None, :]), axis=-1)
    np.testing.assert_allclose(q.log_prob(x), expected, rtol=1e-5)


def test_standard_normal_log_prob_matches_scipy(key):
    z = jax.random.normal(key, (4, 3))
    np.testing.assert_allclose(
        StandardNormal(3).log_prob(z), jnp.sum(stats.norm.logpdf(z), axis=-1), rtol=1e-6
    )


def test_bernoulli_log_prob_matches_scipy(key):
    logits = 3.0 * jax.random.normal(key, (6, 10))
    x = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, (6, 10)).astype(jnp.float32)
    expected = jnp.sum(stats.bernoulli.logpmf(x, jax.nn.sigmoid(logits)), axis=-1)
    np.testing.assert_allclose(Bernoulli(logits).log_prob(x), expected, rtol=1e-5)


def test_bernoulli_log_prob_is_exact_for_saturated_logits():
    # log(sigmoid(-200)) underflows to -inf in float32; the stable form gives -200.
    logits = jnp.array([-200.0, 200.0])
    np.testing.assert_allclose(Bernoulli(logits).log_prob(jnp.array([1.0, 0.0])), -400.0)
    np.testing.assert_allclose(Bernoulli(logits).log_prob(jnp.array([0.0, 1.0])), 0.0, atol=1e-6)


def test_bernoulli_sample_mean_is_sigmoid_of_logits(key):
    logits = jnp.array([-3.0, -0.5, 0.0, 1.0, 4.0])
    samples = Bernoulli(logits).sample(key, (200_000,))
    # 5 standard errors of a Bernoulli mean at n = 2e5 is at most 0.0056.
    np.testing.assert_allclose(samples.mean(0), jax.nn.sigmoid(logits), atol=0.0056)


def test_gaussian_sample_moments(key):
    q = _gaussian(jax.random.fold_in(key, 3))
    z = q.sample(key, (200_000,))
    np.testing.assert_allclose(z.mean(0), q.loc, atol=5 * float(q.scale.max()) / np.sqrt(2e5))
    np.testing.assert_allclose(z.std(0), q.scale, rtol=0.01)


@pytest.mark.parametrize("prior", ["standard", "gaussian"])
def test_analytic_kl_matches_monte_carlo(key, prior):
    q = _gaussian(key)
    p = StandardNormal(5) if prior == "standard" else _gaussian(jax.random.fold_in(key, 9))
    z = q.sample(jax.random.fold_in(key, 1), (400_000,))
    log_ratio = q.log_prob(z) - p.log_prob(z)
    standard_error = float(log_ratio.std()) / np.sqrt(z.shape[0])
    assert abs(float(log_ratio.mean() - kl_divergence(q, p))) < 5 * standard_error


def test_kl_per_dim_sums_to_kl_and_is_zero_at_the_prior(key):
    q = _gaussian(key)
    np.testing.assert_allclose(
        kl_divergence_per_dim(q, StandardNormal(5)).sum(), kl_divergence(q, StandardNormal(5))
    )
    zero = DiagonalGaussian(jnp.zeros(5), jnp.zeros(5))
    np.testing.assert_allclose(kl_divergence(zero, StandardNormal(5)), 0.0, atol=1e-7)


def test_no_analytic_kl_for_bernoulli_is_a_clear_error():
    with pytest.raises(TypeError, match="no analytic KL"):
        kl_divergence(Bernoulli(jnp.zeros(3)), StandardNormal(3))


def test_extreme_encoder_outputs_stay_finite(key):
    """Drive the log-scale head to +-1e6: the clamp keeps log p, KL and grads finite."""
    encoder = make_gaussian_mlp(4, 3, (8,))
    tree = encoder.init(key)
    x = jnp.array([1e30, -1e30, 0.0, 1.0])
    for bias in (1e6, -1e6):
        tree["log_scale"]["bias"] = jnp.full((3,), bias)

        def kl_and_log_prob(t):
            q = encoder.apply(t, x)
            z = q.sample(jax.random.key(1))
            return kl_divergence(q, StandardNormal(3)) + q.log_prob(z)

        value, grads = jax.value_and_grad(kl_and_log_prob)(tree)
        assert np.isfinite(value)
        assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
        assert np.all(np.abs(encoder.apply(tree, x).log_scale) <= LOG_SCALE_BOUND)


def test_softplus_equals_jax_softplus_in_value_and_gradient():
    x = jnp.concatenate([jnp.linspace(-120.0, 120.0, 10_001), jnp.array([0.0, -1e30, 1e30])])
    np.testing.assert_allclose(softplus(x), jax.nn.softplus(x), rtol=1e-6, atol=0)
    np.testing.assert_allclose(
        jax.vmap(jax.grad(softplus))(x), jax.nn.sigmoid(x), rtol=1e-6, atol=1e-30
    )

"""Every estimator against the exact answers of probabilistic PCA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import linear_gaussian as lg
from vae_jax.distributions import DiagonalGaussian
from vae_jax.objectives import (
    log_importance_weights,
    make_elbo,
    make_iwae_bound,
    make_log_marginal_likelihood,
)


@pytest.fixture
def bed(ppca):
    return ppca


def _perturbed_phi(phi, key, size):
    return lg.perturbed_posterior_phi(phi, key, size)


def test_exact_posterior_phi_reproduces_the_closed_form_posterior(bed):
    model, theta, x_NxD = bed
    phi = lg.exact_posterior_phi(theta)
    for x in x_NxD:
        mean, cov = lg.exact_posterior(theta, x)
        q = model.posterior(phi, x)
        np.testing.assert_allclose(q.loc, mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(jnp.diag(q.variance), cov, rtol=1e-5, atol=1e-6)


def test_exact_posterior_phi_refuses_a_correlated_posterior(bed):
    _, theta, _ = bed
    kernel = theta["p_x_given_z"]["loc"]["kernel"]
    theta["p_x_given_z"]["loc"]["kernel"] = kernel.at[0].add(
        kernel[1]
    )  # columns no longer orthogonal
    with pytest.raises(ValueError, match="not diagonal"):
        lg.exact_posterior_phi(theta)


def test_elbo_with_the_exact_posterior_equals_log_p_x(bed):
    """log p(x, z) - log q(z|x) = log p(x) for EVERY z when q = p(z|x)."""
    model, theta, x_NxD = bed
    phi = lg.exact_posterior_phi(theta)
    elbo = make_elbo(model, num_samples=16, kl="sample")
    for i, x in enumerate(x_NxD):
        exact = lg.log_marginal_likelihood(theta, x)
        value, _ = elbo(jax.random.key(i), theta, phi, x)
        assert abs(float(value - exact)) < 1e-4
        assert abs(float(lg.closed_form_elbo(theta, model.posterior(phi, x), x) - exact)) < 1e-4


def test_any_other_q_gives_a_strictly_lower_elbo(bed):
    model, theta, x_NxD = bed
    phi = lg.exact_posterior_phi(theta)
    for i, x in enumerate(x_NxD):
        exact = lg.log_marginal_likelihood(theta, x)
        for size in (1e-2, 0.1, 1.0):
            q = model.posterior(_perturbed_phi(phi, jax.random.key(100 + i), size), x)
            assert float(lg.closed_form_elbo(theta, q, x)) < float(exact)


@pytest.mark.parametrize("kl", ["analytic", "sample"])
def test_monte_carlo_elbo_is_unbiased_for_the_closed_form(bed, kl):
    model, theta, x_NxD = bed
    phi = _perturbed_phi(lg.exact_posterior_phi(theta), jax.random.key(7), 0.5)
    x = x_NxD[0]
    elbo = make_elbo(model, num_samples=1, kl=kl)
    values = jax.vmap(lambda k: elbo(k, theta, phi, x)[0])(
        jax.random.split(jax.random.key(3), 20_000)
    )
    standard_error = float(values.std()) / np.sqrt(values.shape[0])
    exact = lg.closed_form_elbo(theta, model.posterior(phi, x), x)
    assert abs(float(values.mean() - exact)) < 5 * standard_error + 1e-5


def test_importance_sampled_log_p_x_within_0_05_nats(bed):
    model, theta, x_NxD = bed
    # q is wrong enough that the ELBO misses log p(x) by 0.31 nats; IS must close the gap.
    phi = _perturbed_phi(lg.exact_posterior_phi(theta), jax.random.key(11), 0.1)
    log_p_x = jax.jit(make_log_marginal_likelihood(model, num_samples=5000, chunk_size=500))
    gaps, elbo_gaps = [], []
    for i, x in enumerate(x_NxD):
        exact = float(lg.log_marginal_likelihood(theta, x))
        gaps.append(abs(float(log_p_x(jax.random.key(i), theta, phi, x)) - exact))
        elbo_gaps.append(exact - float(lg.closed_form_elbo(theta, model.posterior(phi, x), x)))
    assert max(gaps) < 0.05, gaps
    assert np.mean(elbo_gaps) > 0.25, "q too close to exact: the test would prove nothing"


def test_iwae_bound_is_non_decreasing_in_k(bed):
    model, theta, x_NxD = bed
    phi = _perturbed_phi(lg.exact_posterior_phi(theta), jax.random.key(5), 0.6)
    x = x_NxD[2]
    exact = float(lg.log_marginal_likelihood(theta, x))
    keys = jax.random.split(jax.random.key(4), 4000)
    means, errors = [], []
    for k in (1, 2, 5, 20, 100):
        bound = make_iwae_bound(model, k)
        values = jax.jit(jax.vmap(lambda key, b=bound: b(key, theta, phi, x)[0]))(keys)
        means.append(float(values.mean()))
        errors.append(float(values.std()) / np.sqrt(keys.shape[0]))
    for k_index in range(len(means) - 1):
        # a decrease beyond 3 combined standard errors would contradict Burda et al., thm 1
        tolerance = 3 * np.hypot(errors[k_index], errors[k_index + 1])
        assert means[k_index + 1] >= means[k_index] - tolerance, means
    assert means[-1] - means[0] > 0.3, means  # the bound really tightened
    assert means[-1] <= exact + 3 * errors[-1]


def test_chunked_estimator_is_the_logsumexp_of_its_chunks(bed):
    """7 samples in chunks of 3: the masked last chunk contributes exactly one sample."""
    model, theta, x_NxD = bed
    phi = _perturbed_phi(lg.exact_posterior_phi(theta), jax.random.key(2), 0.3)
    x, key = x_NxD[0], jax.random.key(9)
    chunked = make_log_marginal_likelihood(model, num_samples=7, chunk_size=3)(key, theta, phi, x)
    log_w = jnp.concatenate(
        [
            log_importance_weights(jax.random.fold_in(key, i), model, theta, phi, x, 3)
            for i in range(3)
        ]
    )[:7]
    np.testing.assert_allclose(chunked, jax.nn.logsumexp(log_w) - np.log(7), rtol=1e-6)


def test_estimator_memory_does_not_grow_with_the_number_of_samples(bed):
    model, theta, x_NxD = bed
    phi = lg.exact_posterior_phi(theta)

    def temp_bytes(num_samples):
        fn = make_log_marginal_likelihood(model, num_samples=num_samples, chunk_size=100)
        compiled = jax.jit(fn).lower(jax.random.key(0), theta, phi, x_NxD[0]).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes(100_000) == temp_bytes(1_000)


def test_closed_form_elbo_matches_kl_to_the_exact_posterior(bed):
    """ELBO(q) = log p(x) - KL(q || p(z|x)): the gap is the KL to the true posterior."""
    model, theta, x_NxD = bed
    phi = lg.exact_posterior_phi(theta)
    x = x_NxD[3]
    posterior = model.posterior(phi, x)
    q = DiagonalGaussian(posterior.loc + 0.3, posterior.log_scale - 0.2)
    from vae_jax.distributions import kl_divergence

    gap = lg.log_marginal_likelihood(theta, x) - lg.closed_form_elbo(theta, q, x)
    np.testing.assert_allclose(gap, kl_divergence(q, posterior), rtol=1e-4)

"""The aggregate posterior <q(z|x)>_x against exact answers."""

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import linear_gaussian as lg
from vae_jax.evaluate import aggregate_posterior_moments, make_posterior_moment_sums
from vae_jax.local import encoder_outputs

D, L, N = 10, 3, 40_000


def _ppca_data():
    model = lg.make_linear_gaussian(D, L)
    theta = lg.init_orthogonal_theta(jax.random.key(0), D, L, noise_scale=0.6)
    z_key, noise_key = jax.random.split(jax.random.key(1))
    z = jax.random.normal(z_key, (N, L))
    x = model.likelihood(theta, z).sample(noise_key)  # x ~ p(x), through the model
    return model, theta, np.asarray(x)


def test_exact_posterior_averaged_over_the_model_data_is_the_prior():
    """E_{p(x)}[p(z|x)] = p(z): the aggregate posterior matches N(0, I) when q is exact."""
    model, theta, x = _ppca_data()
    phi = lg.exact_posterior_phi(theta)
    moments = aggregate_posterior_moments(jax.jit(make_posterior_moment_sums(model)), phi, x, 777)
    # 5 standard errors at N = 4e4: mean 0.025, variance about 0.035
    np.testing.assert_allclose(moments["mean"], 0.0, atol=0.025)
    np.testing.assert_allclose(moments["variance"], 1.0, atol=0.035)
    assert moments["kl_moment_matched_to_standard_normal"] < 2e-3


def test_a_mis_scaled_encoder_shows_up_as_a_mismatch():
    model, theta, x = _ppca_data()
    phi = lg.exact_posterior_phi(theta)
    tree = phi["q_z_given_x"]
    # mean shifted by 0.5, every sigma doubled: the aggregate is N(0.5, > 1)
    shifted = {
        "q_z_given_x": {
            "loc": {"kernel": tree["loc"]["kernel"], "bias": tree["loc"]["bias"] + 0.5},
            "log_scale": tree["log_scale"] + jnp.log(2.0),
        }
    }
    moments = aggregate_posterior_moments(jax.jit(make_posterior_moment_sums(model)), shifted, x)
    np.testing.assert_allclose(moments["mean"], 0.5, atol=0.05)
    # total variance: 4 sigma^2 + Var[mu] = 1 + 3 sigma^2, since sigma^2 + Var[mu] = 1
    expected = 1.0 + 3.0 * np.exp(2.0 * np.asarray(tree["log_scale"]))
    np.testing.assert_allclose(moments["variance"], expected, atol=0.04)
    assert moments["kl_moment_matched_to_standard_normal"] > 0.5


def test_law_of_total_variance_matches_sampling_and_both_phi_forms_agree():
    model, theta, x = _ppca_data()
    phi = lg.exact_posterior_phi(theta)
    sums = jax.jit(make_posterior_moment_sums(model))
    amortised = aggregate_posterior_moments(sums, phi, x[:5000])
    local = aggregate_posterior_moments(
        sums, encoder_outputs(model, phi, jnp.asarray(x[:5000])), x[:5000]
    )
    np.testing.assert_allclose(amortised["variance"], local["variance"], rtol=1e-6)
    q = jax.vmap(lambda xi: model.posterior(phi, xi))(jnp.asarray(x[:5000]))
    z = np.asarray(q.sample(jax.random.key(3)))  # one draw from each q(z | x_n)
    np.testing.assert_allclose(z.var(0), amortised["variance"], rtol=0.06)
    np.testing.assert_allclose(z.mean(0), amortised["mean"], atol=0.05)


def test_aggregate_kl_of_identical_data_is_the_analytic_kl():
    """All x equal: q_agg is the single Gaussian q(z|x), so the estimate is KL(q || p)."""
    from vae_jax.distributions import StandardNormal, kl_divergence
    from vae_jax.evaluate import make_aggregate_kl

    model, theta, x = _ppca_data()
    phi = lg.exact_posterior_phi(theta)
    same = np.repeat(x[:1], 700, axis=0)  # 700: not a multiple of the chunk (masking)
    kl, se = jax.jit(make_aggregate_kl(model, num_z=4000, chunk_size=256))(
        jax.random.key(0), theta, phi, jnp.asarray(same)
    )
    exact = kl_divergence(model.posterior(phi, jnp.asarray(x[0])), StandardNormal(L))
    assert abs(float(kl - exact)) < 5 * float(se) + 1e-4


def test_aggregate_kl_is_small_when_the_posterior_is_exact_and_grows_when_shifted():
    from vae_jax.evaluate import make_aggregate_kl

    model, theta, x = _ppca_data()
    phi = lg.exact_posterior_phi(theta)
    kl_fn = jax.jit(make_aggregate_kl(model, num_z=2000, chunk_size=1000))
    kl_exact, _ = kl_fn(jax.random.key(0), theta, phi, jnp.asarray(x[:8000]))
    tree = phi["q_z_given_x"]
    shifted = {
        "q_z_given_x": {
            "loc": {"kernel": tree["loc"]["kernel"], "bias": tree["loc"]["bias"] + 0.5},
            "log_scale": tree["log_scale"],
        }
    }
    kl_shifted, _ = kl_fn(jax.random.key(0), theta, shifted, jnp.asarray(x[:8000]))
    assert float(kl_exact) < 0.05
    # a mean shift of 0.5 per dim costs at least L * 0.5^2 / 2 = 0.375 nats
    assert float(kl_shifted) > 0.3

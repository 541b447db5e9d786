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

"""Wake-sleep: each tree gets its own phase's gradient, and sleep finds the posterior."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.conftest import PPCA_L, tied_and_untied
from vae_jax import linear_gaussian as lg
from vae_jax.wake_sleep import make_wake_sleep


def test_theta_gets_the_wake_gradient_and_phi_the_sleep_gradient(ppca):
    model, theta, x_NxD = ppca
    phi = lg.perturbed_posterior_phi(lg.exact_posterior_phi(theta), jax.random.key(2), 0.3)
    x, key = x_NxD[0], jax.random.key(3)
    objective = make_wake_sleep(model)
    g_theta, g_phi = jax.grad(lambda t, p: objective(key, t, p, x)[0], argnums=(0, 1))(theta, phi)

    wake_key, dream_z_key, dream_x_key = jax.random.split(key, 3)
    z = model.posterior(phi, x).sample(wake_key)
    wake = jax.grad(
        lambda t: model.prior(t, phi).log_prob(z) + model.likelihood(t, z, phi).log_prob(x)
    )
    z_d = model.prior(theta, phi).sample(dream_z_key)
    x_d = model.likelihood(theta, z_d, phi).sample(dream_x_key)
    sleep = jax.grad(lambda p: model.posterior(p, x_d).log_prob(z_d))
    for got, want in ((g_theta, wake(theta)), (g_phi, sleep(phi))):
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want
        )


def test_sleep_alone_fits_the_exact_posterior_of_a_fixed_model(ppca):
    """With theta fixed, the sleep phase's optimum is p(z|x) when q's family holds it."""
    model, theta, _ = ppca
    exact = lg.exact_posterior_phi(theta)
    phi = lg.perturbed_posterior_phi(exact, jax.random.key(4), 0.5)
    objective = jax.vmap(make_wake_sleep(model), in_axes=(0, None, None, 0))
    optimizer = optax.adam(optax.cosine_decay_schedule(2e-2, 1500))  # decay: SGD noise
    x_dummy = jnp.zeros((256, model.data_dim))  # sleep never reads the data

    @jax.jit
    def step(phi, opt_state, key):
        keys = jax.random.split(key, 256)
        grads = jax.grad(lambda p: -jnp.mean(objective(keys, theta, p, x_dummy)[0]))(phi)
        updates, opt_state = optimizer.update(grads, opt_state, phi)
        return optax.apply_updates(phi, updates), opt_state

    opt_state = optimizer.init(phi)
    for t in range(1500):
        phi, opt_state = step(phi, opt_state, jax.random.key(t))
    x = jax.random.normal(jax.random.key(5), (20, model.data_dim))
    q_fit = jax.vmap(model.posterior, in_axes=(None, 0))(phi, x)
    q_exact = jax.vmap(model.posterior, in_axes=(None, 0))(exact, x)
    q_start = jax.vmap(model.posterior, in_axes=(None, 0))(
        lg.perturbed_posterior_phi(exact, jax.random.key(4), 0.5), x
    )
    start_error = float(jnp.max(jnp.abs(q_start.loc - q_exact.loc)))
    assert float(jnp.max(jnp.abs(q_fit.loc - q_exact.loc))) < 0.1 * start_error
    np.testing.assert_allclose(q_fit.log_scale, q_exact.log_scale, atol=0.05)
    assert q_fit.loc.shape == (20, PPCA_L)


@pytest.mark.parametrize("kind", ["x_layers", "z_layers"])
def test_a_tied_kernel_gets_the_wake_gradient_of_its_decoder_use(kind):
    """Tied model vs an untied one whose two copies are held equal: the stored tensor's
    gradient = sleep gradient of the encoder copy + wake gradient of the decoder copy."""
    D, L, H, B = 24, 3, 7, 5
    (tied, theta_t, phi_t), (untied, theta_u, phi_u), (dec, enc) = tied_and_untied(D, L, H, kind)
    x_BxD = (jax.random.uniform(jax.random.key(9), (B, D)) < 0.4).astype(jnp.float32)
    keys = jax.random.split(jax.random.key(1), B)

    def value_and_grads(model, theta, phi):
        objective = jax.vmap(make_wake_sleep(model), in_axes=(0, None, None, 0))
        surrogate_fn = lambda t, p: jnp.mean(objective(keys, t, p, x_BxD)[0])  # noqa: E731
        return jax.value_and_grad(surrogate_fn, argnums=(0, 1))(theta, phi)

    value_t, (g_theta_t, g_phi_t) = value_and_grads(tied, theta_t, phi_t)
    value_u, (g_theta_u, g_phi_u) = value_and_grads(untied, theta_u, phi_u)
    np.testing.assert_allclose(value_t, value_u, rtol=1e-6)
    wake_u = g_theta_u["p_x_given_z"][dec]["kernel"].T
    sleep_u = g_phi_u["q_z_given_x"][enc]["kernel"]
    assert float(jnp.max(jnp.abs(wake_u))) > 1e-3  # the wake part is not negligible
    np.testing.assert_allclose(
        g_phi_t["q_z_given_x"][enc]["kernel"], sleep_u + wake_u, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        g_theta_t["p_x_given_z"][dec]["bias"], g_theta_u["p_x_given_z"][dec]["bias"], rtol=1e-5
    )

"""Wake-sleep: each tree gets its own phase's gradient, and sleep finds the posterior."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tests.conftest import PPCA_L
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
    wake = jax.grad(lambda t: model.prior(t).log_prob(z) + model.likelihood(t, z).log_prob(x))
    z_d = model.prior(theta).sample(dream_z_key)
    x_d = model.likelihood(theta, z_d).sample(dream_x_key)
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

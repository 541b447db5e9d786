"""Re-alignment of latent coordinates and prior refits, against what they must preserve."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax.distributions import DiagonalGaussian, StandardNormal
from vae_jax.evaluate import aggregate_posterior_moments, make_posterior_moment_sums
from vae_jax.models import make_vae
from vae_jax.objectives import log_importance_weights, make_elbo
from vae_jax.realign import (
    em_mixture_prior,
    make_adjustment,
    moment_matched_prior,
    posterior_moments,
    realign,
    with_adjustment,
)
from vae_jax.schema import encoder_outputs

D, L, N = 30, 4, 400


def _trained_looking(hidden_sizes, prior="standard_normal"):
    """A small VAE whose aggregate posterior is far from N(0, I): shifted and scaled."""
    model = make_vae(D, L, hidden_sizes, prior=prior, prior_components=3, log_scale_shift=True)
    theta, phi = model.init(jax.random.key(0))
    encoder = phi["q_z_given_x"]
    # Move the encoder's output off the prior: means near 3, spread x4, sigmas x0.2.
    encoder["loc"] = {
        "kernel": 4.0 * encoder["loc"]["kernel"],
        "bias": encoder["loc"]["bias"] + 3.0,
    }
    encoder["log_scale"]["bias"] = encoder["log_scale"]["bias"] - 1.6
    x = (jax.random.uniform(jax.random.key(1), (N, D)) < 0.3).astype(jnp.float32)
    return model, theta, phi, x


def _moments(model, phi, x):
    return aggregate_posterior_moments(jax.jit(make_posterior_moment_sums(model)), phi, x, 128)


@pytest.mark.parametrize("hidden_sizes", [(16,), ()])
def test_decoder_is_unchanged_at_corresponding_latents(hidden_sizes):
    model, theta, phi, x = _trained_looking(hidden_sizes)
    moments = _moments(model, phi, x)
    new_theta, new_phi = realign(theta, phi, moments)
    z_new = np.asarray(jax.random.normal(jax.random.key(2), (50, L)))
    z_old = moments["mean"] + np.sqrt(moments["variance"]) * z_new
    np.testing.assert_allclose(
        model.likelihood(new_theta, z_new, new_phi).logits,
        model.likelihood(theta, z_old, phi).logits,
        rtol=1e-4,
        atol=1e-4,
    )
    # and the encoder's q moved by exactly the same map
    q_old = jax.tree_util.tree_map(np.asarray, jax.vmap(model.posterior, in_axes=(None, 0))(phi, x))
    q_new = jax.vmap(model.posterior, in_axes=(None, 0))(new_phi, x)
    s = np.sqrt(moments["variance"])
    np.testing.assert_allclose(q_new.loc, (q_old.loc - moments["mean"]) / s, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(q_new.log_scale, q_old.log_scale - np.log(s), atol=1e-5)


def test_aggregate_moments_become_zero_and_one():
    model, theta, phi, x = _trained_looking((16,))
    before = _moments(model, phi, x)
    assert before["kl_moment_matched_to_standard_normal"] > 10.0  # the set-up is off the prior
    _, new_phi = realign(theta, phi, before)
    after = _moments(model, new_phi, x)
    np.testing.assert_allclose(after["mean"], 0.0, atol=1e-5)
    np.testing.assert_allclose(after["variance"], 1.0, rtol=1e-5)
    assert after["kl_moment_matched_to_standard_normal"] < 1e-8


def test_reconstruction_term_is_unchanged_and_kl_is_what_moves():
    model, theta, phi, x = _trained_looking((16,))
    moments = _moments(model, phi, x)
    new_theta, new_phi = realign(theta, phi, moments)
    elbo = make_elbo(model, num_samples=4)  # the same key draws corresponding z and z'
    keys = jax.random.split(jax.random.key(3), N)
    _, before = jax.vmap(elbo, in_axes=(0, None, None, 0))(keys, theta, phi, x)
    _, after = jax.vmap(elbo, in_axes=(0, None, None, 0))(keys, new_theta, new_phi, x)
    np.testing.assert_allclose(after["reconstruction"], before["reconstruction"], rtol=1e-5)
    # the KL to N(0, I) falls, since the aggregate now has the prior's moments
    assert float(jnp.mean(after["kl"])) < float(jnp.mean(before["kl"])) - 5.0


def test_importance_weights_change_by_the_prior_mismatch_exactly():
    """log w' - log w = log N(z; m, s^2) - log N(z; 0, I) at corresponding samples."""
    model, theta, phi, x = _trained_looking((16,))
    moments = _moments(model, phi, x)
    new_theta, new_phi = realign(theta, phi, moments)
    key = jax.random.key(4)
    for x_n in x[:5]:
        log_w = log_importance_weights(key, model, theta, phi, x_n, 200)
        log_w_new = log_importance_weights(key, model, new_theta, new_phi, x_n, 200)
        z = model.posterior(phi, x_n).sample(key, (200,))  # the draws behind log_w
        matched = DiagonalGaussian(
            jnp.asarray(moments["mean"], jnp.float32),
            jnp.asarray(0.5 * np.log(moments["variance"]), jnp.float32),
        )
        predicted = matched.log_prob(z) - StandardNormal(L).log_prob(z)
        np.testing.assert_allclose(log_w_new - log_w, predicted, rtol=1e-4, atol=2e-3)


def test_per_datapoint_phi_realigns_row_by_row():
    model, theta, phi, x = _trained_looking((16,))
    local = encoder_outputs(model, phi, x)
    moments = _moments(model, phi, x)
    _, new_local = realign(theta, local, moments)
    _, new_phi = realign(theta, phi, moments)
    expected = encoder_outputs(model, new_phi, x)
    np.testing.assert_allclose(new_local["q_z"]["loc"], expected["q_z"]["loc"], atol=1e-4)
    np.testing.assert_allclose(
        new_local["q_z"]["log_scale"], expected["q_z"]["log_scale"], atol=1e-5
    )


def test_jitted_moments_agree_with_the_streamed_ones():
    model, _, phi, x = _trained_looking((16,))
    streamed = _moments(model, phi, x)
    in_memory = jax.jit(lambda p, x: posterior_moments(model, p, x))(phi, x)
    np.testing.assert_allclose(in_memory["mean"], streamed["mean"], rtol=1e-4)
    np.testing.assert_allclose(in_memory["variance"], streamed["variance"], rtol=1e-4)


def test_realign_needs_the_shift_leaf_built_in():
    model = make_vae(D, L, (16,))
    theta, phi = model.init(jax.random.key(0))
    moments = {"mean": jnp.zeros(L), "variance": jnp.ones(L)}
    with pytest.raises(ValueError, match="built without.*log_scale_shift=True"):
        realign(theta, phi, moments)


def test_realign_keeps_the_tree_structure():
    model, theta, phi, x = _trained_looking((16,))
    adjust = jax.jit(make_adjustment(model, "realign"))
    new_theta, new_phi = adjust(jax.random.key(0), theta, phi, x)
    assert jax.tree_util.tree_structure((new_theta, new_phi)) == jax.tree_util.tree_structure(
        (theta, phi)
    )


def test_refit_sets_a_learned_gaussian_prior_to_the_moments():
    model, theta, phi, x = _trained_looking((16,), prior="learned_gaussian")
    new_theta, new_phi = make_adjustment(model, "refit_prior")(jax.random.key(0), theta, phi, x)
    moments = _moments(model, phi, x)
    np.testing.assert_allclose(new_theta["p_z"]["loc"], moments["mean"], rtol=1e-4)
    np.testing.assert_allclose(
        new_theta["p_z"]["log_scale"], 0.5 * np.log(moments["variance"]), rtol=1e-4, atol=1e-5
    )
    assert new_phi is phi
    np.testing.assert_allclose(
        moment_matched_prior(moments)["loc"], new_theta["p_z"]["loc"], rtol=1e-5
    )


def test_em_recovers_a_known_mixture():
    """Samples of 0.3 N(-2, 0.5^2) + 0.7 N(3, 1): EM from a rough start finds them."""
    pick_key, noise_key = jax.random.split(jax.random.key(5))
    m = 20_000
    first = jax.random.uniform(pick_key, (m,)) < 0.3
    z = jnp.where(first, -2.0, 3.0) + jnp.where(first, 0.5, 1.0) * jax.random.normal(
        noise_key, (m,)
    )
    start = {
        "logits": jnp.zeros((2,)),
        "loc": jnp.array([[-1.0], [1.0]]),
        "log_scale": jnp.zeros((2, 1)),
    }
    fitted = em_mixture_prior(start, z[:, None], num_steps=50)
    np.testing.assert_allclose(jax.nn.softmax(fitted["logits"]), [0.3, 0.7], atol=0.02)
    np.testing.assert_allclose(fitted["loc"][:, 0], [-2.0, 3.0], atol=0.05)
    np.testing.assert_allclose(jnp.exp(fitted["log_scale"][:, 0]), [0.5, 1.0], atol=0.05)


def test_refit_refuses_priors_without_a_moment_update():
    for prior in ("standard_normal", "vampprior"):
        model, theta, phi, x = _trained_looking((16,), prior=prior)
        with pytest.raises(ValueError, match="refit_prior needs a learned_gaussian"):
            make_adjustment(model, "refit_prior")(jax.random.key(0), theta, phi, x)
    with pytest.raises(ValueError, match="unknown adjustment 'recentre'"):
        make_adjustment(model, "recentre")


def test_training_realigns_after_every_nth_step():
    """An epoch of 4 steps with adjust_every=4 ends realigned on the moment subset."""
    import optax

    from vae_jax.schema import params
    from vae_jax.train import init_train_state, make_amortised_step, make_train_epoch

    model, theta, phi, x = _trained_looking((16,))  # off the prior from the start
    optimizer = optax.adam(1e-3)
    start = init_train_state(jax.random.key(0), model, optimizer)
    start = start._replace(theta=theta, phi=phi, opt_state=optimizer.init(params(theta, phi)))
    step = make_amortised_step(make_elbo(model, 1), optimizer)
    realign_every = functools.partial(
        with_adjustment,
        step,
        make_adjustment(model, "realign"),
        x_MxD=x,
        dynamic_binarization=False,
    )
    epoch = jax.jit(make_train_epoch(realign_every(4), 100, N, dynamic_binarization=False))
    state, _ = epoch(start, jax.random.key(1), jnp.asarray(0), x)
    after = posterior_moments(model, state.phi, x)
    np.testing.assert_allclose(after["mean"], 0.0, atol=1e-4)
    np.testing.assert_allclose(after["variance"], 1.0, rtol=1e-4)
    # with adjust_every=5 the 4 steps never reach an adjustment: moments stay off
    epoch5 = jax.jit(make_train_epoch(realign_every(5), 100, N, dynamic_binarization=False))
    state, _ = epoch5(start, jax.random.key(1), jnp.asarray(0), x)
    assert float(jnp.max(jnp.abs(posterior_moments(model, state.phi, x)["mean"]))) > 0.5

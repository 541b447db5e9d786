"""Priors in theta["p_z"]: densities, KL selection, VampPrior's phi, freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import factory
from experiments.configs import default
from vae_jax.distributions import DiagonalGaussian, MixtureOfDiagonalGaussians
from vae_jax.models import make_vae, num_params
from vae_jax.objectives import make_elbo
from vae_jax.train import init_train_state, make_amortised_step, make_train_epoch

D, L, H = 16, 3, 8


def test_mixture_log_prob_is_the_weighted_sum_of_its_components(key):
    logits = jnp.array([0.3, -1.0, 0.5])
    loc = jax.random.normal(key, (3, L))
    log_scale = 0.3 * jax.random.normal(jax.random.fold_in(key, 1), (3, L))
    mixture = MixtureOfDiagonalGaussians(logits, loc, log_scale)
    z = jax.random.normal(jax.random.fold_in(key, 2), (7, L))
    weights = jax.nn.softmax(logits)
    expected = jnp.log(
        sum(
            weights[k] * jnp.exp(DiagonalGaussian(loc[k], log_scale[k]).log_prob(z))
            for k in range(3)
        )
    )
    np.testing.assert_allclose(mixture.log_prob(z), expected, rtol=1e-5)
    samples = mixture.sample(jax.random.fold_in(key, 3), (100_000,))
    np.testing.assert_allclose(samples.mean(0), weights @ loc, atol=0.03)  # sum_k w_k mu_k


def test_mixture_log_prob_by_matmul_is_accurate_at_vampprior_size(key):
    """K = 500 components down to sigma = e^-3: the expanded square against float64."""
    k, latent = 500, 40
    loc = np.asarray(jax.random.normal(key, (k, latent)))
    log_scale = np.asarray(
        jax.random.uniform(jax.random.fold_in(key, 1), (k, latent), minval=-3.0, maxval=0.5)
    )
    z = 1.5 * np.asarray(jax.random.normal(jax.random.fold_in(key, 2), (64, latent)))
    mixture = MixtureOfDiagonalGaussians(jnp.zeros(k), jnp.asarray(loc), jnp.asarray(log_scale))
    loc64, log_scale64, z64 = (a.astype(np.float64) for a in (loc, log_scale, z))
    log_components = -0.5 * np.sum(
        ((z64[:, None, :] - loc64[None]) * np.exp(-log_scale64[None])) ** 2
        + 2 * log_scale64[None]
        + np.log(2 * np.pi),
        axis=-1,
    )
    expected = np.logaddexp.reduce(log_components, axis=-1) - np.log(k)
    np.testing.assert_allclose(mixture.log_prob(jnp.asarray(z)), expected, atol=2e-3, rtol=1e-6)


@pytest.mark.parametrize(
    "prior,p_z_keys,analytic",
    [
        ("standard_normal", set(), 1.0),
        ("learned_gaussian", {"loc", "log_scale"}, 1.0),
        ("mixture_of_gaussians", {"logits", "loc", "log_scale"}, 0.0),
        ("vampprior", {"pseudo_inputs"}, 0.0),
    ],
)
def test_each_prior_lives_in_theta_p_z_and_kl_is_picked_automatically(prior, p_z_keys, analytic):
    model = make_vae(D, L, (H,), prior=prior, prior_components=4)
    theta, phi = model.init(jax.random.key(0))
    assert set(theta["p_z"]) == p_z_keys
    value, aux = make_elbo(model, num_samples=3)(jax.random.key(1), theta, phi, jnp.full(D, 0.5))
    assert np.isfinite(value) and float(aux["kl_is_analytic"]) == analytic
    if prior == "vampprior":
        assert theta["p_z"]["pseudo_inputs"].shape == (4, D)


def test_vampprior_density_depends_on_phi_and_refuses_per_datapoint_phi():
    model = make_vae(D, L, (H,), prior="vampprior", prior_components=5)
    theta, phi = model.init(jax.random.key(0))
    z = jnp.ones((2, L))
    other_phi = jax.tree_util.tree_map(lambda a: a * 1.5, phi)
    assert not np.allclose(
        model.prior(theta, phi).log_prob(z), model.prior(theta, other_phi).log_prob(z)
    )
    # its components are exactly the encoder's posteriors at the pseudo-inputs
    u = theta["p_z"]["pseudo_inputs"]
    q_u = model.q_z_given_x.apply(phi["q_z_given_x"], u)
    np.testing.assert_allclose(model.prior(theta, phi).loc, q_u.loc)
    with pytest.raises(ValueError, match="VampPrior is built from the amortised encoder"):
        model.prior(theta, {"q_z": {"loc": jnp.zeros(L), "log_scale": jnp.zeros(L)}})


def test_frozen_learned_gaussian_at_n01_trains_like_the_standard_prior():
    config = default.get_config("smoke")
    x = jax.random.uniform(jax.random.key(1), (60, D))

    def train(prior, freeze):
        config.model.prior, config.model.freeze_prior = prior, freeze
        model = make_vae(D, L, (H,), prior=prior)
        optimizer = factory.build_optimizer(config, 6)
        state = init_train_state(jax.random.key(0), model, optimizer)
        step = make_amortised_step(make_elbo(model), optimizer)
        epoch_fn = jax.jit(make_train_epoch(step, 10, 60))
        losses = []
        for epoch in range(3):
            state, m = epoch_fn(state, jax.random.key(2), jnp.asarray(epoch, jnp.int32), x)
            losses.append(float(m["loss"]))
        return state, losses

    frozen, frozen_losses = train("learned_gaussian", True)
    standard, standard_losses = train("standard_normal", False)
    learned, learned_losses = train("learned_gaussian", False)
    np.testing.assert_array_equal(frozen.theta["p_z"]["loc"], 0.0)
    np.testing.assert_array_equal(frozen.theta["p_z"]["log_scale"], 0.0)
    np.testing.assert_allclose(frozen_losses, standard_losses, rtol=1e-5)
    for a, b in zip(
        jax.tree_util.tree_leaves(frozen.theta["p_x_given_z"]),
        jax.tree_util.tree_leaves(standard.theta["p_x_given_z"]),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert np.any(np.asarray(learned.theta["p_z"]["loc"]) != 0.0)  # unfrozen, it moves


@pytest.mark.parametrize("prior", ["mixture_of_gaussians", "vampprior"])
def test_non_gaussian_priors_train_from_the_config(tmp_path, prior):
    from experiments.train import train_and_evaluate

    config = default.get_config("smoke")
    config.model.prior = prior
    config.model.prior_components = 5
    config.eval.plots = False
    results = train_and_evaluate(config, tmp_path)
    assert 0 < results["test_nll"] < -results["test_elbo"]
    extra = {"mixture_of_gaussians": 5 + 2 * 5 * 20, "vampprior": 5 * 784}[prior]
    plain = make_vae(784, 20, (200,))
    assert results["num_params_theta"] == num_params(plain.init(jax.random.key(0))[0]) + extra


def test_per_datapoint_q_cannot_start_at_a_mixture_prior():
    from vae_jax.schema import prior_phi

    model = make_vae(D, L, (H,), prior="mixture_of_gaussians")
    theta, _ = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match="must be Gaussian"):
        prior_phi(model, theta, 4)


def test_frozen_is_a_predicate_on_paths_the_optimiser_obeys():
    assert factory.frozen(("theta", "p_z", "loc"), freeze_prior=True)
    assert not factory.frozen(("theta", "p_z", "loc"), freeze_prior=False)
    assert not factory.frozen(("theta", "p_x_given_z", "w"), freeze_prior=True)
    assert factory.frozen(("phi", "q_z_given_x", "log_scale_shift"), freeze_prior=False)
    assert not factory.frozen(("phi", "q_z_given_x", "w"), freeze_prior=True)

    config = default.get_config("smoke")
    config.model.freeze_prior, config.model.prior = True, "learned_gaussian"
    optimizer = factory.build_optimizer(config, steps_per_epoch=10)
    tree = {
        "theta": {"p_z": {"loc": jnp.ones(2)}, "p_x_given_z": {"w": jnp.ones(2)}},
        "phi": {"q_z_given_x": {"w": jnp.ones(2), "log_scale_shift": jnp.ones(2)}},
    }
    grads = jax.tree_util.tree_map(jnp.ones_like, tree)
    updates, _ = optimizer.update(grads, optimizer.init(tree), tree)
    assert float(updates["theta"]["p_z"]["loc"].sum()) == 0
    assert float(updates["phi"]["q_z_given_x"]["log_scale_shift"].sum()) == 0
    assert float(updates["phi"]["q_z_given_x"]["w"].sum()) < 0
    assert float(updates["theta"]["p_x_given_z"]["w"].sum()) < 0

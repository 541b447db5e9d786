"""Two stochastic layers (issue 13): exact answers on a linear-Gaussian chain.

The chain z2 -> z1 -> x with affine maps has a Gaussian marginal, and its posterior
factorises as p(z1 | x) p(z2 | z1) inside the model's family of q's
(vae_jax.linear_gaussian). So the ELBO at that q is log p(x) for every draw, and
IS with a perturbed q converges to it: the one-layer objectives, unchanged, are
right on a chain.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import linear_gaussian as lg
from vae_jax.models import make_chain_vae
from vae_jax.objectives import (
    batch_objective,
    log_importance_weights,
    make_elbo,
    make_iwae_bound,
    make_log_marginal_likelihood,
)
from vae_jax.schema import is_amortised

D, L = 10, 3


@pytest.fixture(scope="module")
def chain():
    model = lg.make_linear_gaussian_chain(D, L)
    theta = lg.init_chain_theta(jax.random.key(0), D, L)
    z_key, x_key = jax.random.split(jax.random.key(1))
    z_NxL = model.prior(theta, {}).sample(z_key, (6,))
    x_NxD = model.likelihood(theta, z_NxL, {}).sample(x_key)
    return model, theta, x_NxD


def test_exact_posterior_makes_every_importance_weight_log_p_x(chain):
    model, theta, x_NxD = chain
    phi = lg.exact_chain_posterior_phi(theta)
    for x in x_NxD:
        exact = lg.chain_log_marginal_likelihood(theta, x)
        log_w = log_importance_weights(jax.random.key(2), model, theta, phi, x, 50)
        np.testing.assert_allclose(log_w, exact, atol=2e-4)
        elbo, aux = make_elbo(model, 1)(jax.random.key(3), theta, phi, x)
        np.testing.assert_allclose(elbo, exact, atol=2e-4)
        assert float(aux["kl_is_analytic"]) == 0.0  # a chain's KL is sampled


def test_a_wrong_link_breaks_the_equality(chain):
    """The test above can fail: a q(z2 | z1) off by 0.3 in its mean moves log w."""
    model, theta, x_NxD = chain
    phi = lg.exact_chain_posterior_phi(theta)
    bias = phi["q_z2_given_z1"]["loc"]["bias"]
    wrong = {
        **phi,
        "q_z2_given_z1": {
            **phi["q_z2_given_z1"],
            "loc": {**phi["q_z2_given_z1"]["loc"], "bias": bias + 0.3},
        },
    }
    log_w = log_importance_weights(jax.random.key(2), model, theta, wrong, x_NxD[0], 50)
    assert float(jnp.std(log_w)) > 0.05
    assert float(jnp.mean(log_w)) < float(lg.chain_log_marginal_likelihood(theta, x_NxD[0])) - 0.01


def test_is_5000_recovers_log_p_x_from_a_perturbed_q(chain):
    model, theta, x_NxD = chain
    exact_phi = lg.exact_chain_posterior_phi(theta)
    key_loc, key_scale = jax.random.split(jax.random.key(4))
    q1 = exact_phi["q_z1_given_x"]
    phi = {  # the first layer's mean shifted, its sigma widened
        **exact_phi,
        "q_z1_given_x": {
            "loc": {
                **q1["loc"],
                "bias": q1["loc"]["bias"] + 0.3 * jax.random.normal(key_loc, (L,)),
            },
            "log_scale": q1["log_scale"] + 0.3 * jnp.abs(jax.random.normal(key_scale, (L,))),
        },
    }
    log_p_x = make_log_marginal_likelihood(model, 5000, 500)
    elbo = make_elbo(model, 100)
    for i, x in enumerate(x_NxD):
        exact = float(lg.chain_log_marginal_likelihood(theta, x))
        estimate = float(log_p_x(jax.random.key(10 + i), theta, phi, x))
        assert abs(estimate - exact) < 0.02, (i, estimate, exact)
        # the perturbation is large enough to matter: the ELBO sits well below
        assert float(elbo(jax.random.key(20 + i), theta, phi, x)[0]) < exact - 0.05


def test_iwae_bound_tightens_with_k_on_the_chain(chain):
    """E[L_k] rises with k towards log p(x) (Burda et al. theorem 1), on average over draws."""
    model, theta, x_NxD = chain
    phi = lg.exact_chain_posterior_phi(theta)
    phi = {
        **phi,
        "q_z2_given_z1": {
            **phi["q_z2_given_z1"],
            "log_scale": phi["q_z2_given_z1"]["log_scale"] + 0.5,
        },
    }
    x = x_NxD[0]
    exact = float(lg.chain_log_marginal_likelihood(theta, x))
    means = []
    for k in (1, 10, 100):
        keys = jax.random.split(jax.random.key(5), 400)
        values, _ = jax.vmap(make_iwae_bound(model, k), in_axes=(0, None, None, None))(
            keys, theta, phi, x
        )
        means.append(float(jnp.mean(values)))
    assert means[0] < means[1] < means[2] < exact + 0.01, (means, exact)


def test_the_iwae_paper_chain_has_the_named_trees_and_shapes():
    model = make_chain_vae()
    theta, phi = model.init(jax.random.key(0))
    assert set(theta) == {"p_z2", "p_z1_given_z2", "p_x_given_z1"} and theta["p_z2"] == {}
    assert set(phi) == {"q_z1_given_x", "q_z2_given_z1"} and is_amortised(phi)
    assert phi["q_z1_given_x"]["hidden_0"]["kernel"].shape == (784, 200)
    assert phi["q_z1_given_x"]["loc"]["kernel"].shape == (200, 100)
    assert phi["q_z2_given_z1"]["hidden_0"]["kernel"].shape == (100, 100)
    assert phi["q_z2_given_z1"]["loc"]["kernel"].shape == (100, 50)
    assert theta["p_z1_given_z2"]["hidden_0"]["kernel"].shape == (50, 100)
    assert theta["p_z1_given_z2"]["loc"]["kernel"].shape == (100, 100)
    assert theta["p_x_given_z1"]["hidden_0"]["kernel"].shape == (100, 200)
    assert theta["p_x_given_z1"]["logits"]["kernel"].shape == (200, 784)
    x_BxD = (jax.random.uniform(jax.random.key(1), (3, 784)) < 0.3).astype(jnp.float32)
    loss, aux = batch_objective(make_iwae_bound(model, 5))(jax.random.key(2), theta, phi, x_BxD)
    assert np.isfinite(float(loss)) and loss.shape == ()


def test_two_layers_train_and_score_end_to_end_from_the_config(tmp_path):
    from experiments.configs import iwae_2layer
    from experiments.train import train_and_evaluate

    config = iwae_2layer.get_config("smoke")
    config.objective.name, config.objective.num_samples = "iwae", 3
    config.objective.gradient = "dreg"
    # The paper's widths are checked above; the run's plumbing needs no 200-unit layers.
    config.model.hidden_sizes, config.model.latent_dim = (32, 32), 8
    config.model.top_hidden_sizes, config.model.top_latent_dim = (16, 16), 4
    results = train_and_evaluate(config, tmp_path)
    assert np.isfinite(results["test_nll"]) and np.isfinite(results["test_elbo"])
    assert len(results["active_units_per_layer"]) == 2
    assert sum(results["active_units_per_layer"]) == results["active_units"]
    assert results["aggregate_posterior_mean"] is None  # one-layer summaries are not faked
    # the layers' terms of the KL, E_q[log q(z_i | .) - log p(z_i | .)]: their sum is the
    # KL that test_kl estimates with one draw per image (here 100 draws per image)
    assert len(results["kl_per_layer"]) == 2
    assert abs(sum(results["kl_per_layer"]) - results["test_kl"]) < 2.0
    assert len(results["saturated_decoder_units"]) == 2  # x's decoder: 32-32


def test_log_prob_per_layer_is_in_layer_order_and_sums_to_log_prob():
    model = make_chain_vae(16, (4, 3), ((8,), (5,)))
    theta, phi = model.init(jax.random.key(0))
    x = (jax.random.uniform(jax.random.key(1), (16,)) < 0.5).astype(jnp.float32)
    q_z, p_z = model.posterior(phi, x), model.prior(theta, phi)
    z_SxL = q_z.sample(jax.random.key(2), (7,))
    z1, z2 = z_SxL[:, :4], z_SxL[:, 4:]
    for dist in (q_z, p_z):
        per_layer = dist.log_prob_per_layer(z_SxL)
        assert per_layer.shape == (7, 2)
        np.testing.assert_allclose(per_layer.sum(-1), dist.log_prob(z_SxL), rtol=1e-6)
    # the prior is sampled z2 first, but its columns are (log p(z1 | z2), log p(z2))
    log_p_z2 = jax.scipy.stats.norm.logpdf(z2).sum(-1)
    np.testing.assert_allclose(p_z.log_prob_per_layer(z_SxL)[:, 1], log_p_z2, rtol=1e-6)
    q_z1 = model.q_z1_given_x.apply(phi["q_z1_given_x"], x)
    np.testing.assert_allclose(q_z.log_prob_per_layer(z_SxL)[:, 0], q_z1.log_prob(z1), rtol=1e-6)


@pytest.mark.parametrize(
    "key,value",
    [
        ("model.prior", "vampprior"),
        ("train.realign_every", 10),
        ("model.tie_weights", "x_layers"),
        ("model.inference", "per_datapoint"),
        ("eval.plots", True),
    ],
)
def test_one_layer_only_options_are_refused_by_name(key, value):
    from experiments import factory
    from experiments.cli import UserError
    from experiments.configs import iwae_2layer

    config = iwae_2layer.get_config("smoke")
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(UserError, match=f"two stochastic layers.*needs {key}="):
        factory.check_config(config)


def test_a_gradient_estimator_needs_the_iwae_objective():
    from experiments import factory
    from experiments.cli import UserError
    from experiments.configs import default

    config = default.get_config("smoke")
    config.objective.gradient = "dreg"
    with pytest.raises(UserError, match="objective.gradient='dreg'.*objective.name='iwae'"):
        factory.check_config(config)


def _nearly_deterministic(tree):
    """A Gaussian MLP's tree whose sigma is at its clamp's floor (e^-10): a draw from
    it is its mean to within 1e-4, so a sample shows what the link read."""
    head = tree["log_scale"]
    return {**tree, "log_scale": {**head, "bias": jnp.full_like(head["bias"], -1e4)}}


def test_each_link_reads_the_sampled_block_below_it_not_its_mean_or_a_new_draw():
    model = make_chain_vae(16, (4, 3), ((8,), (5,)))
    theta, phi = model.init(jax.random.key(0))
    x = (jax.random.uniform(jax.random.key(1), (16,)) < 0.5).astype(jnp.float32)
    phi = {**phi, "q_z2_given_z1": _nearly_deterministic(phi["q_z2_given_z1"])}
    theta = {**theta, "p_z1_given_z2": _nearly_deterministic(theta["p_z1_given_z2"])}
    link_q, link_p = model.q_z_given_below[0], model.p_z_given_above[0]
    # q(z2 | z1): z2 is the link's mean at the z1 in the same sample
    z_SxL = model.posterior(phi, x).sample(jax.random.key(2), (50,))
    z1, z2 = z_SxL[:, :4], z_SxL[:, 4:]
    np.testing.assert_allclose(z2, link_q.apply(phi["q_z2_given_z1"], z1).loc, atol=1e-3)
    z1_mean = model.q_z1_given_x.apply(phi["q_z1_given_x"], x).loc
    at_mean = link_q.apply(phi["q_z2_given_z1"], z1_mean).loc
    assert np.max(np.abs(z2 - at_mean[None])) > 0.01  # not read at E[z1 | x]
    # p(z1 | z2): the prior is sampled z2 first; z1 is the link's mean at that z2
    z_SxL = model.prior(theta, phi).sample(jax.random.key(3), (50,))
    z1, z2 = z_SxL[:, :4], z_SxL[:, 4:]
    np.testing.assert_allclose(z1, link_p.apply(theta["p_z1_given_z2"], z2).loc, atol=1e-3)
    at_zero = link_p.apply(theta["p_z1_given_z2"], jnp.zeros(3)).loc
    assert np.max(np.abs(z1 - at_zero[None])) > 0.01  # not read at the prior mean of z2

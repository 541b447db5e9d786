"""Per-datapoint phi, fit_local and the inference gap on the exact test bed."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import linear_gaussian as lg
from vae_jax.evaluate import make_elbo_terms, make_log_p_x
from vae_jax.host import map_dataset
from vae_jax.local import make_fit_local
from vae_jax.models import make_vae
from vae_jax.objectives import batch_objective, make_elbo
from vae_jax.schema import encoder_outputs, per_datapoint_phi, phi_axis, prior_phi

D, L, N = 12, 3, 16


def test_per_datapoint_phi_set_to_encoder_outputs_gives_the_same_objective():
    model = make_vae(D, L, (8,))
    theta, phi = model.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (N, D))
    local = encoder_outputs(model, phi, x)
    assert phi_axis(phi) is None and phi_axis(local) == 0
    assert local["q_z"]["loc"].shape == (N, L)
    loss_fn = batch_objective(make_elbo(model, num_samples=2))
    key = jax.random.key(2)
    amortised, aux_a = loss_fn(key, theta, phi, x)
    per_datapoint, aux_p = loss_fn(key, theta, local, x)
    np.testing.assert_allclose(amortised, per_datapoint, rtol=1e-6)
    np.testing.assert_allclose(aux_a["kl"], aux_p["kl"], rtol=1e-6)
    # and through the dataset evaluators, which slice phi's rows by batch
    terms = jax.jit(make_elbo_terms(model))
    a = map_dataset(terms, key, theta, phi, np.asarray(x), 5)
    p = map_dataset(terms, key, theta, local, np.asarray(x), 5)
    np.testing.assert_allclose(a["elbo"], p["elbo"], rtol=1e-6)
    log_p_x = jax.jit(make_log_p_x(model, 64, 16))
    np.testing.assert_allclose(
        map_dataset(log_p_x, key, theta, phi, np.asarray(x), 5),
        map_dataset(log_p_x, key, theta, local, np.asarray(x), 5),
        rtol=1e-6,
    )


def test_per_datapoint_gradient_is_sparse_to_the_batch():
    model = make_vae(D, L, (8,))
    theta, _ = model.init(jax.random.key(0))
    local = prior_phi(model, theta, N)
    x = jax.random.uniform(jax.random.key(1), (N, D))
    batch = jnp.array([1, 4, 5])
    loss_fn = batch_objective(make_elbo(model))

    def loss(phi):
        rows = jax.tree_util.tree_map(lambda a: a[batch], phi)
        return loss_fn(jax.random.key(3), theta, rows, x[batch])[0]

    grad_loc = jax.grad(loss)(local)["q_z"]["loc"]
    touched = jnp.any(grad_loc != 0, axis=1)
    assert touched.tolist() == [i in (1, 4, 5) for i in range(N)]


def test_unsliced_per_datapoint_phi_is_a_clear_error():
    model = make_vae(D, L, (8,))
    local = per_datapoint_phi(jnp.zeros((N, L)), jnp.zeros((N, L)))
    with pytest.raises(ValueError, match="sliced to one example"):
        model.posterior(local, jnp.zeros(D))


@pytest.fixture
def bed(ppca):
    model, theta, x = ppca
    return model, theta, x[:6]


def test_fit_local_from_the_prior_finds_the_exact_posterior(bed):
    model, theta, x = bed
    fit = jax.jit(make_fit_local(model, num_steps=1500, learning_rate=0.05, num_samples=8))
    q_star, trace = fit(jax.random.key(4), theta, prior_phi(model, theta, x.shape[0]), x)
    for i in range(x.shape[0]):
        mean, cov = lg.exact_posterior(theta, x[i])
        np.testing.assert_allclose(q_star["q_z"]["loc"][i], mean, atol=0.02)
        np.testing.assert_allclose(
            jnp.exp(2 * q_star["q_z"]["log_scale"][i]), jnp.diag(cov), rtol=0.05
        )
        # approximation gap ~ 0: the Gaussian family contains the posterior
        q = model.posterior(
            {"q_z": jax.tree_util.tree_map(lambda a, i=i: a[i], q_star["q_z"])}, x[i]
        )
        gap = lg.log_marginal_likelihood(theta, x[i]) - lg.closed_form_elbo(theta, q, x[i])
        assert 0 <= float(gap) < 2e-3
    assert float(trace[-1].mean()) > float(trace[0].mean()) + 1.0  # it did climb


def test_semi_amortised_refinement_closes_part_of_the_amortisation_gap(bed):
    model, theta, x = bed
    exact = lg.exact_posterior_phi(theta)
    bad = {
        "q_z_given_x": {
            **exact["q_z_given_x"],
            "log_scale": exact["q_z_given_x"]["log_scale"] + 0.7,
        }
    }
    start = encoder_outputs(model, bad, x)
    refined, _ = make_fit_local(model, num_steps=20, learning_rate=0.05, num_samples=4)(
        jax.random.key(5), theta, start, x
    )

    def exact_elbo(phi_local, i):
        q = model.posterior({"q_z": jax.tree_util.tree_map(lambda a: a[i], phi_local["q_z"])}, x[i])
        return float(lg.closed_form_elbo(theta, q, x[i]))

    for i in range(x.shape[0]):
        assert exact_elbo(refined, i) > exact_elbo(start, i) + 0.1


def test_non_amortised_training_updates_only_the_rows_it_sees():
    """45 examples, batches of 10: 4 steps per epoch, so 5 rows are never touched."""
    import optax

    from vae_jax.local import init_per_datapoint_state, make_per_datapoint_step
    from vae_jax.train import make_train_epoch

    model = make_vae(D, L, (8,))
    optimizer, local_optimizer = optax.adam(1e-2), optax.adam(5e-2)
    state = init_per_datapoint_state(jax.random.key(0), model, optimizer, local_optimizer, 45)
    assert set(state.phi) == {"q_z"} and state.phi["q_z"]["loc"].shape == (45, L)
    start_loc = np.asarray(state.phi["q_z"]["loc"])
    start_decoder = np.asarray(state.theta["p_x_given_z"]["logits"]["kernel"])
    epoch_fn = jax.jit(
        make_train_epoch(
            make_per_datapoint_step(make_elbo(model), optimizer, local_optimizer), 10, 45
        )
    )
    x = jax.random.uniform(jax.random.key(1), (45, D))
    state, _ = epoch_fn(state, jax.random.key(2), jnp.asarray(0, jnp.int32), x)
    moved = np.any(np.asarray(state.phi["q_z"]["loc"]) != start_loc, axis=1)
    assert moved.sum() == 40
    counts = np.asarray(state.opt_state["phi"]["q_z"][0].count)  # each row's own Adam step count
    np.testing.assert_array_equal(counts, moved.astype(counts.dtype))
    assert np.any(np.asarray(state.theta["p_x_given_z"]["logits"]["kernel"]) != start_decoder)


def test_per_datapoint_run_trains_and_is_scored_from_the_config(tmp_path):
    from experiments.configs import default
    from experiments.train import train_and_evaluate

    config = default.get_config("smoke")
    config.model.inference = "per_datapoint"
    config.train.epochs = 3
    results = train_and_evaluate(config, tmp_path)
    assert results["num_params_phi"] == 500 * 2 * 20  # one (loc, log_scale) per training image
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train_elbo"] > lines[0]["train_elbo"]
    assert 0 < results["test_nll"] < -results["test_elbo"]


def test_semi_amortised_objective_trains_theta_on_refined_q_and_phi_on_its_own(bed):
    """d/dtheta is the refined ELBO's gradient; d/dphi is the encoder ELBO's."""
    from vae_jax.local import make_semi_amortised_elbo

    model, theta, x = bed
    bad = lg.perturbed_posterior_phi(lg.exact_posterior_phi(theta), jax.random.key(6), 0.5)
    objective = make_semi_amortised_elbo(model, num_steps=20, learning_rate=0.05, num_samples=4)
    key, x0 = jax.random.key(7), x[0]
    (value, aux), (g_theta, g_phi) = jax.value_and_grad(
        lambda t, p: objective(key, t, p, x0), argnums=(0, 1), has_aux=True
    )(theta, bad)
    assert float(aux["elbo"]) > float(aux["elbo_encoder"])  # refinement helped this q

    refine_key, theta_key, phi_key = jax.random.split(key, 3)
    refined, _ = make_fit_local(model, 20, 0.05, 4, "auto")(
        refine_key, theta, encoder_outputs(model, bad, x0[None]), x0[None]
    )
    refined = jax.tree_util.tree_map(lambda a: a[0], refined)
    elbo = make_elbo(model, 4)
    want_theta = jax.grad(lambda t: elbo(theta_key, t, refined, x0)[0])(theta)
    want_phi = jax.grad(lambda p: elbo(phi_key, theta, p, x0)[0])(bad)
    for got, want in ((g_theta, want_theta), (g_phi, want_phi)):
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got, want
        )

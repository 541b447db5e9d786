"""The per-example objectives: batching, independence, gradients, tree contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy import stats
from jax.test_util import check_grads

from vae_jax import linear_gaussian as lg
from vae_jax.models import make_vae, num_params
from vae_jax.objectives import batch_objective, make_elbo, make_iwae_bound

D, L, H, B = 16, 3, 8, 5


def _model_and_batch(likelihood="bernoulli", prior="standard_normal", seed=0):
    model = make_vae(D, L, (H,), likelihood=likelihood, prior=prior)
    theta, phi = model.init(jax.random.key(seed))
    x = jax.random.uniform(jax.random.key(seed + 1), (B, D))
    return model, theta, phi, x


@pytest.mark.parametrize("objective", ["elbo", "elbo_sample_kl", "iwae"])
def test_vmapped_batch_equals_a_python_loop(objective):
    model, theta, phi, x = _model_and_batch()
    fn = {
        "elbo": make_elbo(model, num_samples=3),
        "elbo_sample_kl": make_elbo(model, num_samples=3, kl="sample"),
        "iwae": make_iwae_bound(model, num_samples=4),
    }[objective]
    key = jax.random.key(7)
    loss, aux = batch_objective(fn)(key, theta, phi, x)
    keys = jax.random.split(key, B)
    loop = [fn(keys[b], theta, phi, x[b]) for b in range(B)]
    np.testing.assert_allclose(loss, -np.mean([v for v, _ in loop]), rtol=1e-6)
    for name in aux:
        np.testing.assert_allclose(aux[name], np.mean([a[name] for _, a in loop]), rtol=1e-5)


def test_example_i_does_not_depend_on_example_j():
    """d objective_i / d x_j == 0 exactly for i != j (no batch statistics leak)."""
    model, theta, phi, x = _model_and_batch()
    elbo = make_elbo(model, num_samples=2)
    keys = jax.random.split(jax.random.key(3), B)

    def per_example(x_BxD):
        return jax.vmap(elbo, in_axes=(0, None, None, 0))(keys, theta, phi, x_BxD)[0]

    jacobian_BxBxD = jax.jacrev(per_example)(x)
    off_diagonal = jacobian_BxBxD * (1.0 - jnp.eye(B))[:, :, None]
    assert float(jnp.max(jnp.abs(off_diagonal))) == 0.0
    diagonal = jnp.einsum("iid->id", jacobian_BxBxD)
    assert float(jnp.min(jnp.max(jnp.abs(diagonal), axis=1))) > 0.0  # and it does depend on x_i


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_gradients_match_finite_differences_in_float64(likelihood):
    with jax.enable_x64(True):
        model, theta, phi, x = _model_and_batch(likelihood, prior="learned_gaussian")
        theta, phi, x = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), (theta, phi, x))
        elbo = make_elbo(model, num_samples=2)
        key = jax.random.key(5)  # fixed noise: the reparameterised ELBO is a smooth function

        @jax.jit  # check_grads calls it many times; eager dispatch would dominate
        def value(theta, phi):
            return elbo(key, theta, phi, x[0])[0]

        check_grads(value, (theta, phi), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_analytic_and_sampled_kl_agree_in_expectation():
    model, theta, phi, x = _model_and_batch()
    keys = jax.random.split(jax.random.key(2), 20_000)
    estimates = {}
    for kl in ("analytic", "sample"):
        elbo = make_elbo(model, kl=kl)
        values = jax.jit(jax.vmap(lambda k, e=elbo: e(k, theta, phi, x[0])[1]["kl"]))(keys)
        estimates[kl] = (float(values.mean()), float(values.std()) / np.sqrt(keys.shape[0]))
    (analytic, _), (sampled, error) = estimates["analytic"], estimates["sample"]
    assert abs(analytic - sampled) < 5 * error


def test_beta_weights_only_the_kl_term():
    model, theta, phi, x = _model_and_batch()
    key = jax.random.key(1)
    value, aux = make_elbo(model, beta=0.25)(key, theta, phi, x[0])
    np.testing.assert_allclose(value, aux["reconstruction"] - 0.25 * aux["kl"], rtol=1e-6)
    np.testing.assert_allclose(aux["elbo"], aux["reconstruction"] - aux["kl"], rtol=1e-6)
    assert aux["kl"] > 0 and aux["reconstruction"] < 0


def test_iwae_with_one_sample_is_the_sampled_kl_elbo():
    model, theta, phi, x = _model_and_batch()
    key = jax.random.key(4)
    iwae, _ = make_iwae_bound(model, 1)(key, theta, phi, x[0])
    elbo, _ = make_elbo(model, 1, kl="sample")(key, theta, phi, x[0])
    np.testing.assert_allclose(iwae, elbo, rtol=1e-6)


def test_iwae_bound_is_bayes_rule_on_the_ppca_bed(ppca):
    """log w_s = log p(x) + log p(z_s | x) - log q(z_s | x), from PPCA's closed forms."""
    model, theta, x_NxD = ppca
    exact_phi = lg.exact_posterior_phi(theta)
    phi = lg.perturbed_posterior_phi(exact_phi, jax.random.key(3), 0.5)
    x, key, k = x_NxD[0], jax.random.key(8), 7

    @jax.jit
    def bayes_rule_log_weights(theta, phi, x):
        q = model.posterior(phi, x)
        z_SxL = q.sample(key, (k,))  # the k draws the bound makes with this key
        mean_L, cov_LxL = lg.exact_posterior(theta, x)
        return (
            lg.log_marginal_likelihood(theta, x)
            + jax.vmap(lambda z: stats.multivariate_normal.logpdf(z, mean_L, cov_LxL))(z_SxL)
            - jnp.sum(stats.norm.logpdf(z_SxL, q.loc[None, :], q.scale[None, :]), axis=-1)
        )

    log_w_S = bayes_rule_log_weights(theta, phi, x)
    log_p_x = lg.log_marginal_likelihood(theta, x)
    bound, aux = jax.jit(make_iwae_bound(model, k))(key, theta, phi, x)
    # float32 rounding of ~20-nat log densities is ~1e-5 nats; log k = 1.95
    np.testing.assert_allclose(bound, jax.nn.logsumexp(log_w_S) - np.log(k), atol=1e-4)
    np.testing.assert_allclose(aux["elbo"], jnp.mean(log_w_S), atol=1e-4)
    assert float(bound - aux["elbo"]) > 0.05  # the two differ here: the check can tell them apart
    for k in (1, 7):  # q = p(z|x): every weight is p(x), so L_k = log p(x) for every k
        bound, aux = jax.jit(make_iwae_bound(model, k))(key, theta, exact_phi, x)
        np.testing.assert_allclose(bound, log_p_x, atol=1e-4)
        np.testing.assert_allclose(aux["elbo"], log_p_x, atol=1e-4)


@pytest.mark.parametrize(
    "likelihood,prior,p_z_keys",
    [
        ("bernoulli", "standard_normal", set()),
        ("gaussian", "standard_normal", set()),
        ("bernoulli", "learned_gaussian", {"loc", "log_scale"}),
    ],
)
def test_tree_contract(likelihood, prior, p_z_keys):
    model = make_vae(784, 20, (200, 100), likelihood=likelihood, prior=prior)
    theta, phi = model.init(jax.random.key(0))
    assert set(theta) == {"p_z", "p_x_given_z"}
    assert set(phi) == {"q_z_given_x"}
    assert set(theta["p_z"]) == p_z_keys
    decoder, encoder = theta["p_x_given_z"], phi["q_z_given_x"]
    assert decoder["hidden_0"]["kernel"].shape == (20, 100)  # decoder mirrors the encoder
    assert decoder["hidden_1"]["kernel"].shape == (100, 200)
    heads = {"logits"} if likelihood == "bernoulli" else {"loc", "log_scale"}
    assert set(decoder) == {"hidden_0", "hidden_1"} | heads
    assert set(encoder) == {"hidden_0", "hidden_1", "loc", "log_scale"}
    assert encoder["loc"]["kernel"].shape == (100, 20)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path((theta, phi))]
    assert not any("params" in p for p in paths), paths  # flax's wrapper must not leak


def test_linear_gaussian_tree_contract():
    theta = lg.init_orthogonal_theta(jax.random.key(0), 10, 2)
    phi = lg.exact_posterior_phi(theta)
    assert theta["p_z"] == {} and set(theta) == {"p_z", "p_x_given_z"}
    assert set(phi) == {"q_z_given_x"}


def test_parameter_counts_of_appendix_c():
    model = make_vae(784, 20, (500,))
    theta, phi = model.init(jax.random.key(0))
    assert num_params(theta) == 20 * 500 + 500 + 500 * 784 + 784
    assert num_params(phi) == 784 * 500 + 500 + 2 * (500 * 20 + 20)


def test_bad_inputs_are_named():
    model, theta, phi, x = _model_and_batch()
    elbo = make_elbo(model)
    with pytest.raises(ValueError, match="ONE example of shape"):
        elbo(jax.random.key(0), theta, phi, x)  # a batch passed as one example
    with pytest.raises(ValueError, match="batch of shape"):
        batch_objective(elbo)(jax.random.key(0), theta, phi, x[0])
    with pytest.raises(ValueError, match="unknown KL estimator"):
        make_elbo(model, kl="exact")
    with pytest.raises(ValueError, match="unknown activation"):
        make_vae(D, L, (H,), activation="sigmoidal")
    with pytest.raises(ValueError, match="unknown likelihood"):
        make_vae(D, L, (H,), likelihood="poisson")
    with pytest.raises(ValueError, match="unknown prior"):
        make_vae(D, L, (H,), prior="vampire")

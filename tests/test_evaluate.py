"""Dataset-level evaluation: one row per example, and the active-unit count."""

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.evaluate import active_units
from vae_jax.host import map_dataset
from vae_jax.models import make_vae


def test_map_dataset_returns_each_example_once_in_order():
    """7 examples in batches of 3: the padded last batch's repeats are dropped."""
    n = 7
    x_NxD = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    phi = {"q_z": {"loc": jnp.arange(n, dtype=jnp.float32)[:, None]}}  # per-datapoint rows

    def fn(key, theta, phi, x_BxD, index_B):
        return {"index": index_B, "x_sum": x_BxD.sum(-1), "row": phi["q_z"]["loc"][:, 0]}

    out = map_dataset(fn, jax.random.key(0), {}, phi, x_NxD, 3)
    np.testing.assert_array_equal(out["index"], np.arange(n))
    np.testing.assert_array_equal(out["x_sum"], x_NxD.sum(-1))
    np.testing.assert_array_equal(out["row"], np.arange(n))


def test_active_units_counts_dims_whose_posterior_mean_varies_more_than_0_01():
    """Burda et al. 2015, section 5.2: A_u = Cov_x(E_q[u | x]) > 10^-2."""
    variances_L = np.array([0.005, 0.02, 0.09, 0.5])
    signs_Nx1 = np.array([1.0, -1.0, 1.0, -1.0])[:, None]
    # np.var of each column is exactly variances_L; the offset 3 is not variance
    mean_NxL = 3.0 + signs_Nx1 * np.sqrt(variances_L)[None, :]
    np.testing.assert_allclose(np.var(mean_NxL, axis=0), variances_L, rtol=1e-12)
    assert active_units(mean_NxL) == 3
    assert active_units(mean_NxL[:, :1]) == 0


def test_a_decoder_unit_that_ignores_z_is_counted_as_saturated():
    from vae_jax.evaluate import saturated_decoder_units

    model = make_vae(data_dim=6, latent_dim=2, hidden_sizes=(4, 5))  # decoder: 5, then 4
    theta, _ = model.init(jax.random.key(0))
    decoder = theta["p_x_given_z"]
    # unit 1 of the first layer reads nothing; units 0 and 3 of the second read their
    # inputs but sit deep in tanh's flat tails (bias +-30), where they cannot move
    kernel0 = decoder["hidden_0"]["kernel"].at[:, 1].set(0.0)
    decoder = {
        **decoder,
        "hidden_0": {**decoder["hidden_0"], "kernel": kernel0},
        "hidden_1": {**decoder["hidden_1"], "bias": jnp.array([30.0, 0.0, 0.0, -30.0])},
    }
    assert np.all(np.abs(np.asarray(decoder["hidden_1"]["kernel"])[:, [0, 3]]) > 0)
    theta = {**theta, "p_x_given_z": decoder}
    z_NxL = np.asarray(jax.random.normal(jax.random.key(1), (50, 2)))
    assert saturated_decoder_units(model, theta, z_NxL) == [1, 2]
    tied = make_vae(data_dim=6, latent_dim=2, hidden_sizes=(5,), tie_weights="x_layers")
    tied_theta, _ = tied.init(jax.random.key(0))
    assert saturated_decoder_units(tied, tied_theta, z_NxL) is None  # not faked

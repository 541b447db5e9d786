"""Parameters shared between theta and phi (tied weights) or not shared within phi."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import tied_and_untied
from vae_jax.models import make_vae, num_params
from vae_jax.objectives import batch_objective, make_elbo
from vae_jax.realign import realign

D, L, H, B = 24, 3, 7, 5


def _x():
    return (jax.random.uniform(jax.random.key(9), (B, D)) < 0.4).astype(jnp.float32)


@pytest.mark.parametrize(
    "kind, shared_size", [("x_layers", D * H), ("z_layers", L * H)], ids=["x", "z"]
)
def test_a_tied_tensor_is_stored_once(kind, shared_size):
    untied = make_vae(D, L, (H,))
    tied = make_vae(D, L, (H,), tie_weights=kind)
    sizes = [sum(num_params(t) for t in m.init(jax.random.key(0))) for m in (untied, tied)]
    assert sizes[0] - sizes[1] == shared_size


def test_a_separate_trunk_adds_exactly_one_hidden_layer():
    shared = make_vae(D, L, (H,))
    separate = make_vae(D, L, (H,), encoder_trunk="separate")
    (_, phi_shared), (_, phi_separate) = (m.init(jax.random.key(0)) for m in (shared, separate))
    assert num_params(phi_separate) - num_params(phi_shared) == D * H + H
    # mu reads only its own trunk: log sigma's network has no gradient from mu
    x = _x()[0]
    grads = jax.grad(lambda p: jnp.sum(separate.posterior(p, x).loc))(phi_separate)
    leaves = jax.tree_util.tree_leaves(grads["q_z_given_x"]["log_scale_net"])
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in leaves)
    assert float(jnp.max(jnp.abs(grads["q_z_given_x"]["loc_net"]["hidden_0"]["kernel"]))) > 0


@pytest.mark.parametrize("kind", ["x_layers", "z_layers"])
def test_shared_gradient_is_the_sum_over_its_uses(kind):
    """Tied model vs an untied one whose two copies are held equal: same loss, and the
    stored tensor's gradient = encoder copy's gradient + decoder copy's (transposed)."""
    (tied, theta_t, phi_t), (untied, theta_u, phi_u), (dec, enc) = tied_and_untied(D, L, H, kind)
    x, key = _x(), jax.random.key(1)

    def loss_and_grads(model, theta, phi):
        loss_fn = batch_objective(make_elbo(model, 2))
        (loss, _), grads = jax.value_and_grad(loss_fn, argnums=(1, 2), has_aux=True)(
            key, theta, phi, x
        )
        return loss, grads

    loss_t, (g_theta_t, g_phi_t) = loss_and_grads(tied, theta_t, phi_t)
    loss_u, (g_theta_u, g_phi_u) = loss_and_grads(untied, theta_u, phi_u)
    np.testing.assert_allclose(loss_t, loss_u, rtol=1e-6)
    expected = g_phi_u["q_z_given_x"][enc]["kernel"] + g_theta_u["p_x_given_z"][dec]["kernel"].T
    np.testing.assert_allclose(
        g_phi_t["q_z_given_x"][enc]["kernel"], expected, rtol=1e-5, atol=1e-6
    )
    # ... and is neither use alone
    assert not np.allclose(
        g_phi_t["q_z_given_x"][enc]["kernel"], g_phi_u["q_z_given_x"][enc]["kernel"]
    )
    np.testing.assert_allclose(
        g_theta_t["p_x_given_z"][dec]["bias"], g_theta_u["p_x_given_z"][dec]["bias"], rtol=1e-5
    )


def test_a_tied_decoder_needs_phi_and_compatible_widths():
    tied = make_vae(D, L, (H,), tie_weights="x_layers")
    theta, phi = tied.init(jax.random.key(0))
    with pytest.raises(ValueError, match="shares a weight with the encoder"):
        tied.likelihood(theta, jnp.zeros((L,)), {"q_z": {}})  # per-datapoint: no encoder
    assert tied.likelihood(theta, jnp.zeros((L,)), phi).logits.shape == (D,)
    with pytest.raises(ValueError, match="encoder's first hidden width"):
        make_vae(D, L, (H,), decoder_hidden_sizes=(H + 1,), tie_weights="x_layers")
    with pytest.raises(ValueError, match="unknown tie_weights 'both'"):
        make_vae(D, L, (H,), tie_weights="both")
    with pytest.raises(ValueError, match="unknown trunk 'split'"):
        make_vae(D, L, (H,), encoder_trunk="split")


def test_realign_refuses_tied_weights():
    tied = make_vae(D, L, (H,), tie_weights="z_layers", log_scale_shift=True)
    theta, phi = tied.init(jax.random.key(0))
    moments = {"mean": np.zeros(L), "variance": np.ones(L)}
    with pytest.raises(ValueError, match="realign needs untied weights"):
        realign(theta, phi, moments)

"""The formulas the README and the package docstring print agree with the code."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vae_jax
from vae_jax.evaluate import make_elbo_terms
from vae_jax.models import make_vae

ROOT = Path(__file__).resolve().parents[1]
D, L, H, B = 12, 3, 5, 4
LOG_SIGMA = "log sigma = 10 tanh((W5 h + b5) / 10)"


def test_the_encoders_log_sigma_is_the_documented_formula():
    model = make_vae(D, L, (H,))
    _, phi = model.init(jax.random.key(0))
    enc = phi["q_z_given_x"]
    x_BxD = jax.random.uniform(jax.random.key(1), (B, D))
    # large head weights so the clamp is far from the identity and a /2 is visible
    enc["log_scale"]["kernel"] = 30.0 * enc["log_scale"]["kernel"]
    h_BxH = jnp.tanh(x_BxD @ enc["hidden_0"]["kernel"] + enc["hidden_0"]["bias"][None])
    head_BxL = h_BxH @ enc["log_scale"]["kernel"] + enc["log_scale"]["bias"][None]
    assert float(jnp.max(jnp.abs(head_BxL))) > 5.0
    q = jax.vmap(model.posterior, in_axes=(None, 0))(phi, x_BxD)
    np.testing.assert_allclose(q.log_scale, 10.0 * jnp.tanh(head_BxL / 10.0), rtol=1e-5)
    assert LOG_SIGMA in (ROOT / "README.md").read_text()
    assert LOG_SIGMA in vae_jax.__doc__


@pytest.mark.parametrize(
    "prior, analytic",
    [("learned_gaussian", True), ("mixture_of_gaussians", False), ("vampprior", False)],
)
def test_kl_per_dim_is_nan_exactly_where_the_kl_is_sampled(prior, analytic):
    """docs/concepts.md's conventions table says so; a change here must change the table."""
    model = make_vae(D, L, (H,), prior=prior, prior_components=3)
    theta, phi = model.init(jax.random.key(0))
    x_BxD = (jax.random.uniform(jax.random.key(1), (B, D)) < 0.5).astype(jnp.float32)
    terms = make_elbo_terms(model)(jax.random.key(2), theta, phi, x_BxD, jnp.arange(B))
    assert bool(jnp.all(terms["kl_is_analytic"] == float(analytic)))
    assert bool(jnp.all(jnp.isnan(terms["kl_per_dim"]))) == (not analytic)
    if analytic:
        np.testing.assert_allclose(jnp.sum(terms["kl_per_dim"], -1), terms["kl"], rtol=1e-5)
    table = (ROOT / "docs" / "concepts.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| `kl_per_dim` |")]
    assert len(rows) == 1, "the conventions table needs its own `kl_per_dim` row"
    row = rows[0]
    assert "NaN" in row and "`mixture_of_gaussians`" in row and "`vampprior`" in row

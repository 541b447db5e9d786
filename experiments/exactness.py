"""How close each estimator comes to the exact answers of probabilistic PCA.

    python -m experiments.exactness

The same test bed as tests/test_linear_gaussian.py (D = 12, L = 3, 8 data
points, fixed keys), printing the measured errors the tests put bounds on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli
from vae_jax import linear_gaussian as lg
from vae_jax.local import make_fit_local
from vae_jax.objectives import make_elbo, make_iwae_bound, make_log_marginal_likelihood
from vae_jax.schema import prior_phi

D, L = 12, 3


def _define(values: flags.FlagValues) -> None:
    """No flags: ``--help``, and anything else is refused."""


def main(argv=None):
    cli.parse(argv, _define, __doc__)
    model = lg.make_linear_gaussian(D, L)
    theta = lg.init_orthogonal_theta(jax.random.key(0), D, L, noise_scale=0.7)
    x_NxD = jax.random.normal(jax.random.key(1), (8, D)) * 1.5
    exact = np.array([float(lg.log_marginal_likelihood(theta, x)) for x in x_NxD])
    phi_exact = lg.exact_posterior_phi(theta)

    elbo = make_elbo(model, num_samples=16, kl="sample")
    errors = [
        abs(float(elbo(jax.random.key(i), theta, phi_exact, x)[0]) - exact[i])
        for i, x in enumerate(x_NxD)
    ]
    print(f"ELBO with q = exact posterior vs exact log p(x): max |error| {max(errors):.2e} nats")

    phi_off = lg.perturbed_posterior_phi(phi_exact, jax.random.key(11), 0.1)
    closed = np.array(
        [float(lg.closed_form_elbo(theta, model.posterior(phi_off, x), x)) for x in x_NxD]
    )
    log_p_x = jax.jit(make_log_marginal_likelihood(model, 5000, 500))
    is_err = [
        abs(float(log_p_x(jax.random.key(i), theta, phi_off, x)) - exact[i])
        for i, x in enumerate(x_NxD)
    ]
    print(
        f"q off the posterior: ELBO gap {np.mean(exact - closed):.3f} nats; IS-5000 "
        f"max |error| {max(is_err):.3f}, mean {np.mean(is_err):.3f} nats"
    )

    for kl in ("analytic", "sample"):
        fn = make_elbo(model, num_samples=1, kl=kl)
        values = jax.vmap(lambda k, f=fn: f(k, theta, phi_off, x_NxD[0])[0])(
            jax.random.split(jax.random.key(3), 20_000)
        )
        se = float(values.std()) / np.sqrt(values.shape[0])
        print(
            f"Monte-Carlo ELBO ({kl} KL, 20,000 draws) - closed form: "
            f"{float(values.mean()) - closed[0]:+.4f} nats (standard error {se:.4f})"
        )

    phi_iwae = lg.perturbed_posterior_phi(phi_exact, jax.random.key(5), 0.6)
    keys = jax.random.split(jax.random.key(4), 4000)
    means = []
    for k in (1, 2, 5, 20, 100):
        bound = make_iwae_bound(model, k)
        v = jax.jit(jax.vmap(lambda key, b=bound: b(key, theta, phi_iwae, x_NxD[2])[0]))(keys)
        means.append(float(v.mean()))
    print(
        "IWAE bound, k = 1, 2, 5, 20, 100 (means over 4,000 keys): "
        + ", ".join(f"{m:.3f}" for m in means)
        + f"; exact log p(x) {exact[2]:.3f}"
    )

    fit = jax.jit(make_fit_local(model, num_steps=1500, learning_rate=0.05, num_samples=8))
    q_star, _ = fit(jax.random.key(4), theta, prior_phi(model, theta, 6), x_NxD[:6])
    gaps, loc_err = [], []
    for i in range(6):
        mean, _ = lg.exact_posterior(theta, x_NxD[i])
        q_i = {"q_z": jax.tree_util.tree_map(lambda a, i=i: a[i], q_star["q_z"])}
        loc_err.append(float(jnp.max(jnp.abs(q_i["q_z"]["loc"] - mean))))
        gaps.append(
            exact[i] - float(lg.closed_form_elbo(theta, model.posterior(q_i, x_NxD[i]), x_NxD[i]))
        )
    print(
        f"fit_local from the prior (1,500 steps): max |loc - exact mean| {max(loc_err):.4f}; "
        f"approximation gap max {max(gaps):.2e} nats"
    )


if __name__ == "__main__":
    cli.run(main)

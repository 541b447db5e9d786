"""Bias, variance and signal-to-noise of the IWAE gradient estimators for phi, on PPCA.

    python -m experiments.gradient_snr

The PPCA bed of tests/test_gradients.py (D = 12, L = 3, the exact posterior's
encoder perturbed by 0.3): for k = 1, 5, 50 and each estimator, DRAWS independent
one-example gradients of L_k with respect to phi. Printed per estimator: the largest
|difference from reparam's mean| in standard errors over phi's coordinates (about 4
or less is no detectable bias), and the medians over coordinates of the variance
and of |mean| / std (Rainforth et al. 2018's signal-to-noise ratio). Written to
experiments/results/gradients/snr.json.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from absl import flags

from experiments import cli
from experiments.workdir import write_json
from vae_jax import linear_gaussian as lg
from vae_jax.objectives import GRADIENTS, make_iwae_bound

OUT = Path(__file__).resolve().parent / "results" / "gradients" / "snr.json"


def _define(values: flags.FlagValues) -> None:
    cli.flag(values, "draws", 4000, "gradient draws per estimator and k", lower_bound=2)


def measure(draws: int) -> list[dict]:
    d, latent = 12, 3
    model = lg.make_linear_gaussian(d, latent)
    theta = lg.init_orthogonal_theta(jax.random.key(0), d, latent, noise_scale=0.7)
    x = jax.random.normal(jax.random.key(1), (d,)) * 1.5
    phi = lg.perturbed_posterior_phi(lg.exact_posterior_phi(theta), jax.random.key(2), 0.3)

    def gradients(gradient, k, seed):
        bound = make_iwae_bound(model, k, gradient)
        grad = jax.jit(
            jax.vmap(jax.grad(lambda key, p: bound(key, theta, p, x)[0], argnums=1), (0, None))
        )
        out = grad(jax.random.split(jax.random.key(seed), draws), phi)
        return np.concatenate(
            [np.asarray(a).reshape(draws, -1) for a in jax.tree_util.tree_leaves(out)], 1
        )

    rows = []
    for k in (1, 5, 50):
        draws_by = {g: gradients(g, k, 10 + i) for i, g in enumerate(GRADIENTS)}
        reference = draws_by["reparam"]
        for gradient, g in draws_by.items():
            se = np.sqrt(g.var(0) / draws + reference.var(0) / draws)
            z = np.abs(g.mean(0) - reference.mean(0)) / se
            rows.append(
                {
                    "k": k,
                    "gradient": gradient,
                    "max_abs_z_vs_reparam": float(np.max(z)) if gradient != "reparam" else 0.0,
                    "median_variance": float(np.median(g.var(0))),
                    "median_snr": float(np.median(np.abs(g.mean(0)) / g.std(0))),
                }
            )
    return rows


def main(argv=None):
    args = cli.parse(argv, _define, __doc__)
    rows = measure(args.draws)
    print(
        f"{'k':>3} {'gradient':>8} {'max |z| vs reparam':>19} {'median var':>11} {'median SNR':>11}"
    )
    for r in rows:
        print(
            f"{r['k']:>3} {r['gradient']:>8} {r['max_abs_z_vs_reparam']:>19.2f} "
            f"{r['median_variance']:>11.4g} {r['median_snr']:>11.3f}"
        )
    write_json(
        OUT, {"command": "python -m experiments.gradient_snr", "draws": args.draws, "rows": rows}
    )
    return rows


if __name__ == "__main__":
    cli.run(main)

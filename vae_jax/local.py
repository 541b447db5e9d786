"""Per-datapoint variational parameters, fitted by gradient ascent on each ELBO.

In classical variational inference the variational parameters ARE the
per-datapoint (mu_i, sigma_i); an amortised encoder replaces them with one
network phi that predicts them from x_i. Here both are first class:

    amortised       phi = {"q_z_given_x": encoder weights}     vmap in_axes None
    per-datapoint   phi = {"q_z": {"loc": [N, L], "log_scale": [N, L]}}   in_axes 0

``fit_local`` finds the best Gaussian q*_i for a fixed theta: for example i it
maximises ELBO_i(loc_i, log_scale_i) with its own optax state, and every example
runs in parallel (``vmap``) inside a ``lax.scan`` over steps. Started from the
encoder's outputs and run for a few steps, it is semi-amortised inference
(Kim et al. 2018, "Semi-Amortized Variational Autoencoders"); run to
convergence, it gives the q* of the inference-gap decomposition of Cremer, Li
& Duvenaud 2018, "Inference Suboptimality in Variational Autoencoders":

    log p(x) - ELBO(q_phi) = [log p(x) - ELBO(q*)]   approximation gap
                           + [ELBO(q*) - ELBO(q_phi)] amortisation gap
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax.distributions import DiagonalGaussian, StandardNormal
from vae_jax.evaluate import padded_batches, take_rows
from vae_jax.models import LatentVariableModel, Phi, Theta
from vae_jax.objectives import make_elbo


def per_datapoint_phi(loc_NxL: jax.Array, log_scale_NxL: jax.Array) -> Phi:
    if loc_NxL.shape != log_scale_NxL.shape or loc_NxL.ndim != 2:
        raise ValueError(
            f"loc and log_scale must both be [N, L], got {loc_NxL.shape}, {log_scale_NxL.shape}"
        )
    return {"q_z": {"loc": loc_NxL, "log_scale": log_scale_NxL}}


def encoder_outputs(model: LatentVariableModel, phi: Phi, x_NxD: jax.Array) -> Phi:
    """Per-datapoint phi holding what the amortised encoder predicts for each x_i."""
    q_z = jax.vmap(lambda x: model.posterior(phi, x))(x_NxD)
    return per_datapoint_phi(q_z.loc, q_z.log_scale)


def prior_phi(model: LatentVariableModel, theta: Theta, num_examples: int) -> Phi:
    """Per-datapoint phi with every q_i set to the prior (a Gaussian prior)."""
    p_z = model.prior(theta)
    if not isinstance(p_z, DiagonalGaussian | StandardNormal):
        raise ValueError(
            "per-datapoint q's start at the prior, which must be Gaussian; "
            f"got {type(p_z).__name__}"
        )
    shape = (num_examples, model.latent_dim)
    return per_datapoint_phi(
        jnp.broadcast_to(p_z.loc, shape), jnp.broadcast_to(p_z.log_scale, shape)
    )


def make_fit_local(
    model: LatentVariableModel,
    num_steps: int,
    learning_rate: float = 1e-2,
    num_samples: int = 1,
    kl: str = "analytic",
) -> Callable[[jax.Array, Theta, Phi, jax.Array], tuple[Phi, jax.Array]]:
    """Build ``fit_local(key, theta, phi_NxL, x_NxD) -> (phi_NxL, elbo_trace_TxN)``.

    Maximises each example's reparameterised ELBO over its own (loc, log_scale)
    with Adam and a cosine-decayed step size (so the final iterate settles
    instead of jittering at the noise floor). theta is held fixed: no gradient
    reaches it.

    Args:
      model: the components (its prior and likelihood are used).
      num_steps: T, gradient steps per example.
      learning_rate: Adam's initial step size.
      num_samples: S, reparameterised samples per gradient estimate.
      kl: "analytic" or "sample", as in :func:`vae_jax.objectives.make_elbo`.

    Returns:
      The function above; ``elbo_trace_TxN`` is each step's ELBO estimate,
      useful to check convergence.
    """
    elbo = make_elbo(model, num_samples=num_samples, kl=kl)
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, max(int(num_steps), 1)))

    def fit_one(key, theta, q_z, x):
        opt_state = optimizer.init(q_z)

        def step(carry, t):
            q_z, opt_state = carry

            def loss(q_z):
                return -elbo(jax.random.fold_in(key, t), theta, {"q_z": q_z}, x)[0]

            value, grads = jax.value_and_grad(loss)(q_z)
            updates, opt_state = optimizer.update(grads, opt_state, q_z)
            return (optax.apply_updates(q_z, updates), opt_state), -value

        (q_z, _), trace = jax.lax.scan(step, (q_z, opt_state), jnp.arange(num_steps))
        return q_z, trace

    def fit_local(key: jax.Array, theta: Theta, phi: Phi, x_NxD: jax.Array):
        if "q_z" not in phi:
            raise ValueError(
                "fit_local refines per-datapoint phi {'q_z': ...}; "
                "start from encoder_outputs(...) or prior_phi(...)"
            )
        theta = jax.lax.stop_gradient(theta)
        keys = jax.random.split(key, x_NxD.shape[0])
        q_z, trace_NxT = jax.vmap(fit_one, in_axes=(0, None, 0, 0))(keys, theta, phi["q_z"], x_NxD)
        return {"q_z": q_z}, trace_NxT.T

    return fit_local


def fit_local_in_batches(fit_fn, key, theta, start_phi, x, batch_size, desc=None):
    """Run a jitted ``fit_local`` over a dataset in fixed-size batches (one compile).

    Batch b uses ``fold_in(key, first index of b)``; the last batch is padded.
    Returns host arrays: per-datapoint phi [N, L] and the ELBO trace [T, N].
    """
    fitted_rows, traces = [], []
    for b in padded_batches(x.shape[0], batch_size, desc):
        fitted, trace_TxB = fit_fn(
            jax.random.fold_in(key, b.start), theta, take_rows(start_phi, b.rows), x[b.rows]
        )
        fitted_rows.append(jax.tree_util.tree_map(lambda a, v=b.valid: np.asarray(a)[:v], fitted))
        traces.append(np.asarray(trace_TxB)[:, : b.valid])
    phi = jax.tree_util.tree_map(lambda *a: np.concatenate(a), *fitted_rows)
    return phi, np.concatenate(traces, axis=1)


def make_semi_amortised_elbo(
    model: LatentVariableModel,
    num_steps: int,
    learning_rate: float = 1e-2,
    num_samples: int = 1,
    kl: str = "auto",
):
    """A semi-amortised training objective for one example (Kim et al. 2018).

    The encoder proposes q_phi(z|x); ``num_steps`` steps of :func:`make_fit_local`
    refine its (loc, log_scale) for this x with theta fixed, giving q_T. Then

        value = ELBO(theta; q_T)  +  ELBO(phi; q_phi),

    with q_T and theta held fixed (stop_gradient) in the term that does not
    train them: theta learns from the refined posterior, phi learns to
    predict a good start. This is the variant without back-propagation through
    the refinement steps (cheaper; Kim et al. also differentiate through them).
    ``aux`` is the refined ELBO's; ``aux["elbo_encoder"]`` is the encoder's own.
    Needs an amortised encoder and a prior that does not read phi.
    """
    if int(num_steps) < 1:
        raise ValueError(f"semi-amortised inference needs num_steps >= 1, got {num_steps}")
    elbo = make_elbo(model, num_samples, kl)
    fit = make_fit_local(model, int(num_steps), learning_rate, num_samples, kl)

    def objective(key: jax.Array, theta: Theta, phi: Phi, x: jax.Array):
        if "q_z_given_x" not in phi:
            raise ValueError("semi-amortised inference refines an amortised encoder's q")
        refine_key, theta_key, phi_key = jax.random.split(key, 3)
        stop = jax.lax.stop_gradient
        start = encoder_outputs(model, stop(phi), x[None])
        refined, _ = fit(refine_key, theta, start, x[None])  # fit_local stops theta's gradient
        refined = stop(jax.tree_util.tree_map(lambda a: a[0], refined))
        value_theta, aux = elbo(theta_key, theta, refined, x)
        value_phi, aux_phi = elbo(phi_key, stop(theta), phi, x)
        return value_theta + value_phi, {**aux, "elbo_encoder": aux_phi["elbo"]}

    return objective

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
import optax

from vae_jax.models import LatentVariableModel
from vae_jax.objectives import ObjectiveFn, batch_objective, make_elbo
from vae_jax.schema import Phi, Theta, encoder_outputs, is_amortised, prior_phi, rows, set_rows
from vae_jax.train import StepFn, TrainState, with_kl_weight


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
        if is_amortised(phi):
            raise ValueError(
                "fit_local refines per-datapoint phi {'q_z': ...}; "
                "start from encoder_outputs(...) or prior_phi(...)"
            )
        theta = jax.lax.stop_gradient(theta)
        keys = jax.random.split(key, x_NxD.shape[0])
        q_z, trace_NxT = jax.vmap(fit_one, in_axes=(0, None, 0, 0))(keys, theta, phi["q_z"], x_NxD)
        return {"q_z": q_z}, trace_NxT.T

    return fit_local


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
        if not is_amortised(phi):
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


def init_per_datapoint_state(
    key: jax.Array,
    model: LatentVariableModel,
    optimizer: optax.GradientTransformation,
    local_optimizer: optax.GradientTransformation,
    num_examples: int,
) -> TrainState:
    """A fresh state with one q per training example, started at the prior.

    ``optimizer`` updates theta (its state is over ``{"theta": theta}``, so its
    paths read as the amortised optimiser's do), and every row of phi has its
    own ``local_optimizer`` state (``vmap(init)``), so a row's Adam moments only
    change when its example is in the batch.
    """
    theta, _ = model.init(key)
    phi = prior_phi(model, theta, num_examples)
    opt_state = {
        "theta": optimizer.init({"theta": theta}),
        "phi": {"q_z": jax.vmap(local_optimizer.init)(phi["q_z"])},
    }
    return TrainState(jnp.zeros((), jnp.int32), theta, phi, opt_state)


def make_per_datapoint_step(
    objective_fn: ObjectiveFn,
    optimizer: optax.GradientTransformation,
    local_optimizer: optax.GradientTransformation,
    kl_weight: optax.Schedule | None = None,
) -> StepFn:
    """Classical VI with a learned model: the gradient of the batch's objective moves
    theta by ``optimizer`` and only the batch's rows of phi, each by its own
    ``local_optimizer`` state (:func:`init_per_datapoint_state`). ``kl_weight``: a
    KL warm-up, as in ``vae_jax.train.make_amortised_step``."""

    def step_fn(key, state: TrainState, x_BxD: jax.Array, index_B: jax.Array):
        beta = jnp.ones(()) if kl_weight is None else kl_weight(state.step)
        objective = objective_fn if kl_weight is None else with_kl_weight(objective_fn, beta)
        grad_fn = jax.value_and_grad(batch_objective(objective), argnums=(1, 2), has_aux=True)
        q_z_B = rows(state.phi["q_z"], index_B)
        (loss, aux), (g_theta, g_phi_B) = grad_fn(key, state.theta, {"q_z": q_z_B}, x_BxD)
        updates, theta_opt = optimizer.update(
            {"theta": g_theta}, state.opt_state["theta"], {"theta": state.theta}
        )
        theta = optax.apply_updates({"theta": state.theta}, updates)["theta"]
        local_B = rows(state.opt_state["phi"]["q_z"], index_B)
        q_z_updates, local_B = jax.vmap(local_optimizer.update)(g_phi_B["q_z"], local_B, q_z_B)
        q_z_B = optax.apply_updates(q_z_B, q_z_updates)
        phi = {"q_z": set_rows(state.phi["q_z"], index_B, q_z_B)}
        opt_state = {
            "theta": theta_opt,
            "phi": {"q_z": set_rows(state.opt_state["phi"]["q_z"], index_B, local_B)},
        }
        new_state = TrainState(state.step + 1, theta, phi, opt_state)
        return new_state, {"loss": loss, "beta": beta, **aux}

    return step_fn

"""Training: theta and phi updated together by one optax optimiser.

An epoch is one jitted call: a ``lax.scan`` over the batches of a dataset that
already lives on the device, each step fusing the loss, its gradients and the
optimiser update. Randomness is derived, never stored:

    shuffle_key_e = fold_in(shuffle_key, epoch)      # which examples in which batch
    step_key_t    = fold_in(step_root_key, step)     # binarisation and z samples

so a run resumed from a checkpoint at the start of epoch e replays exactly the
batches and draws of the uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax.data import binarize
from vae_jax.local import prior_phi
from vae_jax.models import LatentVariableModel, Phi, Theta
from vae_jax.objectives import ObjectiveFn, batch_objective
from vae_jax.parallel import constrain_batch

# fold_in data for the adjustment's key: the two split children keep their
# values, so runs without adjustments draw exactly what they drew before.
ADJUST_STREAM = 7


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: optimiser steps taken so far
    theta: Theta
    phi: Phi
    opt_state: Any


def init_train_state(
    key: jax.Array,
    model: LatentVariableModel,
    optimizer: optax.GradientTransformation,
    local_optimizer: optax.GradientTransformation | None = None,
    num_examples: int | None = None,
) -> TrainState:
    """A fresh state. Amortised: one optimiser over ``(theta, phi)``.

    Per-datapoint (``local_optimizer`` given): phi is ``{"q_z": [N, L] rows}``
    started at the prior, ``optimizer`` updates theta, and every row has its own
    ``local_optimizer`` state (``vmap(init)``), so a row's Adam moments only
    change when its example is in the batch.
    """
    theta, phi = model.init(key)
    step = jnp.zeros((), jnp.int32)
    if local_optimizer is None:
        return TrainState(step, theta, phi, optimizer.init((theta, phi)))
    if not num_examples:
        raise ValueError("per-datapoint phi needs num_examples (one q per training example)")
    phi = prior_phi(model, theta, num_examples)
    opt_state = {"theta": optimizer.init(theta), "q_z": jax.vmap(local_optimizer.init)(phi["q_z"])}
    return TrainState(step, theta, phi, opt_state)


def _rows(tree: Any, index_B: jax.Array) -> Any:
    return jax.tree_util.tree_map(lambda a: a[index_B], tree)


def _set_rows(tree: Any, index_B: jax.Array, rows: Any) -> Any:
    return jax.tree_util.tree_map(lambda a, r: a.at[index_B].set(r), tree, rows)


def linear_warmup(step: jax.Array, warmup_steps: int) -> jax.Array:
    """beta_t = min(1, t / warmup_steps): the KL weight of a linear warm-up."""
    if warmup_steps <= 0:
        return jnp.ones(())
    return jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)


def iwae_learning_rate_schedule(
    steps_per_epoch: int, base_learning_rate: float = 1e-3, num_stages: int = 8
) -> optax.Schedule:
    """Burda et al. 2015, section 5: 3^i passes at 1e-3 * 10^(-i/7), i = 0..7."""
    boundaries, values, epochs = [], [base_learning_rate], 0
    for i in range(num_stages - 1):
        epochs += 3**i
        boundaries.append(epochs * steps_per_epoch)
        values.append(base_learning_rate * 10 ** (-(i + 1) / 7))
    return optax.join_schedules([optax.constant_schedule(v) for v in values], boundaries)


def iwae_schedule_epochs(num_stages: int = 8) -> int:
    return sum(3**i for i in range(num_stages))


def make_train_epoch(
    objective_at_beta: Callable[[jax.Array], ObjectiveFn],
    optimizer: optax.GradientTransformation,
    batch_size: int,
    num_examples: int,
    dynamic_binarization: bool = True,
    warmup_steps: int = 0,
    batch_sharding: jax.sharding.Sharding | None = None,
    local_optimizer: optax.GradientTransformation | None = None,
    adjust_fn: Callable | None = None,
    adjust_every: int = 0,
    adjust_examples: int = 1000,
) -> Callable[..., tuple[TrainState, dict]]:
    """Build ``train_epoch(state, train_key, epoch, x_NxD) -> (state, metrics)``.

    The caller jits it once, with the state donated
    (``jax.jit(train_epoch, donate_argnums=0)``); it then compiles once per
    dataset shape. Each epoch shuffles the data, drops the last partial batch
    (it is a different example set every epoch), and runs
    ``num_examples // batch_size`` steps inside one ``lax.scan``.

    Args:
      objective_at_beta: ``beta -> objective_fn``; beta is the KL weight at the
        current step (1 unless ``warmup_steps > 0``).
      optimizer: one optax transformation over the pair ``(theta, phi)``, or
        over theta alone when phi is per-datapoint.
      batch_size: B.
      num_examples: N, the training-set size (static).
      dynamic_binarization: draw x_bin ~ Bernoulli(x) afresh at every step.
      warmup_steps: length of the linear KL warm-up, in steps.
      batch_sharding: if given (``vae_jax.parallel.batch_sharding(mesh)``),
        each batch is split across the mesh's devices (data parallelism).
      local_optimizer: for per-datapoint phi (non-amortised training, see
        :func:`init_train_state`): the update applied to the batch's rows only.
      adjust_fn: ``(key, theta, phi, x_MxD) -> (theta, phi)``, applied after
        every ``adjust_every``-th step to the first ``adjust_examples`` training
        examples (binarised afresh if dynamic): re-alignment or a prior refit
        from ``vae_jax.realign.make_adjustment``. It moves parameters outside
        the optimiser, whose moment estimates are left as they are.

    Returns:
      The epoch function; ``metrics`` are means over the epoch's steps.
    """
    steps_per_epoch = num_examples // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {num_examples} training examples")
    if adjust_fn is not None:
        if adjust_every < 1:
            raise ValueError(f"adjust_every must be >= 1 with an adjust_fn, got {adjust_every}")
        if local_optimizer is not None:
            raise ValueError("adjustments need an amortised encoder, not per-datapoint phi")
    adjust_examples = min(int(adjust_examples), num_examples)

    def maybe_adjust(step, theta, phi, x_NxD, adjust_key):
        x_MxD = x_NxD[:adjust_examples]
        if dynamic_binarization:
            x_MxD = binarize(jax.random.fold_in(adjust_key, 1), x_MxD)
        return jax.lax.cond(
            step % adjust_every == 0,
            lambda: adjust_fn(adjust_key, theta, phi, x_MxD),
            lambda: (theta, phi),
        )

    def train_step(state: TrainState, index_B: jax.Array, x_NxD: jax.Array, step_root_key):
        x_BxD = constrain_batch(x_NxD[index_B], batch_sharding)
        step_key = jax.random.fold_in(step_root_key, state.step)
        binarize_key, objective_key = jax.random.split(step_key)
        adjust_key = jax.random.fold_in(step_key, ADJUST_STREAM)  # a stream of its own
        if dynamic_binarization:
            x_BxD = binarize(binarize_key, x_BxD)
        beta = linear_warmup(state.step, warmup_steps)
        loss_fn = batch_objective(objective_at_beta(beta))
        grad_fn = jax.value_and_grad(loss_fn, argnums=(1, 2), has_aux=True)
        if local_optimizer is None:
            (loss, aux), grads = grad_fn(objective_key, state.theta, state.phi, x_BxD)
            theta_phi = (state.theta, state.phi)
            updates, opt_state = optimizer.update(grads, state.opt_state, theta_phi)
            theta, phi = optax.apply_updates(theta_phi, updates)
        else:  # per-datapoint phi: the gradient reaches only the batch's rows
            q_z_B = _rows(state.phi["q_z"], index_B)
            (loss, aux), (g_theta, g_phi_B) = grad_fn(
                objective_key, state.theta, {"q_z": q_z_B}, x_BxD
            )
            theta_updates, theta_opt = optimizer.update(
                g_theta, state.opt_state["theta"], state.theta
            )
            theta = optax.apply_updates(state.theta, theta_updates)
            local_B = _rows(state.opt_state["q_z"], index_B)
            q_z_updates, local_B = jax.vmap(local_optimizer.update)(g_phi_B["q_z"], local_B, q_z_B)
            q_z_B = optax.apply_updates(q_z_B, q_z_updates)
            phi = {"q_z": _set_rows(state.phi["q_z"], index_B, q_z_B)}
            opt_state = {
                "theta": theta_opt,
                "q_z": _set_rows(state.opt_state["q_z"], index_B, local_B),
            }
        if adjust_fn is not None:
            theta, phi = maybe_adjust(state.step + 1, theta, phi, x_NxD, adjust_key)
        return TrainState(state.step + 1, theta, phi, opt_state), {
            "loss": loss,
            "beta": beta,
            **aux,
        }

    def train_epoch(state: TrainState, train_key: jax.Array, epoch: jax.Array, x_NxD: jax.Array):
        if x_NxD.shape[0] != num_examples:
            raise ValueError(
                f"train_epoch was built for {num_examples} examples, got {x_NxD.shape}"
            )
        shuffle_key, step_root_key = jax.random.split(train_key)
        order = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_examples)
        index_SxB = order[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
        state, metrics = jax.lax.scan(
            lambda s, index_B: train_step(s, index_B, x_NxD, step_root_key), state, index_SxB
        )
        return state, jax.tree_util.tree_map(jnp.mean, metrics)

    return train_epoch


def to_host(tree: Any) -> Any:
    """Device arrays to Python floats (for JSON logs)."""
    return jax.tree_util.tree_map(lambda v: float(np.asarray(v)), tree)

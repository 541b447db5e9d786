"""Training: one loop over step functions.

A way of training is a step function (the pattern of blackjax's kernels)

    step_fn(key, state, x_BxD, index_B) -> (state, metrics)

that takes one batch (``index_B`` are its rows in the training set, which only
per-datapoint phi reads) and returns the next :class:`TrainState`. The steps:

    make_amortised_step        an objective's gradient, one optimiser over theta and phi
    vae_jax.local.make_per_datapoint_step   theta's optimiser, and one per row of phi
    vae_jax.realign.with_adjustment(step)   re-alignment / prior refits between steps

(semi-amortised inference and wake-sleep are objectives of the amortised step).
:func:`make_train_epoch` scans any of them over an epoch in one jitted call,
on a dataset that already lives on the device. Randomness is derived, never
stored:

    shuffle_key_e = fold_in(shuffle_key, epoch)      # which examples in which batch
    step_key_t    = fold_in(step_root_key, step)     # binarisation, then the step's key

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
from vae_jax.models import LatentVariableModel
from vae_jax.objectives import ObjectiveFn, batch_objective
from vae_jax.parallel import constrain_batch
from vae_jax.schema import Phi, Theta, params


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: optimiser steps taken so far
    theta: Theta
    phi: Phi
    opt_state: Any  # the optimiser's state over {"theta": ..., "phi": ...}


StepFn = Callable[[jax.Array, TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]


def init_train_state(
    key: jax.Array, model: LatentVariableModel, optimizer: optax.GradientTransformation
) -> TrainState:
    """A fresh amortised state: the model's (theta, phi) and the optimiser's state
    over ``{"theta": theta, "phi": phi}``. (Per-datapoint phi:
    ``vae_jax.local.init_per_datapoint_state``.)"""
    theta, phi = model.init(key)
    return TrainState(jnp.zeros((), jnp.int32), theta, phi, optimizer.init(params(theta, phi)))


def kl_warmup(warmup_steps: int) -> optax.Schedule:
    """beta_t = min(1, t / warmup_steps): the KL weight of a linear warm-up."""
    if warmup_steps <= 0:
        return optax.constant_schedule(1.0)
    return optax.linear_schedule(0.0, 1.0, warmup_steps)


def with_kl_weight(objective_fn: ObjectiveFn, beta: jax.Array) -> ObjectiveFn:
    """Train ``reconstruction - beta * kl`` of an ELBO objective; ``aux`` is unchanged,
    so ``aux["elbo"]`` stays the unweighted bound."""

    def weighted(key, theta, phi, x):
        _, aux = objective_fn(key, theta, phi, x)
        return aux["reconstruction"] - beta * aux["kl"], aux

    return weighted


def make_amortised_step(
    objective_fn: ObjectiveFn,
    optimizer: optax.GradientTransformation,
    kl_weight: optax.Schedule | None = None,
) -> StepFn:
    """One gradient step on the batch mean of ``objective_fn``, for theta and phi together.

    Args:
      objective_fn: a one-example objective (``vae_jax.objectives``); its gradient
        may be a surrogate's (wake-sleep, semi-amortised inference).
      optimizer: one optax transformation over ``{"theta": theta, "phi": phi}``.
      kl_weight: a KL warm-up schedule (:func:`kl_warmup`), ELBO objectives only;
        ``metrics["beta"]`` is the weight this step trained with.
    """

    def step_fn(key, state: TrainState, x_BxD: jax.Array, index_B: jax.Array):
        del index_B  # an encoder is shared by every example
        beta = jnp.ones(()) if kl_weight is None else kl_weight(state.step)
        objective = objective_fn if kl_weight is None else with_kl_weight(objective_fn, beta)
        loss = batch_objective(objective)

        def minus_objective(tree):
            return loss(key, tree["theta"], tree["phi"], x_BxD)

        tree = params(state.theta, state.phi)
        (value, aux), grads = jax.value_and_grad(minus_objective, has_aux=True)(tree)
        updates, opt_state = optimizer.update(grads, state.opt_state, tree)
        tree = optax.apply_updates(tree, updates)
        new_state = TrainState(state.step + 1, tree["theta"], tree["phi"], opt_state)
        return new_state, {"loss": value, "beta": beta, **aux}

    return step_fn


def iwae_learning_rate_schedule(
    steps_per_epoch: int,
    base_learning_rate: float = 1e-3,
    num_stages: int = 8,
    rounded: bool = False,
) -> optax.Schedule:
    """Burda et al. 2015, section 5: 3^i passes at 1e-3 * 10^(-i/7), i = 0..7.

    ``rounded``: the rates of the authors' released code (yburda/iwae,
    experiments.py), base / 10 * round(10^(1 - i/7), 1): 1e-3, 7.2e-4, 5.2e-4, ...
    """
    boundaries, values, epochs = [], [base_learning_rate], 0
    for i in range(num_stages - 1):
        epochs += 3**i
        boundaries.append(epochs * steps_per_epoch)
        factor = 10 ** (-(i + 1) / 7)
        if rounded:
            factor = round(10 * factor, 1) / 10
        values.append(base_learning_rate * factor)
    return optax.join_schedules([optax.constant_schedule(v) for v in values], boundaries)


class BurdaAdamState(NamedTuple):
    count: jax.Array  # int32: updates made so far
    mu: optax.Updates  # first moment, starts at zeros
    nu: optax.Updates  # second moment, starts at ONES


def scale_by_burda_adam(
    b1: float = 0.99, b2: float = 0.999, eps: float = 1e-4
) -> optax.GradientTransformation:
    """The Adam of the IWAE authors' released code (yburda/iwae, optimizers.py), which
    differs from the paper's (Kingma & Ba) in three ways:

        step_t = sqrt(1 - b2^t) / (1 - b1^t) * m_{t-1} / (sqrt(v_{t-1}) + eps)
        m_t = b1 m_{t-1} + (1 - b1) g_t,   m_0 = 0
        v_t = b2 v_{t-1} + (1 - b2) g_t^2, v_0 = 1   (ones, not zeros)

    eps is added to the square root of the *uncorrected* second moment, and the
    step at t uses the moments from before g_t: Theano computes every shared
    variable's update from the values before the call, so the parameter update
    reads the old m and v (the first step moves nothing). Chain with
    ``optax.scale_by_learning_rate`` for the sign and the rate; the authors'
    gradient is summed over the batch (:func:`burda_adam`).
    """

    def init_fn(tree):  # {"theta": ..., "phi": ...}, as the optimiser sees it
        zeros = jax.tree_util.tree_map(jnp.zeros_like, tree)
        ones = jax.tree_util.tree_map(jnp.ones_like, tree)
        return BurdaAdamState(jnp.zeros([], jnp.int32), zeros, ones)

    def update_fn(updates, state, params=None):
        del params
        t = (state.count + 1).astype(jnp.float32)
        correction = jnp.sqrt(1 - b2**t) / (1 - b1**t)
        step = jax.tree_util.tree_map(
            lambda m, v: correction * m / (jnp.sqrt(v) + eps), state.mu, state.nu
        )
        mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g**2, state.nu, updates)
        return step, BurdaAdamState(state.count + 1, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


def burda_adam(
    learning_rate: float | optax.Schedule,
    batch_size: int,
    b1: float = 0.99,
    b2: float = 0.999,
    eps: float = 1e-4,
) -> optax.GradientTransformation:
    """The IWAE authors' optimiser for a loss that is a batch MEAN: the gradient is
    scaled back to the batch sum their code differentiates (which matters, because
    v starts at 1 and eps is not scale-free), then :func:`scale_by_burda_adam`."""
    return optax.chain(
        optax.scale(float(batch_size)),
        scale_by_burda_adam(b1, b2, eps),
        optax.scale_by_learning_rate(learning_rate),
    )


def iwae_schedule_epochs(num_stages: int = 8) -> int:
    return sum(3**i for i in range(num_stages))


def make_train_epoch(
    step_fn: StepFn,
    batch_size: int,
    num_examples: int,
    dynamic_binarization: bool = True,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> Callable[..., tuple[TrainState, dict]]:
    """Build ``train_epoch(state, train_key, epoch, x_NxD) -> (state, metrics)``.

    The caller jits it once, with the state donated
    (``jax.jit(train_epoch, donate_argnums=0)``); it then compiles once per
    dataset shape. Each epoch shuffles the data, drops the last partial batch
    (it is a different example set every epoch), and runs
    ``num_examples // batch_size`` steps of ``step_fn`` inside one ``lax.scan``.

    Args:
      step_fn: the way of training (see the module docstring).
      batch_size: B.
      num_examples: N, the training-set size (static).
      dynamic_binarization: draw x_bin ~ Bernoulli(x) afresh at every step.
      batch_sharding: if given (``vae_jax.parallel.batch_sharding(mesh)``),
        each batch is split across the mesh's devices (data parallelism).

    Returns:
      The epoch function; ``metrics`` are means over the epoch's steps.
    """
    steps_per_epoch = num_examples // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {num_examples} training examples")

    def train_step(state: TrainState, index_B: jax.Array, x_NxD: jax.Array, step_root_key):
        x_BxD = constrain_batch(x_NxD[index_B], batch_sharding)
        step_key = jax.random.fold_in(step_root_key, state.step)
        binarize_key, key = jax.random.split(step_key)
        if dynamic_binarization:
            x_BxD = binarize(binarize_key, x_BxD)
        return step_fn(key, state, x_BxD, index_B)

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

"""Make the aggregate posterior match the prior: re-alignment and prior refits.

The aggregate posterior q(z) = E_x[q_phi(z|x)] is what the decoder actually
sees in training; the prior p_theta(z) is what it sees when sampling. Two ways
to close the gap between them, both driven by the aggregate's moments:

* :func:`realign` changes latent coordinates, z' = (z - m) / s, folding the
  map into the encoder's output layer and the decoder's first layer. The
  decoder computes the same p(x|z) as before at corresponding points, and the
  new encoder's aggregate posterior has mean 0 and variance 1 per dimension.
  theta["p_z"] is left alone, so with p(z) = N(0, I) the model's prior, seen in
  the old coordinates, becomes N(m, diag(s^2)): the moment-matched aggregate.
* :func:`moment_matched_prior` and :func:`em_mixture_prior` leave the
  coordinates alone and move the prior instead ("empirical Bayes": p <- <q>_X).

Both are pure jnp functions of (theta, phi), so training applies them inside
its jitted loop: :func:`with_adjustment` wraps any step function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vae_jax.data import binarize
from vae_jax.distributions import DiagonalGaussian
from vae_jax.models import LatentVariableModel
from vae_jax.networks import LOG_SCALE_SHIFT
from vae_jax.schema import Phi, Theta, is_amortised, phi_axis
from vae_jax.train import StepFn, TrainState

# Smallest variance a refitted prior component may have (nats stay finite).
MIN_VARIANCE = 1e-6


def posterior_moments(model: LatentVariableModel, phi: Phi, x_NxD: jax.Array) -> dict:
    """Mean and variance per latent dimension of (1/N) sum_n q_phi(z | x_n).

        mean = E_x[mu(x)],   variance = E_x[sigma^2(x)] + Var_x[mu(x)]

    The in-memory twin of ``vae_jax.evaluate.aggregate_posterior_moments``
    (which streams a whole dataset); this one is jittable, for a subset.
    """
    q = jax.vmap(model.posterior, in_axes=(phi_axis(phi), 0))(phi, x_NxD)
    mean = jnp.mean(q.loc, axis=0)
    variance = jnp.mean(q.variance, axis=0) + jnp.var(q.loc, axis=0)
    return {"mean": mean, "variance": variance}


def _decoder_layers_reading_z(decoder: dict) -> list[str]:
    # An MLP decoder's first hidden layer reads z; with no hidden layer, every head does.
    if "hidden_0" in decoder:
        return ["hidden_0"]
    return [name for name in decoder if name != LOG_SCALE_SHIFT]


def realign(theta: Theta, phi: Phi, moments: dict) -> tuple[Theta, Phi]:
    """Fold z' = (z - m) / s, s = sqrt(variance), into the encoder and decoder.

    Encoder (amortised): mu' = (W4 h + b4 - m) / s, so W4' = W4 / s and
    b4' = (b4 - m) / s; log sigma' = log sigma - log s, kept in the tree's
    ``LOG_SCALE_SHIFT`` leaf (added after the soft clamp, so it is exact).
    Per-datapoint phi: the same map applied to each row's (loc, log_scale).
    Decoder: its first layer computes z W1 + b1 = z' (s W1) + (m W1 + b1), so
    W1' = diag(s) W1 and b1' = b1 + m W1: p'(x | z') = p(x | z) exactly.

    Args:
      theta, phi: the model's trees (MLP encoder/decoder of ``make_vae``).
      moments: ``{"mean": [L], "variance": [L]}`` of the aggregate posterior,
        from :func:`posterior_moments` or ``aggregate_posterior_moments``.

    Returns:
      ``(theta', phi')``; theta["p_z"] is unchanged.
    """
    m = jnp.asarray(moments["mean"])
    variance = jnp.asarray(moments["variance"])
    latent_dim = m.shape[-1]
    if m.shape != (latent_dim,) or variance.shape != (latent_dim,):
        raise ValueError(
            f"moments must be per-dimension vectors of one shape; got mean {m.shape}, "
            f"variance {variance.shape}"
        )
    s = jnp.sqrt(variance)
    log_s = jnp.log(s)

    def along_last(v, a):  # v [L] broadcast against a [..., L], rank explicit
        return v.reshape((1,) * (a.ndim - 1) + (latent_dim,))

    if not is_amortised(phi):
        loc, log_scale = phi["q_z"]["loc"], phi["q_z"]["log_scale"]
        new_phi = {
            "q_z": {
                "loc": (loc - along_last(m, loc)) / along_last(s, loc),
                "log_scale": log_scale - along_last(log_s, log_scale),
            }
        }
    else:
        encoder = dict(phi["q_z_given_x"])
        if "loc" not in encoder:
            raise ValueError(
                "realign folds the map into the encoder's 'loc' head of a shared-trunk MLP; "
                f"this encoder has layers {sorted(encoder)}"
            )
        if LOG_SCALE_SHIFT not in encoder:
            raise ValueError(
                f"realign moves log sigma by its encoder's {LOG_SCALE_SHIFT!r} leaf, which this "
                "encoder was built without: make_vae(..., log_scale_shift=True)"
            )
        loc = encoder["loc"]
        encoder["loc"] = {"kernel": loc["kernel"] / s[None, :], "bias": (loc["bias"] - m) / s}
        encoder[LOG_SCALE_SHIFT] = encoder[LOG_SCALE_SHIFT] - log_s
        new_phi = {**phi, "q_z_given_x": encoder}

    decoder = dict(theta["p_x_given_z"])
    for name in _decoder_layers_reading_z(decoder):
        if "kernel" not in decoder[name]:
            raise ValueError(
                f"decoder layer {name!r} is tied to the encoder (its kernel is stored in phi); "
                "realign needs untied weights"
            )
        kernel_LxH, bias_H = decoder[name]["kernel"], decoder[name]["bias"]
        if kernel_LxH.shape[0] != latent_dim:
            raise ValueError(
                f"decoder layer {name!r} has kernel {kernel_LxH.shape}; expected {latent_dim} rows"
            )
        decoder[name] = {"kernel": s[:, None] * kernel_LxH, "bias": bias_H + m @ kernel_LxH}
    return {**theta, "p_x_given_z": decoder}, new_phi


def moment_matched_prior(moments: dict) -> dict:
    """theta["p_z"] of a learned Gaussian prior set to N(mean, diag(variance))."""
    variance = jnp.maximum(jnp.asarray(moments["variance"]), MIN_VARIANCE)
    return {"loc": jnp.asarray(moments["mean"]), "log_scale": 0.5 * jnp.log(variance)}


def em_mixture_prior(p_z: dict, z_MxL: jax.Array, num_steps: int = 10) -> dict:
    """EM steps fitting a diagonal mixture prior to samples of the aggregate posterior.

    E-step: r_mk = softmax_k(log w_k + log N(z_m; loc_k, sigma_k^2)).
    M-step: w_k = N_k / M, loc_k = sum_m r_mk z_m / N_k,
            sigma_k^2 = sum_m r_mk (z_m - loc_k)^2 / N_k   (N_k = sum_m r_mk).
    A component with (almost) no responsibility keeps its parameters.

    Args:
      p_z: ``{"logits": [K], "loc": [K, L], "log_scale": [K, L]}``, the start.
      z_MxL: samples z ~ q(z | x_m), one per example of a data subset.
      num_steps: EM iterations.
    """

    def step(tree, _):
        components = DiagonalGaussian(tree["loc"][None], tree["log_scale"][None])
        log_joint_MxK = jax.nn.log_softmax(tree["logits"])[None] + components.log_prob(
            z_MxL[:, None, :]
        )
        r_MxK = jax.nn.softmax(log_joint_MxK, axis=1)
        n_K = jnp.sum(r_MxK, axis=0)
        alive_K = n_K > 1e-3
        safe_n_K = jnp.where(alive_K, n_K, 1.0)
        loc_KxL = (r_MxK.T @ z_MxL) / safe_n_K[:, None]
        second_KxL = (r_MxK.T @ z_MxL**2) / safe_n_K[:, None]
        variance_KxL = jnp.maximum(second_KxL - loc_KxL**2, MIN_VARIANCE)
        new = {
            "logits": jnp.log(jnp.maximum(n_K, 1e-12) / z_MxL.shape[0]),
            "loc": jnp.where(alive_K[:, None], loc_KxL, tree["loc"]),
            "log_scale": jnp.where(
                alive_K[:, None], 0.5 * jnp.log(variance_KxL), tree["log_scale"]
            ),
        }
        return new, None

    fitted, _ = jax.lax.scan(step, p_z, None, length=num_steps)
    return fitted


ADJUSTMENTS = ("realign", "refit_prior")


def make_adjustment(model: LatentVariableModel, kind: str, em_steps: int = 10):
    """``adjust(key, theta, phi, x_MxD) -> (theta, phi)`` for the training loop.

    ``"realign"``: :func:`realign` with the moments of q over ``x_MxD``.
    ``"refit_prior"``: a learned Gaussian prior set to those moments, or a
    mixture prior moved by ``em_steps`` EM steps on one z ~ q(z|x) per example.
    """
    if kind not in ADJUSTMENTS:
        raise ValueError(f"unknown adjustment {kind!r}; choose one of {list(ADJUSTMENTS)}")

    def adjust(key, theta, phi, x_MxD):
        if not is_amortised(phi):
            raise ValueError("in-training adjustments need an amortised encoder phi")
        moments = posterior_moments(model, phi, x_MxD)
        if kind == "realign":
            return realign(theta, phi, moments)
        p_z = theta["p_z"]
        if set(p_z) == {"loc", "log_scale"}:
            return {**theta, "p_z": moment_matched_prior(moments)}, phi
        if set(p_z) == {"logits", "loc", "log_scale"}:
            q = jax.vmap(model.posterior, in_axes=(None, 0))(phi, x_MxD)
            z_MxL = q.sample(key)
            return {**theta, "p_z": em_mixture_prior(p_z, z_MxL, em_steps)}, phi
        raise ValueError(
            f"refit_prior needs a learned_gaussian or mixture_of_gaussians prior; theta['p_z'] "
            f"has keys {sorted(p_z)} (the standard normal has none; the VampPrior's are "
            "pseudo-inputs, which have no moment-matching update)"
        )

    return adjust


# fold_in data of the adjustment's key under the step's key: a stream of its own.
ADJUST_STREAM = 7


def with_adjustment(
    step_fn: StepFn,
    adjust_fn,
    every: int,
    x_MxD: jax.Array,
    dynamic_binarization: bool = True,
) -> StepFn:
    """``step_fn``, then ``adjust_fn`` (:func:`make_adjustment`) after every
    ``every``-th step, on the examples ``x_MxD`` (binarised afresh if dynamic).

    The adjustment moves parameters outside the optimiser, whose moment
    estimates are left as they are; the tree keeps its structure (the encoder's
    shift leaf is built in, ``make_vae(..., log_scale_shift=True)``).
    """
    if every < 1:
        raise ValueError(f"an adjustment needs every >= 1 steps, got {every}")
    x_MxD = jnp.asarray(x_MxD)

    def adjusted(key, state: TrainState, x_BxD: jax.Array, index_B: jax.Array):
        state, metrics = step_fn(key, state, x_BxD, index_B)
        adjust_key = jax.random.fold_in(key, ADJUST_STREAM)
        x = binarize(jax.random.fold_in(adjust_key, 1), x_MxD) if dynamic_binarization else x_MxD
        theta, phi = jax.lax.cond(
            state.step % every == 0,
            lambda: adjust_fn(adjust_key, state.theta, state.phi, x),
            lambda: (state.theta, state.phi),
        )
        return state._replace(theta=theta, phi=phi), metrics

    return adjusted

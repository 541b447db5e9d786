"""Objectives for ONE example, and the single place where batches are averaged.

Sign and reduction conventions, everywhere in vae_jax:
  * every quantity is per example, in nats, summed over data and latent dims;
  * ``elbo``, ``reconstruction`` (E_q log p(x|z)) and ``log_p_x`` are log
    densities (higher is better; the ELBO of a binarised MNIST digit is about
    -90); ``kl`` is KL(q(z|x) || p(z)) >= 0;
  * the training loss is ``-mean_batch(objective)``, taken only in
    :func:`batch_objective`.

Objective functions have the signature ``objective_fn(key, theta, phi, x_D)``
and return ``(value, aux)``; ``value`` is what training maximises (the ELBO,
its beta-weighted variant, or the IWAE bound) and ``aux`` holds named terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from vae_jax.distributions import has_analytic_kl, kl_divergence
from vae_jax.models import LatentVariableModel
from vae_jax.schema import Phi, Theta, phi_axis

ObjectiveFn = Callable[[jax.Array, Theta, Phi, jax.Array], tuple[jax.Array, dict]]
KL_ESTIMATORS = ("auto", "analytic", "sample")


def make_elbo(
    model: LatentVariableModel,
    num_samples: int = 1,
    kl: str = "auto",
    beta: float | jax.Array = 1.0,
) -> ObjectiveFn:
    """The reparameterised ELBO of Kingma & Welling 2013, eq. 7 (analytic KL)
    or eq. 6 (Monte-Carlo KL), for one example.

        ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)),   z = mu + sigma * eps.

    The returned ``value`` is ``reconstruction - beta * kl`` (beta != 1 is the
    KL-weighted training objective, e.g. warm-up); ``aux["elbo"]`` is always
    the unweighted bound.

    Args:
      model: the components.
      num_samples: S, reparameterised samples per example.
      kl: ``"analytic"`` (closed form, needs a Gaussian pair), ``"sample"``
        (the S-sample estimate of E_q[log q(z|x) - log p(z)]), or ``"auto"``:
        analytic where a closed form exists (Gaussian priors), sampled otherwise
        (mixture and VampPrior). Both are unbiased for the same ELBO;
        ``aux["kl_is_analytic"]`` says which was used.
      beta: weight on the KL term in ``value``; may be a traced scalar.
    """
    if kl not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kl!r}; choose one of {list(KL_ESTIMATORS)}")
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")

    def elbo(key: jax.Array, theta: Theta, phi: Phi, x: jax.Array) -> tuple[jax.Array, dict]:
        q_z = model.posterior(phi, x)
        p_z = model.prior(theta, phi)
        z_SxL = q_z.sample(key, (num_samples,))
        reconstruction = jnp.mean(model.likelihood(theta, z_SxL, phi).log_prob(x))
        analytic = kl == "analytic" or (kl == "auto" and has_analytic_kl(q_z, p_z))
        if analytic:
            if not has_analytic_kl(q_z, p_z):
                raise ValueError(
                    f"no analytic KL for {type(q_z).__name__} || {type(p_z).__name__}; "
                    "use kl='sample'"
                )
            kl_term = kl_divergence(q_z, p_z)
        else:
            kl_term = jnp.mean(q_z.log_prob(z_SxL) - p_z.log_prob(z_SxL))
        aux = {
            "elbo": reconstruction - kl_term,
            "reconstruction": reconstruction,
            "kl": kl_term,
            "kl_is_analytic": jnp.asarray(float(analytic)),
        }
        return reconstruction - beta * kl_term, aux

    return elbo


def log_importance_weights(
    key: jax.Array,
    model: LatentVariableModel,
    theta: Theta,
    phi: Phi,
    x: jax.Array,
    num_samples: int,
) -> jax.Array:
    """log w_s = log p(x, z_s) - log q(z_s | x), z_s ~ q(z|x); shape [S]."""
    q_z = model.posterior(phi, x)
    return _log_weights(model, theta, phi, q_z, x, q_z.sample(key, (num_samples,)))


def _log_weights(model, theta, phi, q_z, x, z_SxL):
    """log w_s = log p(x, z_s) - log q_z(z_s) at the given draws z_s."""
    log_joint_S = model.prior(theta, phi).log_prob(z_SxL) + model.likelihood(
        theta, z_SxL, phi
    ).log_prob(x)
    return log_joint_S - q_z.log_prob(z_SxL)


GRADIENTS = ("reparam", "stl", "dreg")


def make_iwae_bound(
    model: LatentVariableModel, num_samples: int, gradient: str = "reparam"
) -> ObjectiveFn:
    """The importance-weighted bound of Burda et al. 2015, eq. 8, for one example.

        L_k(x) = log (1/k) sum_s w_s,   w_s = p(x, z_s) / q(z_s|x),   z_s = g(eps_s, phi),

    computed with logsumexp. L_1 is the ELBO; E[L_k] increases with k towards
    log p(x). The encoder runs once per example, whatever k (only z is drawn k times).

    ``gradient`` picks the estimator of grad_phi L_k; the value, and theta's
    gradient, are the same for all three:

      * ``"reparam"``: the gradient of L_k as written. Through log q(z_s | x; phi) it
        holds a score-function term, whose noise grows relative to the signal as k
        grows (Rainforth et al. 2018).
      * ``"stl"`` (Roeder, Wu & Duvenaud 2017, "sticking the landing"): q's
        parameters are stopped in log q, so phi's gradient flows through z_s only.
        Unbiased for the ELBO (k = 1); for k > 1 it is biased (Tucker et al. 2018).
      * ``"dreg"`` (Tucker, Lawson, Gu & Maddison 2018, doubly reparameterised):
        grad_phi = sum_s w~_s^2 d log w_s / d z_s  d z_s / d phi, with w~ the
        normalised weights: the score term reparameterised a second time.
        Unbiased for every k, and its signal-to-noise ratio does not fall with k.

    ``aux["elbo"]`` is the single-sample ELBO estimate averaged over the same k
    samples, so the two bounds can be compared on the same draws.
    """
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if gradient not in GRADIENTS:
        raise ValueError(
            f"unknown gradient estimator {gradient!r}; choose one of {list(GRADIENTS)}"
        )
    log_k = math.log(num_samples)
    stop = jax.lax.stop_gradient

    def iwae_bound(key: jax.Array, theta: Theta, phi: Phi, x: jax.Array) -> tuple[jax.Array, dict]:
        q_z = model.posterior(phi, x)
        z_SxL = q_z.sample(key, (num_samples,))
        if gradient == "reparam":
            log_w_S = _log_weights(model, theta, phi, q_z, x, z_SxL)
            bound = jax.nn.logsumexp(log_w_S) - log_k
            return bound, {"iwae_bound": bound, "elbo": jnp.mean(log_w_S)}
        q_stopped = model.posterior(stop(phi), x)  # its parameters fixed, z still a path

        def log_w(theta, phi, z_SxL):  # phi here: where p reads it (VampPrior, tied kernel)
            return _log_weights(model, theta, phi, q_stopped, x, z_SxL)

        if gradient == "stl":
            log_w_S = log_w(theta, phi, z_SxL)
            bound = jax.nn.logsumexp(log_w_S) - log_k
        else:  # dreg: theta's gradient from L_k at fixed z, phi's from the reweighted path
            log_w_S = log_w(theta, phi, stop(z_SxL))
            bound = jax.nn.logsumexp(log_w_S) - log_k
            path_S = log_w(stop(theta), stop(phi), z_SxL)
            weights_sq_S = stop(jax.nn.softmax(log_w_S)) ** 2
            surrogate = jnp.sum(weights_sq_S * path_S)
            bound = bound + surrogate - stop(surrogate)  # the value stays L_k
        return bound, {"iwae_bound": stop(bound), "elbo": stop(jnp.mean(log_w_S))}

    return iwae_bound


def check_sample_counts(num_samples, chunk_size) -> tuple[int, int]:
    """``(num_samples, chunk_size)`` as ints, both >= 1, or a ValueError naming them."""
    num_samples, chunk_size = int(num_samples), int(chunk_size)
    if num_samples < 1 or chunk_size < 1:
        raise ValueError(
            f"num_samples and chunk_size must be >= 1, got {num_samples}, {chunk_size}"
        )
    return num_samples, chunk_size


def chunked_logsumexp(log_w_fn: Callable, key: jax.Array, num_samples: int, chunk_size: int):
    """log sum_s exp(log w_s) over ``num_samples`` weights drawn in chunks.

    ``log_w_fn(chunk_key, chunk_size) -> [chunk_size]``; chunk c uses
    ``fold_in(key, c)``, a last partial chunk is masked, and peak memory is set
    by ``chunk_size``, not by ``num_samples``. Returns -inf for ``num_samples = 0``;
    callers check the counts (:func:`check_sample_counts`).
    """
    if num_samples == 0:
        return jnp.array(-jnp.inf, dtype=jnp.result_type(float))
    chunk_size = min(chunk_size, num_samples)

    def add_chunk(carry, _):
        # The chunk index rides in the carry, not in scan's xs, so nothing of
        # size num_chunks is ever allocated.
        running, chunk_index = carry
        log_w_C = log_w_fn(jax.random.fold_in(key, chunk_index), chunk_size)
        valid_C = chunk_index * chunk_size + jnp.arange(chunk_size) < num_samples
        chunk = jax.nn.logsumexp(jnp.where(valid_C, log_w_C, -jnp.inf))
        return (jnp.logaddexp(running, chunk), chunk_index + 1), None

    init = (jnp.array(-jnp.inf, dtype=jnp.result_type(float)), jnp.zeros((), jnp.uint32))
    (total, _), _ = jax.lax.scan(add_chunk, init, length=-(-num_samples // chunk_size))
    return total


def make_log_marginal_likelihood(
    model: LatentVariableModel, num_samples: int = 5000, chunk_size: int = 500
) -> Callable[[jax.Array, Theta, Phi, jax.Array], jax.Array]:
    """Importance-sampled log p(x) with S samples from q(z|x), for one example.

        log p(x) ~= log (1/S) sum_s p(x, z_s) / q(z_s | x)

    This is the estimator behind every NLL in the literature (Burda et al.
    2015, section 5: S = 5000). The samples are drawn in chunks of
    ``chunk_size`` inside a ``lax.scan`` that carries a running logsumexp, so
    peak memory is set by ``chunk_size`` and does not grow with S. Chunk i
    uses ``fold_in(key, i)``; a last partial chunk is masked.

    Returns:
      ``log_p_x_fn(key, theta, phi, x_D) -> scalar`` (nats, a log density).
    """
    num_samples, chunk_size = check_sample_counts(num_samples, chunk_size)

    def log_p_x(key: jax.Array, theta: Theta, phi: Phi, x: jax.Array) -> jax.Array:
        q_z = model.posterior(phi, x)  # the encoder runs once, not once per chunk

        def log_w_fn(chunk_key, size):
            return _log_weights(model, theta, phi, q_z, x, q_z.sample(chunk_key, (size,)))

        return chunked_logsumexp(log_w_fn, key, num_samples, chunk_size) - math.log(num_samples)

    return log_p_x


def batch_objective(objective_fn: ObjectiveFn) -> Callable:
    """Lift a one-example objective to a batch loss: the ONE place means are taken.

    Each example gets its own key (``split(key, B)``), then

        loss = -(1/B) sum_b objective_fn(key_b, theta, phi_b, x_b)

    where ``phi_b = phi`` (amortised) or ``phi`` row b (per-datapoint phi of
    the batch, ``[B, L]``); :func:`phi_axis` picks the vmap ``in_axes``.

    Returns:
      ``loss_fn(key, theta, phi, x_BxD) -> (loss, aux)`` where ``aux`` holds
      the batch means of the objective's named terms.
    """

    def loss_fn(key: jax.Array, theta: Theta, phi: Phi, x_BxD: jax.Array):
        if x_BxD.ndim != 2:
            raise ValueError(f"expected a batch of shape [B, D], got {x_BxD.shape}")
        per_example = jax.vmap(objective_fn, in_axes=(0, None, phi_axis(phi), 0))
        values_B, aux_B = per_example(jax.random.split(key, x_BxD.shape[0]), theta, phi, x_BxD)
        return -jnp.mean(values_B), jax.tree_util.tree_map(jnp.mean, aux_B)

    return loss_fn

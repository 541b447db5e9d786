"""Dataset-level evaluation: ELBO terms, IS estimates of log p(x), active units.

The factories return plain functions; the entry point jits each once.

Randomness: every use of the evaluation key draws from a named stream of its
own, ``stream_key(eval_key, Stream.X) = fold_in(eval_key, X)``, and only then
are example indices folded in: ``fold_in(stream_key, example_index)``. Since
``split(key, n)[j] == fold_in(key, j)``, folding example indices straight into
the evaluation key would hand example j's noise to any other use that folds a
small integer j into it. The evaluators fold their own stream in, so callers
pass the evaluation key itself. A score does not depend on the evaluation batch
size, and every model scored with the same key sees the same noise. Batches are
padded to one fixed shape: each evaluator compiles once.
"""

from __future__ import annotations

import enum
import functools
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.distributions import (
    Chain,
    DiagonalGaussian,
    has_analytic_kl,
    kl_divergence_per_dim,
)
from vae_jax.host import Progress, fit_local_in_batches, map_dataset, padded_batches, take_rows
from vae_jax.local import make_fit_local
from vae_jax.models import LatentVariableModel, num_params
from vae_jax.objectives import (
    check_sample_counts,
    chunked_logsumexp,
    make_elbo,
    make_log_marginal_likelihood,
)
from vae_jax.parallel import constrain_batch
from vae_jax.schema import Phi, Theta, decoder_name, phi_axis, prior_phi

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2015, section 5.2
# A chain's E[z_2 | x] is an average over draws of z_1; its Monte Carlo variance,
# at most Var(z_2 | x) / draws, must stay well under the threshold above.
CHAIN_MEAN_DRAWS = 1000
CHAIN_MEAN_STREAM = 1  # fold_in data under an example's ELBO key
CHAIN_KL_DRAWS = 100  # z ~ q per example for a chain's KL per layer
CHAIN_KL_STREAM = 2
# A decoder unit is "saturated" if its activation moves by less than this over the
# test images (max - min, with z at each image's posterior mean): a constant, which
# only adds to the next layer's bias.
SATURATION_RANGE = 0.01


@enum.unique
class Stream(enum.IntEnum):
    """The named random streams under one evaluation key, one per use.

    ``tests/test_streams.py`` collects the keys each use actually draws with
    and checks that no two uses share one.
    """

    ELBO = 1  # make_elbo_terms: per example
    LOG_P_X = 2  # make_log_p_x: per example, then per chunk of samples
    LOG_P_X_MIXTURE = 3  # make_mixture_log_p_x: per example, per proposal, per chunk
    AGGREGATE_KL = 4  # make_aggregate_kl
    FIT_LOCAL = 5  # test-time fit of a per-datapoint model's q's
    FIT_SEMI_AMORTISED = 6  # the inference gap's refinement of the encoder's q
    FIT_OPTIMAL = 7  # the inference gap's q*
    PLOTS = 8  # samples and reconstructions
    TRAIN_BITS = 9  # one fixed binarisation of training images (aggregate KL by N)
    AGGREGATE_KL_BY_N = 10  # the aggregate KL of N training images, N folded in


def stream_key(key: jax.Array, stream: Stream) -> jax.Array:
    """``fold_in(key, stream)``: the root key of one named use of ``key``."""
    return jax.random.fold_in(key, int(stream))


def _per_example_keys(key: jax.Array, index_B: jax.Array) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(index_B)


def make_elbo_terms(model: LatentVariableModel, num_samples: int = 1) -> Callable:
    """``(key, theta, phi, x_BxD, index_B) -> dict of per-example arrays``.

    ``phi`` may be amortised or per-datapoint (rows of the batch). ``key`` is
    the evaluation key; example i draws with ``fold_in(stream_key(key,
    Stream.ELBO), i)``.
    Keys: ``elbo``, ``reconstruction``, ``kl`` [B]; ``kl_per_dim`` and
    ``posterior_mean`` [B, L] (``kl_per_dim`` is NaN without an analytic KL);
    ``kl_per_layer`` [B, k] (k stochastic layers; a chain's by Monte Carlo).
    """
    elbo_fn = make_elbo(model, num_samples=num_samples, kl="auto")

    def terms(example_key, theta, phi, x):
        _, aux = elbo_fn(example_key, theta, phi, x)
        q_z, p_z = model.posterior(phi, x), model.prior(theta, phi)
        if has_analytic_kl(q_z, p_z):
            kl_per_dim = kl_divergence_per_dim(q_z, p_z)
        else:
            kl_per_dim = jnp.full((model.latent_dim,), jnp.nan)
        if isinstance(q_z, Chain):  # stochastic layers: E[z | x] by Monte Carlo
            mean_key = jax.random.fold_in(example_key, CHAIN_MEAN_STREAM)
            posterior_mean = q_z.estimate_mean(mean_key, CHAIN_MEAN_DRAWS)
            # the KL's term per layer, E_q[log q(z_i | .) - log p(z_i | .)] (the z1 term is
            # not itself a KL and may be negative); in expectation they sum to the KL
            z_SxL = q_z.sample(jax.random.fold_in(example_key, CHAIN_KL_STREAM), (CHAIN_KL_DRAWS,))
            log_ratio_SxK = q_z.log_prob_per_layer(z_SxL) - p_z.log_prob_per_layer(z_SxL)
            kl_per_layer = jnp.mean(log_ratio_SxK, axis=0)
        else:
            posterior_mean = q_z.mean
            kl_per_layer = aux["kl"][None]
        return {
            **aux,
            "kl_per_dim": kl_per_dim,
            "kl_per_layer": kl_per_layer,
            "posterior_mean": posterior_mean,
        }

    def batch(key, theta, phi, x_BxD, index_B):
        keys_B = _per_example_keys(stream_key(key, Stream.ELBO), index_B)
        return jax.vmap(terms, in_axes=(0, None, phi_axis(phi), 0))(keys_B, theta, phi, x_BxD)

    return batch


def make_log_p_x(
    model: LatentVariableModel,
    num_samples: int = 5000,
    chunk_size: int = 500,
    batch_sharding: jax.sharding.Sharding | None = None,
):
    """``(key, theta, phi, x_BxD, index_B) -> log p(x) [B]`` by IS.

    Chunked over samples (memory independent of S) and, with
    ``batch_sharding``, split over devices by example. Example i draws from
    ``fold_in(stream_key(key, Stream.LOG_P_X), i)``.
    """
    log_p_x = make_log_marginal_likelihood(model, num_samples, chunk_size)

    def batch(key, theta, phi, x_BxD, index_B):
        x_BxD = constrain_batch(x_BxD, batch_sharding)
        keys_B = _per_example_keys(stream_key(key, Stream.LOG_P_X), index_B)
        return jax.vmap(log_p_x, in_axes=(0, None, phi_axis(phi), 0))(keys_B, theta, phi, x_BxD)

    return batch


def make_mixture_log_p_x(
    model: LatentVariableModel, num_samples: int = 5000, chunk_size: int = 500
) -> Callable:
    """``(key, theta, phi, phi_star, x_BxD, index_B) -> log p(x) [B]``: IS with two proposals.

    The proposal is the mixture r(z) = a q_phi(z|x) + (1 - a) q*(z) of the
    model's encoder (``phi``, amortised) and a second Gaussian per example
    (``phi_star``: per-datapoint rows, e.g. a fitted q*). S_phi = S - S // 2
    draws come from q_phi and S_star = S // 2 from q*, a = S_phi / S, and every
    draw is weighted against the whole mixture:

        log p(x) ~= log (1/S) sum_s p(x, z_s) / r(z_s)

    This is the deterministic-mixture (balance heuristic) estimator of
    multiple importance sampling (Veach & Guibas 1995; Owen & Zhou 2000). Its
    mean is p(x) exactly, so by Jensen its log is a stochastic lower bound on
    log p(x), like IS with one proposal. Taking per example the larger of two
    single-proposal estimates is not: the maximum of two noisy estimates is
    biased upward. No weight exceeds p(x, z) / (a q_phi(z|x)), so a poor q*
    cannot make the weights heavier-tailed than IS with q_phi alone.

    The prior and the likelihood read ``phi`` (the VampPrior and tied decoders
    do); q* is only a proposal. Example i draws from
    ``fold_in(stream_key(key, Stream.LOG_P_X_MIXTURE), i)``: its q_phi draws
    fold in 0 and its q* draws 1, then the chunk index.
    """
    num_samples, chunk_size = check_sample_counts(num_samples, chunk_size)
    counts = (num_samples - num_samples // 2, num_samples // 2)  # (S_phi, S_star)
    log_a, log_1_minus_a = (math.log(n / num_samples) if n else -math.inf for n in counts)

    def log_p_x(key, theta, phi, phi_star, x):
        q_phi, q_star = model.posterior(phi, x), model.posterior(phi_star, x)
        p_z = model.prior(theta, phi)

        def log_weights(proposal, chunk_key, size):
            z_CxL = proposal.sample(chunk_key, (size,))
            log_r_C = jnp.logaddexp(
                log_a + q_phi.log_prob(z_CxL), log_1_minus_a + q_star.log_prob(z_CxL)
            )
            log_joint_C = p_z.log_prob(z_CxL) + model.likelihood(theta, z_CxL, phi).log_prob(x)
            return log_joint_C - log_r_C

        totals = [
            chunked_logsumexp(
                functools.partial(log_weights, q), jax.random.fold_in(key, which), n, chunk_size
            )
            for which, (q, n) in enumerate(zip((q_phi, q_star), counts, strict=True))
        ]
        return jnp.logaddexp(*totals) - math.log(num_samples)

    def batch(key, theta, phi, phi_star, x_BxD, index_B):
        if phi_axis(phi) is not None:
            raise ValueError("make_mixture_log_p_x: phi must be the amortised encoder")
        keys_B = _per_example_keys(stream_key(key, Stream.LOG_P_X_MIXTURE), index_B)
        return jax.vmap(log_p_x, in_axes=(0, None, None, phi_axis(phi_star), 0))(
            keys_B, theta, phi, phi_star, x_BxD
        )

    return batch


def active_units(posterior_mean_NxL: np.ndarray, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Number of d with Cov_x(E_q[z_d | x]) > threshold."""
    return int(np.sum(np.var(posterior_mean_NxL, axis=0) > threshold))


def saturated_decoder_units(
    model, theta: Theta, posterior_mean_NxL: np.ndarray, max_range: float = SATURATION_RANGE
) -> list[int] | None:
    """Per hidden layer of p(x | z) (input side first), the units whose activation
    moves by less than ``max_range`` over the images whose posterior means are given:
    constants that only shift the next layer's bias. None for a decoder that is
    not an untied MLP."""
    name = decoder_name(theta)
    decoder = getattr(model, name)
    if decoder.hidden is None or getattr(model, "tying", None) is not None:
        return None
    z1_size = getattr(model, "latent_sizes", (model.latent_dim,))[0]  # x reads z_1 only
    hidden = jax.jit(decoder.hidden)(theta[name], jnp.asarray(posterior_mean_NxL[:, :z1_size]))
    return [int(np.sum(np.ptp(np.asarray(h), axis=0) < max_range)) for h in hidden]


def make_posterior_moment_sums(model: LatentVariableModel) -> Callable:
    """``(phi, x_BxD, valid_B) -> sums`` of mu, mu^2 and sigma^2 over valid examples."""

    def sums(phi, x_BxD, valid_B):
        q_z = jax.vmap(model.posterior, in_axes=(phi_axis(phi), 0))(phi, x_BxD)
        w = valid_B.astype(q_z.loc.dtype)[:, None]
        return {
            "mu": jnp.sum(w * q_z.loc, axis=0),
            "mu_sq": jnp.sum(w * q_z.loc**2, axis=0),
            "var": jnp.sum(w * q_z.variance, axis=0),
        }

    return sums


def aggregate_posterior_moments(
    sums_fn: Callable, phi: Phi, x_NxD: np.ndarray, batch_size: int = 500
) -> dict:
    """Moments of the aggregate posterior q(z) = (1/N) sum_n q(z | x_n), per latent dim.

        mean_d = E_x[mu_d(x)]
        var_d  = E_x[sigma_d^2(x)] + Var_x[mu_d(x)]        (law of total variance)

    Streams the data in batches through the jitted ``sums_fn``
    (:func:`make_posterior_moment_sums`) and accumulates in float64.
    Returns ``{"mean": [L], "variance": [L], "kl_moment_matched_to_standard_normal"}``,
    the last being KL(N(mean, diag(var)) || N(0, I)): zero exactly when the
    aggregate posterior's first two moments match the standard prior's.
    """
    n = x_NxD.shape[0]
    if n == 0:
        raise ValueError(
            f"aggregate posterior moments need at least one image; x has shape {x_NxD.shape}"
        )
    totals = None
    for b in padded_batches(n, batch_size):
        out = sums_fn(take_rows(phi, b.rows), jnp.asarray(x_NxD[b.rows]), jnp.asarray(b.index < n))
        out = {k: np.asarray(v, np.float64) for k, v in out.items()}
        totals = out if totals is None else {k: totals[k] + out[k] for k in totals}
    mean = totals["mu"] / n
    variance = totals["var"] / n + (totals["mu_sq"] / n - mean**2)
    kl = 0.5 * np.sum(variance + mean**2 - 1.0 - np.log(variance))
    return {"mean": mean, "variance": variance, "kl_moment_matched_to_standard_normal": float(kl)}


def make_aggregate_kl(model: LatentVariableModel, num_z: int = 1000, chunk_size: int = 500):
    """KL(q_agg,N || p) of the N-image aggregate posterior, with its decomposition.

        q_agg,N(z) = (1/N) sum_n q(z | x_n)
        (1/N) sum_n KL(q(z|x_n) || p) = I_N(x; z) + KL(q_agg,N || p)

    (Hoffman & Johnson 2016, "ELBO surgery"), where I_N(x; z) = (1/N) sum_n
    KL(q(z|x_n) || q_agg,N) is the mutual information between z and the index
    of an image drawn uniformly from the N. Since q_agg,N >= q(z|x_n) / N,
    I_N <= log N: an encoder whose N posteriors barely overlap has I_N close to
    log N, and then KL(q_agg,N || p) is the average KL minus about log N. So
    the figure depends on N; in expectation over the N images it falls as N
    grows, to the KL of the population's aggregate posterior, which it bounds
    from above (KL is convex in its first argument).

    log q_agg,N(z) is exact: a logsumexp over all N posteriors, streamed in
    chunks of ``chunk_size`` (memory num_z x chunk_size x L, time
    num_z x N x L). The encoder runs once over all N images (memory about
    N x (D + H) floats: 0.2 GB for N = 50,000 MNIST images and H = 200).
    Only the outer expectation is sampled: ``num_z``
    draws, each picking n uniformly and then z ~ q(z | x_n). All three terms
    come from the same draws, per draw

        log q(z|x_n) - log p(z) = [log q(z|x_n) - log q_agg,N(z)] + [log q_agg,N(z) - log p(z)],

    so the estimates add up exactly, and each draw's I_N term is <= log N.
    Amortised phi only. The function draws from ``stream_key(key,
    Stream.AGGREGATE_KL)``.

    Returns:
      ``kl_fn(key, theta, phi, x_NxD) -> dict`` of nats: ``kl``,
      ``mutual_information``, ``average_kl`` and each one's
      ``*_standard_error`` (over the num_z draws).
    """

    def kl_fn(key, theta, phi, x_NxD):
        q = jax.vmap(model.posterior, in_axes=(None, 0))(phi, x_NxD)  # loc, log_scale [N, L]
        n = x_NxD.shape[0]
        pick_key, z_key = jax.random.split(stream_key(key, Stream.AGGREGATE_KL))
        picks = jax.random.randint(pick_key, (num_z,), 0, n)
        own_q = DiagonalGaussian(q.loc[picks], q.log_scale[picks])
        z_ZxL = own_q.sample(z_key)
        num_chunks = -(-n // chunk_size)
        pad = num_chunks * chunk_size - n
        loc_CxKxL = jnp.pad(q.loc, ((0, pad), (0, 0))).reshape(num_chunks, chunk_size, -1)
        scale_CxKxL = jnp.pad(q.log_scale, ((0, pad), (0, 0))).reshape(num_chunks, chunk_size, -1)
        valid_CxK = (jnp.arange(num_chunks * chunk_size) < n).reshape(num_chunks, chunk_size)

        def add_chunk(running, chunk):
            loc_KxL, log_scale_KxL, valid_K = chunk
            component = DiagonalGaussian(loc_KxL[None, :, :], log_scale_KxL[None, :, :])
            log_q_ZxK = component.log_prob(z_ZxL[:, None, :])
            log_q_ZxK = jnp.where(valid_K[None, :], log_q_ZxK, -jnp.inf)
            return jnp.logaddexp(running, jax.nn.logsumexp(log_q_ZxK, axis=1)), None

        init = jnp.full((num_z,), -jnp.inf)
        log_sum_Z, _ = jax.lax.scan(add_chunk, init, (loc_CxKxL, scale_CxKxL, valid_CxK))
        log_q_agg_Z = log_sum_Z - math.log(n)
        log_q_own_Z = own_q.log_prob(z_ZxL)
        log_p_Z = model.prior(theta, phi).log_prob(z_ZxL)
        terms = {
            "kl": log_q_agg_Z - log_p_Z,
            "mutual_information": log_q_own_Z - log_q_agg_Z,
            "average_kl": log_q_own_Z - log_p_Z,
        }
        out = {}
        for name, per_draw_Z in terms.items():
            out[name] = jnp.mean(per_draw_Z)
            out[f"{name}_standard_error"] = jnp.std(per_draw_Z) / math.sqrt(num_z)
        return out

    return kl_fn


def aggregate_kl_record(estimates: dict, num_images: int, num_z: int, images: str) -> dict:
    """:func:`make_aggregate_kl`'s output as a JSON record, with N and log N beside it."""
    record = {name: float(value) for name, value in estimates.items()}
    return {
        "value": record.pop("kl"),
        "standard_error": record.pop("kl_standard_error"),
        **record,
        "num_images": int(num_images),
        "log_num_images": math.log(num_images),
        "method": (
            f"Monte Carlo over {num_z} z ~ q_agg,N, the mixture of q(z|x) over the N = "
            f"{num_images} {images}, with its exact density. On the same draws, "
            "average_kl = mutual_information + value, and mutual_information "
            "I_N(x; z) <= log N: value is KL(q_agg,N || p), which depends on N"
        ),
    }


def _floats(values) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def evaluate(
    key: jax.Array,
    model: LatentVariableModel,
    theta: Theta,
    phi: Phi,
    x_NxD: np.ndarray,
    *,
    num_importance_samples: int = 5000,
    chunk_size: int = 500,
    batch_size: int = 500,
    is_batch_size: int = 100,
    local_fit_steps: int = 200,
    local_learning_rate: float = 1e-2,
    num_aggregate_z: int = 1000,
    batch_sharding: jax.sharding.Sharding | None = None,
    progress: Callable[[str], Progress] | None = None,
) -> tuple[dict, Phi, dict]:
    """Score a trained (theta, phi) on a dataset: the numbers of a results.json.

    ELBO terms, the importance-sampled log p(x) (S = ``num_importance_samples``
    from q, every example), active units, the aggregate posterior's moments and,
    for an encoder, KL(q_agg,N || p) sampled over the N images. Per-datapoint phi
    has no q for new images: each image's Gaussian q is fitted first (theta
    fixed, ``local_fit_steps`` Adam steps from the prior), and scored with it.

    Args:
      key: the evaluation key; each use draws from its named stream (:class:`Stream`).
      progress: ``description -> wrapper of an iterable`` for progress bars.

    Returns:
      ``(scores, phi_scored, moments)``: the JSON-ready numbers, the phi that
      was scored (the fitted q's for per-datapoint phi), and the aggregate
      posterior's moments as arrays.
    """
    bar = progress or (lambda description: None)
    t0 = time.perf_counter()
    n = x_NxD.shape[0]
    phi_scored = phi
    if phi_axis(phi) == 0:
        fit = jax.jit(make_fit_local(model, int(local_fit_steps), local_learning_rate, 8))
        fit_key = stream_key(key, Stream.FIT_LOCAL)
        start = prior_phi(model, theta, n)
        phi_scored, _ = fit_local_in_batches(
            fit, fit_key, theta, start, x_NxD, batch_size, bar("fit q(z) on test")
        )
    terms = map_dataset(jax.jit(make_elbo_terms(model)), key, theta, phi_scored, x_NxD, batch_size)
    num_samples = int(num_importance_samples)
    log_p_x_fn = jax.jit(make_log_p_x(model, num_samples, chunk_size, batch_sharding))
    is_start = time.perf_counter()
    log_p_x = map_dataset(
        log_p_x_fn, key, theta, phi_scored, x_NxD, int(is_batch_size), bar(f"IS-{num_samples}")
    )
    is_seconds = time.perf_counter() - is_start
    # The aggregate posterior's moments and KL are those of one Gaussian layer of
    # latents; a chain of stochastic layers reports its active units per layer only.
    moments = {"mean": None, "variance": None, "kl_moment_matched_to_standard_normal": None}
    aggregate_kl = None
    if not hasattr(model, "latent_sizes"):
        sums_fn = jax.jit(make_posterior_moment_sums(model))
        moments = aggregate_posterior_moments(sums_fn, phi_scored, x_NxD, batch_size)
        if phi_axis(phi) is None:
            kl_fn = jax.jit(make_aggregate_kl(model, num_aggregate_z))
            estimates = kl_fn(key, theta, phi, jnp.asarray(x_NxD))
            aggregate_kl = aggregate_kl_record(estimates, n, num_aggregate_z, "test images")
    layer_ends = np.cumsum(getattr(model, "latent_sizes", [0]))[:-1]  # where a chain's z_i end
    scores = {
        "test_nll": float(-np.mean(log_p_x)),
        "num_importance_samples": num_samples,
        "test_examples": n,
        "test_elbo": float(np.mean(terms["elbo"])),
        "test_kl": float(np.mean(terms["kl"])),
        "test_reconstruction": float(np.mean(terms["reconstruction"])),
        "active_units": active_units(terms["posterior_mean"]),
        "active_units_per_layer": [
            active_units(block) for block in np.split(terms["posterior_mean"], layer_ends, 1)
        ],
        "kl_per_dim": [float(v) for v in np.mean(terms["kl_per_dim"], axis=0)],
        "kl_per_layer": [float(v) for v in np.mean(terms["kl_per_layer"], axis=0)],
        "saturated_decoder_units": saturated_decoder_units(model, theta, terms["posterior_mean"]),
        # <q(z|x)>_test: per-dim mean and variance (law of total variance), and the
        # KL from the moment-matched Gaussian to N(0, I) (0 = moments match the prior)
        "aggregate_posterior_mean": _floats(moments["mean"]),
        "aggregate_posterior_variance": _floats(moments["variance"]),
        "aggregate_posterior_kl_to_standard_normal": moments[
            "kl_moment_matched_to_standard_normal"
        ],
        # KL(q_agg,N || p_theta(z)), q_agg,N the mixture over the N test images, and
        # its decomposition: average KL = I_N(x; z) + KL(q_agg,N || p), I_N <= log N
        "aggregate_posterior_kl_to_prior_sampled": aggregate_kl,
        "num_params_theta": num_params(theta),
        "num_params_phi": num_params(phi),  # the trained phi, not test fits
        "is_seconds": is_seconds,
        "eval_seconds": time.perf_counter() - t0,
        "jax_version": jax.__version__,
        "device": str(jax.devices()[0].device_kind),
    }
    return scores, phi_scored, moments

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
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from vae_jax.distributions import DiagonalGaussian, has_analytic_kl, kl_divergence_per_dim
from vae_jax.models import LatentVariableModel, Phi, Theta
from vae_jax.objectives import make_elbo, make_log_marginal_likelihood, phi_axis
from vae_jax.parallel import constrain_batch

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2015, section 5.2


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
    ``posterior_mean`` [B, L] (``kl_per_dim`` is NaN without an analytic KL).
    """
    elbo_fn = make_elbo(model, num_samples=num_samples, kl="auto")

    def terms(example_key, theta, phi, x):
        _, aux = elbo_fn(example_key, theta, phi, x)
        q_z, p_z = model.posterior(phi, x), model.prior(theta, phi)
        if has_analytic_kl(q_z, p_z):
            kl_per_dim = kl_divergence_per_dim(q_z, p_z)
        else:
            kl_per_dim = jnp.full((model.latent_dim,), jnp.nan)
        return {**aux, "kl_per_dim": kl_per_dim, "posterior_mean": q_z.mean}

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
        return jax.vmap(log_p_x, in_axes=(0, None, phi_axis(phi), 0))(
            _per_example_keys(stream_key(key, Stream.LOG_P_X), index_B), theta, phi, x_BxD
        )

    return batch


def _chunked_logsumexp(log_w_fn: Callable, key: jax.Array, num_samples: int, chunk_size: int):
    """log sum_s exp(log w_s) over ``num_samples`` weights drawn in chunks.

    ``log_w_fn(chunk_key, chunk_size) -> [chunk_size]``; chunk c uses
    ``fold_in(key, c)``, the last partial chunk is masked, and memory is set by
    ``chunk_size``. Returns -inf for ``num_samples = 0``.
    """
    if num_samples == 0:
        return jnp.array(-jnp.inf, dtype=jnp.result_type(float))
    chunk_size = min(chunk_size, num_samples)

    def add_chunk(running, chunk_index):
        log_w_C = log_w_fn(jax.random.fold_in(key, chunk_index), chunk_size)
        valid_C = chunk_index * chunk_size + jnp.arange(chunk_size) < num_samples
        chunk = jax.nn.logsumexp(jnp.where(valid_C, log_w_C, -jnp.inf))
        return jnp.logaddexp(running, chunk), None

    init = jnp.array(-jnp.inf, dtype=jnp.result_type(float))
    chunks = jnp.arange(-(-num_samples // chunk_size), dtype=jnp.uint32)
    total, _ = jax.lax.scan(add_chunk, init, chunks)
    return total


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
    num_samples, chunk_size = int(num_samples), int(chunk_size)
    if num_samples < 1 or chunk_size < 1:
        raise ValueError(
            f"num_samples and chunk_size must be >= 1, got {num_samples}, {chunk_size}"
        )
    counts = (num_samples - num_samples // 2, num_samples // 2)  # (S_phi, S_star)
    log_a, log_1_minus_a = (math.log(n / num_samples) if n else -math.inf for n in counts)

    def log_p_x(example_key, theta, phi, phi_star, x):
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
            _chunked_logsumexp(
                lambda chunk_key, size, q=q: log_weights(q, chunk_key, size),
                jax.random.fold_in(example_key, which),
                n,
                chunk_size,
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


class Batch(NamedTuple):
    """One fixed-size batch of a dataset of N examples."""

    start: int
    index: np.ndarray  # [B] example indices; the last batch may run past N
    rows: np.ndarray  # [B] indices clipped to N - 1: the last batch repeats its last row
    valid: int  # how many of the B are real examples


def padded_batches(n: int, batch_size: int, description: str | None = None):
    """Batches of one shape (so jitted evaluators compile once), the last padded."""
    starts = range(0, n, batch_size)
    if description:
        starts = tqdm(starts, desc=description, unit="batch", leave=False)
    for start in starts:
        index = np.arange(start, start + batch_size)
        yield Batch(start, index, np.minimum(index, n - 1), min(batch_size, n - start))


def take_rows(phi: Phi, rows: np.ndarray) -> Phi:
    """phi for a batch: amortised phi whole, per-datapoint phi's rows."""
    if phi_axis(phi) is None:
        return phi
    return jax.tree_util.tree_map(lambda a: a[rows], phi)


def map_dataset(
    fn: Callable,
    key: jax.Array,
    theta: Theta,
    phi: Phi,
    x_NxD: np.ndarray,
    batch_size: int,
    description: str | None = None,
):
    """Apply a jitted batched evaluator to a whole dataset; returns host arrays [N, ...].

    Every call sees the same batch shape, so ``fn`` compiles once. Per-datapoint
    phi (``[N, L]`` rows) is sliced to the batch alongside x.
    """
    n = x_NxD.shape[0]
    outputs = []
    for b in padded_batches(n, min(batch_size, n), description):
        out = fn(
            key, theta, take_rows(phi, b.rows), jnp.asarray(x_NxD[b.rows]), jnp.asarray(b.index)
        )
        outputs.append(jax.tree_util.tree_map(lambda v, k=b.valid: np.asarray(v)[:k], out))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *outputs)


def active_units(posterior_mean_NxL: np.ndarray, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Number of d with Cov_x(E_q[z_d | x]) > threshold."""
    return int(np.sum(np.var(posterior_mean_NxL, axis=0) > threshold))


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

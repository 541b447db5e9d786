"""Probabilistic PCA: a latent-variable model whose answers are all exact.

    p(z)     = N(0, I_L)                       theta["p_z"] == {}
    p(x | z) = N(W z + b, s^2 I_D)             theta["p_x_given_z"] =
                 {"loc": {"kernel": W^T, "bias": b}, "log_scale": log s}
    q(z | x) = N(A x + c, diag(sigma)^2)       phi["q_z_given_x"] =
                 {"loc": {"kernel": A^T, "bias": c}, "log_scale": log sigma [L]}

Closed forms (Tipping & Bishop 1999; Bishop, PRML section 12.2):
    log p(x)  = log N(x; b, W W^T + s^2 I)
    p(z | x)  = N(M^{-1} W^T (x - b), s^2 M^{-1}),   M = W^T W + s^2 I.

The true posterior's covariance does not depend on x, and its mean is affine
in x, so the linear encoder above can represent it exactly whenever M is
diagonal (W has orthogonal columns, as in the PPCA maximum-likelihood
solution W = U (Lambda - s^2 I)^{1/2}). Then the ELBO with q = p(z|x) equals
log p(x) and every estimator in vae_jax has an exact answer to be tested against.

Kernels are stored [in, out] as in the networks, so ``W = kernel.T``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vae_jax.distributions import DiagonalGaussian, kl_divergence
from vae_jax.models import ChainModel, LatentVariableModel, make_standard_normal_prior
from vae_jax.networks import Component
from vae_jax.schema import Phi, Theta


def _linear_gaussian_component(input_dim: int, output_dim: int, shared_scale: bool) -> Component:
    scale_shape = () if shared_scale else (output_dim,)

    def init(key: jax.Array) -> dict:
        return {
            "loc": {
                "kernel": jax.random.normal(key, (input_dim, output_dim)) / math.sqrt(input_dim),
                "bias": jnp.zeros((output_dim,)),
            },
            "log_scale": jnp.zeros(scale_shape),
        }

    def apply(tree: dict, inputs: jax.Array) -> DiagonalGaussian:
        if inputs.shape[-1] != input_dim:
            raise ValueError(f"expected inputs with last dimension {input_dim}, got {inputs.shape}")
        loc = inputs @ tree["loc"]["kernel"]
        loc = loc + jnp.broadcast_to(tree["loc"]["bias"], loc.shape)
        return DiagonalGaussian(loc, jnp.broadcast_to(tree["log_scale"], loc.shape))

    return Component(init, apply)


def make_linear_gaussian(data_dim: int, latent_dim: int) -> LatentVariableModel:
    """PPCA with the same component interfaces as the appendix-C VAE."""
    return LatentVariableModel(
        p_z=make_standard_normal_prior(latent_dim),
        p_x_given_z=_linear_gaussian_component(latent_dim, data_dim, shared_scale=True),
        q_z_given_x=_linear_gaussian_component(data_dim, latent_dim, shared_scale=False),
        data_dim=data_dim,
        latent_dim=latent_dim,
    )


def init_orthogonal_theta(
    key: jax.Array, data_dim: int, latent_dim: int, noise_scale: float = 0.5
) -> Theta:
    """theta with W = U diag(d): orthonormal U, so the exact posterior is diagonal."""
    u_key, d_key, b_key = jax.random.split(key, 3)
    u_DxL, _ = jnp.linalg.qr(jax.random.normal(u_key, (data_dim, latent_dim)))
    d_L = jax.random.uniform(d_key, (latent_dim,), minval=0.5, maxval=2.0)
    return {
        "p_z": {},
        "p_x_given_z": {
            "loc": {
                "kernel": (u_DxL * d_L[None, :]).T,
                "bias": jax.random.normal(b_key, (data_dim,)),
            },
            "log_scale": jnp.log(jnp.asarray(noise_scale)),
        },
    }


def _w_b_s2(theta: Theta) -> tuple[jax.Array, jax.Array, jax.Array]:
    tree = theta["p_x_given_z"]
    return tree["loc"]["kernel"].T, tree["loc"]["bias"], jnp.exp(2.0 * tree["log_scale"])


def log_marginal_likelihood(theta: Theta, x: jax.Array) -> jax.Array:
    """Exact log p(x) = log N(x; b, W W^T + s^2 I) for one example x [D]."""
    w_DxL, b_D, s2 = _w_b_s2(theta)
    cov_DxD = w_DxL @ w_DxL.T + s2 * jnp.eye(w_DxL.shape[0])
    return jax.scipy.stats.multivariate_normal.logpdf(x, b_D, cov_DxD)


def exact_posterior(theta: Theta, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """p(z | x) = N(mean [L], cov [L, L]), full covariance, any W."""
    w_DxL, b_D, s2 = _w_b_s2(theta)
    m_LxL = w_DxL.T @ w_DxL + s2 * jnp.eye(w_DxL.shape[1])
    mean_L = jnp.linalg.solve(m_LxL, w_DxL.T @ (x - b_D))
    return mean_L, s2 * jnp.linalg.inv(m_LxL)


def exact_posterior_phi(theta: Theta, atol: float = 1e-5) -> Phi:
    """phi whose linear encoder outputs exactly p(z | x) for every x.

    Raises:
      ValueError: if W^T W is not diagonal (the posterior would then have
        correlations no diagonal Gaussian can represent).
    """
    w_DxL, b_D, s2 = _w_b_s2(theta)
    gram_LxL = w_DxL.T @ w_DxL
    off_diagonal = gram_LxL - jnp.diag(jnp.diag(gram_LxL))
    if float(jnp.max(jnp.abs(off_diagonal))) > atol * float(jnp.max(jnp.abs(gram_LxL))):
        raise ValueError("W^T W is not diagonal: the exact posterior is not a diagonal Gaussian")
    m_L = jnp.diag(gram_LxL) + s2
    a_LxD = w_DxL.T / m_L[:, None]  # M^{-1} W^T
    return {
        "q_z_given_x": {
            "loc": {"kernel": a_LxD.T, "bias": -a_LxD @ b_D},
            "log_scale": 0.5 * jnp.log(s2 / m_L),
        }
    }


def closed_form_elbo(theta: Theta, q_z: DiagonalGaussian, x: jax.Array) -> jax.Array:
    """The exact ELBO of a diagonal Gaussian q(z) for one x (no sampling).

    E_q[log N(x; W z + b, s^2 I)] = log N(x; W mu + b, s^2 I) - tr(W^T W diag(sigma^2)) / (2 s^2)
    ELBO = that - KL(q || N(0, I))
    """
    w_DxL, b_D, s2 = _w_b_s2(theta)
    residual_D = x - (w_DxL @ q_z.loc + b_D)
    d = x.shape[-1]
    log_lik_at_mean = -0.5 * jnp.sum(residual_D**2) / s2 - 0.5 * d * jnp.log(2 * jnp.pi * s2)
    trace_term = jnp.sum(jnp.sum(w_DxL**2, axis=0) * q_z.variance) / (2.0 * s2)
    prior = DiagonalGaussian(jnp.zeros_like(q_z.loc), jnp.zeros_like(q_z.loc))
    return log_lik_at_mean - trace_term - kl_divergence(q_z, prior)


def perturbed_posterior_phi(phi: Phi, key: jax.Array, size: float) -> Phi:
    """The exact-posterior encoder made wrong by a controlled amount.

    Shifts the mean by ``size * N(0, 1)`` per latent dim and widens sigma by a
    factor exp(size * |N(0, 1)|). Widening, not narrowing, keeps importance
    weights light-tailed: a q narrower than the posterior makes IS estimates
    heavy-tailed, a property of IS that tests of this code should not mix in.
    """
    tree = phi["q_z_given_x"]
    loc_key, scale_key = jax.random.split(key)
    latent_dim = tree["log_scale"].shape[-1]
    return {
        "q_z_given_x": {
            "loc": {
                "kernel": tree["loc"]["kernel"],
                "bias": tree["loc"]["bias"] + size * jax.random.normal(loc_key, (latent_dim,)),
            },
            "log_scale": tree["log_scale"]
            + size * jnp.abs(jax.random.normal(scale_key, (latent_dim,))),
        }
    }


# Two stochastic layers, z2 -> z1 -> x, every map linear:
#     p(z2) = N(0, I_L),  p(z1 | z2) = N(alpha * z2 + a, diag(s1^2)),
#     p(x | z1) = N(W z1 + b, s0^2 I)
# with alpha a vector (a diagonal map) and W = U diag(w), U orthonormal. Then
# z1 ~ N(a, diag(c)), c = alpha^2 + s1^2, and
#     p(z1 | x)     = N(Sigma1 (a / c + W^T (x - b) / s0^2), Sigma1),
#                     1/Sigma1 = 1/c + w^2 / s0^2
#     p(z2 | z1, x) = p(z2 | z1) = N(Sigma2 alpha (z1 - a) / s1^2, Sigma2),
#                     1/Sigma2 = 1 + alpha^2 / s1^2
# are diagonal Gaussians affine in x and z1: the chain q(z1 | x) q(z2 | z1) holds the
# exact posterior, and log p(x) = log N(x; b + W a, W diag(c) W^T + s0^2 I).


def make_linear_gaussian_chain(data_dim: int, latent_dim: int):
    """A two-layer ChainModel (L_1 = L_2 = ``latent_dim``) whose maps are all affine."""

    def component(input_dim, output_dim):
        return _linear_gaussian_component(input_dim, output_dim, shared_scale=False)

    return ChainModel(
        p_z_given_above=(component(latent_dim, latent_dim),),
        p_x_given_z1=component(latent_dim, data_dim),
        q_z1_given_x=component(data_dim, latent_dim),
        q_z_given_below=(component(latent_dim, latent_dim),),
        data_dim=data_dim,
        latent_sizes=(latent_dim, latent_dim),
    )


def init_chain_theta(key: jax.Array, data_dim: int, latent_dim: int, noise_scale: float = 0.7):
    u_key, w_key, alpha_key, a_key, s1_key, b_key = jax.random.split(key, 6)
    u_DxL, _ = jnp.linalg.qr(jax.random.normal(u_key, (data_dim, latent_dim)))
    w_L = jax.random.uniform(w_key, (latent_dim,), minval=1.0, maxval=2.0)
    alpha_L = jax.random.uniform(alpha_key, (latent_dim,), minval=0.5, maxval=1.5)
    s1_L = jax.random.uniform(s1_key, (latent_dim,), minval=0.3, maxval=0.8)
    return {
        "p_z2": {},
        "p_z1_given_z2": {
            "loc": {"kernel": jnp.diag(alpha_L), "bias": jax.random.normal(a_key, (latent_dim,))},
            "log_scale": jnp.log(s1_L),
        },
        "p_x_given_z1": {
            "loc": {
                "kernel": (u_DxL * w_L[None, :]).T,
                "bias": jax.random.normal(b_key, (data_dim,)),
            },
            "log_scale": jnp.full((data_dim,), jnp.log(noise_scale)),
        },
    }


def _chain_parts(theta: Theta):
    z1 = theta["p_z1_given_z2"]
    x = theta["p_x_given_z1"]
    alpha_L, a_L = jnp.diag(z1["loc"]["kernel"]), z1["loc"]["bias"]
    s1_sq = jnp.exp(2 * z1["log_scale"])
    w_DxL, b_D, s0_sq = x["loc"]["kernel"].T, x["loc"]["bias"], jnp.exp(2 * x["log_scale"][0])
    return alpha_L, a_L, s1_sq, w_DxL, b_D, s0_sq


def chain_log_marginal_likelihood(theta: Theta, x: jax.Array) -> jax.Array:
    """Exact log p(x) = log N(x; b + W a, W diag(alpha^2 + s1^2) W^T + s0^2 I), one x [D]."""
    alpha_L, a_L, s1_sq, w_DxL, b_D, s0_sq = _chain_parts(theta)
    c_L = alpha_L**2 + s1_sq
    cov_DxD = (w_DxL * c_L[None, :]) @ w_DxL.T + s0_sq * jnp.eye(w_DxL.shape[0])
    return jax.scipy.stats.multivariate_normal.logpdf(x, b_D + w_DxL @ a_L, cov_DxD)


def exact_chain_posterior_phi(theta: Theta) -> Phi:
    """phi = (q(z1 | x), q(z2 | z1)) equal to the exact p(z1 | x) p(z2 | z1)."""
    alpha_L, a_L, s1_sq, w_DxL, b_D, s0_sq = _chain_parts(theta)
    c_L = alpha_L**2 + s1_sq
    sigma1_L = 1.0 / (1.0 / c_L + jnp.sum(w_DxL**2, axis=0) / s0_sq)
    a1_LxD = (sigma1_L / s0_sq)[:, None] * w_DxL.T  # mean of z1 = a1 (x - b) + sigma1 a / c
    sigma2_L = 1.0 / (1.0 + alpha_L**2 / s1_sq)
    gain_L = sigma2_L * alpha_L / s1_sq  # mean of z2 = gain (z1 - a)
    return {
        "q_z1_given_x": {
            "loc": {"kernel": a1_LxD.T, "bias": sigma1_L * a_L / c_L - a1_LxD @ b_D},
            "log_scale": 0.5 * jnp.log(sigma1_L),
        },
        "q_z2_given_z1": {
            "loc": {"kernel": jnp.diag(gain_L), "bias": -gain_L * a_L},
            "log_scale": 0.5 * jnp.log(sigma2_L),
        },
    }

"""vae_jax: variational autoencoders with parameter trees named after their distributions.

Parameter schema (the public contract is the top-level keys)::

    theta = {                                   # generative model p_theta(x, z)
        "p_z": {},                              # N(0, I) prior: nothing to learn
        #   or {"loc": [L], "log_scale": [L]}   # learned Gaussian prior
        "p_x_given_z": {                        # decoder, Kingma & Welling appendix C.1 / C.2
            "hidden_0": {"kernel": [L, H], "bias": [H]},   # h = tanh(W1 z + b1)
            "logits": {"kernel": [H, D], "bias": [D]},     # Bernoulli: y = sigmoid(W2 h + b2)
            # Gaussian decoder instead: "loc" and "log_scale" heads, like the encoder
        },
    }
    phi = {                                     # amortised variational posterior q_phi(z | x)
        "q_z_given_x": {                        # encoder, appendix C.2
            "hidden_0": {"kernel": [D, H], "bias": [H]},   # h = tanh(W3 x + b3)
            "loc": {"kernel": [H, L], "bias": [L]},        # mu = W4 h + b4
            "log_scale": {"kernel": [H, L], "bias": [L]},  # log sigma = 10 tanh((W5 h + b5) / 10)
        },
    }

Kernels are stored ``[inputs, outputs]`` (so ``z @ kernel``). With more hidden
layers, ``hidden_1``, ``hidden_2``, ... follow ``hidden_0``. phi is the
encoder's weights; mu(x) and sigma(x) are what phi *computes* for one x.

Every function that touches parameters takes ``theta`` and ``phi`` explicitly;
objectives are written for one example and batched with ``jax.vmap``. See
:mod:`vae_jax.objectives` for sign and reduction conventions.
"""

from vae_jax.distributions import Bernoulli, DiagonalGaussian, StandardNormal, kl_divergence
from vae_jax.models import LatentVariableModel, make_vae, num_params
from vae_jax.networks import Component, make_bernoulli_mlp, make_gaussian_mlp
from vae_jax.objectives import (
    batch_objective,
    log_importance_weights,
    make_elbo,
    make_iwae_bound,
    make_log_marginal_likelihood,
)

__all__ = [
    "Bernoulli",
    "Component",
    "DiagonalGaussian",
    "LatentVariableModel",
    "StandardNormal",
    "batch_objective",
    "kl_divergence",
    "log_importance_weights",
    "make_bernoulli_mlp",
    "make_elbo",
    "make_gaussian_mlp",
    "make_iwae_bound",
    "make_log_marginal_likelihood",
    "make_vae",
    "num_params",
]

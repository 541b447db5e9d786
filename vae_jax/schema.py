"""The tree contract: what theta and phi hold, in one place.

    theta = {"p_z": {...}, "p_x_given_z": {...}}       the generative model p_theta(x, z)
    phi   = {"q_z_given_x": encoder weights}           amortised q_phi(z | x)
          | {"q_z": {"loc": [N, L], "log_scale": [N, L]}}   per-datapoint q_i(z)

    two stochastic layers (vae_jax.models.ChainModel):
    theta = {"p_z2": {}, "p_z1_given_z2": {...}, "p_x_given_z1": {...}}
    phi   = {"q_z1_given_x": {...}, "q_z2_given_z1": {...}}  amortised

Which kind of phi a tree is, is asked of :func:`is_amortised` and nowhere else.
Each distribution reads only its own subtree. Two read the other set: the
VampPrior's p(z) (its components are q_phi(z | u_k)) and a decoder tied to the
encoder (the shared kernel is stored once, in phi); so ``prior(theta, phi)`` and
``likelihood(theta, z, phi)`` take phi always, and the others ignore it.

The optimiser sees ``{"theta": theta, "phi": phi}`` in every mode, so a leaf of
its state has a path that reads as the maths (``theta/p_x_given_z/...``), and a
frozen leaf is a predicate on that path (:func:`path_names`).

Optional leaves are decided when a network is built, never added later (a jitted
loop fixes the tree's structure): the encoder's ``log_scale_shift`` exists when
the run re-aligns its latent coordinates (``vae_jax.networks.make_gaussian_mlp``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vae_jax.distributions import DiagonalGaussian, StandardNormal

Theta = dict[str, Any]
Phi = dict[str, Any]

AMORTISED = "q_z_given_x"
PER_DATAPOINT = "q_z"


def is_amortised(phi: Phi) -> bool:
    """True for encoder weights shared by every example (a ``q_..._given_x`` subtree);
    False for one q per example."""
    if PER_DATAPOINT in phi:
        return False
    if any(name.startswith("q_") and name.endswith("_given_x") for name in phi):
        return True
    raise ValueError(
        f"phi must hold an encoder ({AMORTISED!r}, or 'q_z1_given_x' for stochastic "
        f"layers) or {PER_DATAPOINT!r} (one q per example); got keys {sorted(phi)}"
    )


def phi_axis(phi: Phi) -> int | None:
    """The vmap axis of phi over examples: the answer to "what are the
    variational parameters?" in one integer.

    ``None`` for amortised phi (the encoder's weights, shared by all examples);
    ``0`` for per-datapoint phi (one (loc, log_scale) row per example).
    """
    return None if is_amortised(phi) else 0


def params(theta: Theta, phi: Phi) -> dict:
    """The tree the optimiser sees."""
    return {"theta": theta, "phi": phi}


def decoder_name(theta: Theta) -> str:
    """The key of p_theta(x | ...) in theta: "p_x_given_z", or "p_x_given_z1" for
    a chain of latent layers."""
    (name,) = [key for key in theta if key.startswith("p_x_given_")]
    return name


def path_names(path: tuple) -> tuple[str, ...]:
    """A tree path as names, e.g. ("theta", "p_z", "loc")."""
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def per_datapoint_phi(loc_NxL: jax.Array, log_scale_NxL: jax.Array) -> Phi:
    if loc_NxL.shape != log_scale_NxL.shape or loc_NxL.ndim != 2:
        raise ValueError(
            f"loc and log_scale must both be [N, L], got {loc_NxL.shape}, {log_scale_NxL.shape}"
        )
    return {PER_DATAPOINT: {"loc": loc_NxL, "log_scale": log_scale_NxL}}


def prior_phi(model, theta: Theta, num_examples: int) -> Phi:
    """Per-datapoint phi with every q_i set to the prior (which must be Gaussian)."""
    p_z = model.prior(theta, {})
    if not isinstance(p_z, DiagonalGaussian | StandardNormal):
        raise ValueError(
            "per-datapoint q's start at the prior, which must be Gaussian; "
            f"got {type(p_z).__name__}"
        )
    shape = (num_examples, model.latent_dim)
    return per_datapoint_phi(
        jnp.broadcast_to(p_z.loc, shape), jnp.broadcast_to(p_z.log_scale, shape)
    )


def encoder_outputs(model, phi: Phi, x_NxD: jax.Array) -> Phi:
    """Per-datapoint phi holding what the amortised encoder predicts for each x_i."""
    q_z = jax.vmap(lambda x: model.posterior(phi, x))(x_NxD)
    return per_datapoint_phi(q_z.loc, q_z.log_scale)


def rows(tree: Any, index_B: jax.Array) -> Any:
    """The rows ``index_B`` of every leaf (a batch's slice of per-datapoint phi)."""
    return jax.tree_util.tree_map(lambda a: a[index_B], tree)


def set_rows(tree: Any, index_B: jax.Array, new_rows: Any) -> Any:
    return jax.tree_util.tree_map(lambda a, r: a.at[index_B].set(r), tree, new_rows)

"""A latent-variable model as three named components, and its (theta, phi) trees.

    p_theta(x, z) = p_theta(z) p_theta(x | z)     theta = {"p_z", "p_x_given_z"}
    q_phi(z | x)                                  phi   = {"q_z_given_x"}

theta holds every parameter of the generative model, but each distribution
reads only its own subtree, so "the same theta" in p_theta(z) and p_theta(x|z)
means "parameters of one joint model", not "one shared tensor". A fixed
N(0, I) prior simply has no subtree to read: ``theta["p_z"] == {}``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from vae_jax.distributions import (
    Chain,
    DiagonalGaussian,
    MixtureOfDiagonalGaussians,
    StandardNormal,
)
from vae_jax.networks import Component, make_bernoulli_mlp, make_gaussian_mlp
from vae_jax.schema import Phi, Theta, is_amortised


class LatentVariableModel(NamedTuple):
    """Components of p_theta(z), p_theta(x|z) and q_phi(z|x).

    Attributes:
      p_z: ``init(key) -> theta["p_z"]``, ``apply(theta["p_z"], phi) -> distribution``.
      p_x_given_z: ``apply(theta["p_x_given_z"], z_L) -> distribution over x``.
      q_z_given_x: ``apply(phi["q_z_given_x"], x_D) -> distribution over z``.
      data_dim: D. latent_dim: L.
    """

    p_z: Component
    p_x_given_z: Component
    q_z_given_x: Component
    data_dim: int
    latent_dim: int
    tying: Tying | None = None

    def init(self, key: jax.Array) -> tuple[Theta, Phi]:
        """Fresh ``(theta, phi)``; each subtree gets its own key.

        With tied weights the shared tensor is stored once, in phi (the encoder
        owns it), and is absent from theta["p_x_given_z"].
        """
        p_z_key, p_x_key, q_z_key = jax.random.split(key, 3)
        decoder = self.p_x_given_z.init(p_x_key)
        if self.tying is not None:
            decoder = self.tying.drop(decoder)
        theta = {"p_z": self.p_z.init(p_z_key), "p_x_given_z": decoder}
        phi = {"q_z_given_x": self.q_z_given_x.init(q_z_key)}
        return theta, phi

    def prior(self, theta: Theta, phi: Phi):
        """p_theta(z). Only the VampPrior reads ``phi``: its mixture components are
        the encoder's posteriors at learned pseudo-inputs, q_phi(z | u_k)."""
        return self.p_z.apply(theta["p_z"], phi)

    def likelihood(self, theta: Theta, z: jax.Array, phi: Phi):
        """p_theta(x | z); ``z`` may carry leading sample axes.

        Only a decoder with tied weights reads ``phi``: one of its kernels is the
        transpose of an encoder kernel, stored once in phi (see :class:`Tying`).
        """
        decoder = theta["p_x_given_z"]
        if self.tying is not None:
            if "q_z_given_x" not in phi:
                raise ValueError(
                    "this decoder shares a weight with the encoder (tie_weights="
                    f"{self.tying.kind!r}): call likelihood(theta, z, phi) with amortised phi"
                )
            decoder = self.tying.expand(decoder, phi["q_z_given_x"])
        return self.p_x_given_z.apply(decoder, z)

    def posterior(self, phi: Phi, x: jax.Array):
        """q_phi(z | x) for one example ``x`` of shape [D].

        Two forms of phi, one objective:
          * amortised, ``{"q_z_given_x": encoder weights}``: q is the encoder
            applied to x, and phi is shared by every example;
          * per-datapoint, ``{"q_z": {"loc": [L], "log_scale": [L]}}`` (the
            slice of ``[N, L]`` arrays for this example): q's parameters are
            phi itself and x is not consulted.
        """
        if x.shape != (self.data_dim,):
            raise ValueError(
                f"objectives take ONE example of shape ({self.data_dim},), got {x.shape}; "
                "batch with jax.vmap (see vae_jax.objectives.batch_objective)"
            )
        if not is_amortised(phi):
            q_z = phi["q_z"]
            if q_z["loc"].shape != (self.latent_dim,):
                raise ValueError(
                    f"per-datapoint phi must be sliced to one example, loc of shape "
                    f"({self.latent_dim},); got {q_z['loc'].shape} (vmap with phi's in_axes=0)"
                )
            return DiagonalGaussian(q_z["loc"], q_z["log_scale"])
        return self.q_z_given_x.apply(phi["q_z_given_x"], x)


class Tying(NamedTuple):
    """One tensor used by both q_phi(z|x) and p_theta(x|z), stored once.

    JAX trees cannot alias, so the decoder's copy is not stored: ``drop``
    removes it from a fresh decoder tree and ``expand`` rebuilds it from the
    encoder's tree wherever the decoder is applied. Autodiff through ``expand``
    makes the stored tensor's gradient the sum of its two uses.

    Attributes:
      kind: ``"x_layers"`` (decoder output kernel [H, D] = encoder input kernel
        [D, H] transposed: the classic tied autoencoder) or ``"z_layers"``
        (decoder first kernel [L, H] = encoder mean kernel [H, L] transposed).
    """

    kind: str
    decoder_layer: str
    encoder_layer: str

    def drop(self, decoder: dict) -> dict:
        return {**decoder, self.decoder_layer: {"bias": decoder[self.decoder_layer]["bias"]}}

    def expand(self, decoder: dict, encoder: dict) -> dict:
        kernel = encoder[self.encoder_layer]["kernel"].T
        return {**decoder, self.decoder_layer: {**decoder[self.decoder_layer], "kernel": kernel}}


TIES = ("none", "x_layers", "z_layers")


def make_tying(
    kind: str, encoder_hidden: tuple[int, ...], decoder_hidden: tuple[int, ...], likelihood: str
) -> Tying | None:
    """The :class:`Tying` of ``kind`` for MLPs of these widths, or None for "none"."""
    if kind not in TIES:
        raise ValueError(f"unknown tie_weights {kind!r}; choose one of {list(TIES)}")
    if kind == "none":
        return None
    if not encoder_hidden or not decoder_hidden:
        raise ValueError(f"tie_weights={kind!r} needs hidden layers in encoder and decoder")
    if kind == "x_layers":
        if encoder_hidden[0] != decoder_hidden[-1]:
            raise ValueError(
                f"tie_weights='x_layers' needs the encoder's first hidden width "
                f"({encoder_hidden[0]}) to equal the decoder's last ({decoder_hidden[-1]})"
            )
        head = "logits" if likelihood == "bernoulli" else "loc"
        return Tying(kind, decoder_layer=head, encoder_layer="hidden_0")
    if encoder_hidden[-1] != decoder_hidden[0]:
        raise ValueError(
            f"tie_weights='z_layers' needs the encoder's last hidden width "
            f"({encoder_hidden[-1]}) to equal the decoder's first ({decoder_hidden[0]})"
        )
    return Tying(kind, decoder_layer="hidden_0", encoder_layer="loc")


def make_standard_normal_prior(latent_dim: int) -> Component:
    """p(z) = N(0, I): no parameters, so ``theta["p_z"] == {}``."""
    return Component(init=lambda key: {}, apply=lambda tree, phi: StandardNormal(latent_dim))


def make_learned_gaussian_prior(latent_dim: int) -> Component:
    """p_theta(z) = N(loc, diag(exp(log_scale))^2), initialised at N(0, I)."""

    def init(key: jax.Array) -> dict:
        del key  # deterministic start at the standard normal
        return {"loc": jnp.zeros((latent_dim,)), "log_scale": jnp.zeros((latent_dim,))}

    return Component(init, lambda tree, phi: DiagonalGaussian(tree["loc"], tree["log_scale"]))


def make_mixture_prior(latent_dim: int, num_components: int) -> Component:
    """p_theta(z) = sum_k softmax(logits)_k N(loc_k, diag(exp(log_scale_k))^2).

    Means start spread as N(0, I) draws, scales at 1, weights equal.
    """

    def init(key: jax.Array) -> dict:
        return {
            "logits": jnp.zeros((num_components,)),
            "loc": jax.random.normal(key, (num_components, latent_dim)),
            "log_scale": jnp.zeros((num_components, latent_dim)),
        }

    def apply(tree: dict, phi: Phi) -> MixtureOfDiagonalGaussians:
        return MixtureOfDiagonalGaussians(tree["logits"], tree["loc"], tree["log_scale"])

    return Component(init, apply)


def make_vampprior(encoder: Component, data_dim: int, num_pseudo_inputs: int) -> Component:
    """VampPrior (Tomczak & Welling 2018, eq. 9): p(z) = (1/K) sum_k q_phi(z | u_k).

    The pseudo-inputs u_k [K, D] live in theta["p_z"]; the encoder that maps them
    to mixture components is phi's. So the prior's density is a function of
    (theta, phi), and ``apply`` takes phi explicitly: the sharing is visible.
    Pseudo-inputs start as uniform draws in [0, 1), like pixel intensities.
    """

    def init(key: jax.Array) -> dict:
        return {"pseudo_inputs": jax.random.uniform(key, (num_pseudo_inputs, data_dim))}

    def apply(tree: dict, phi: Phi) -> MixtureOfDiagonalGaussians:
        if "q_z_given_x" not in phi:
            raise ValueError(
                "the VampPrior is built from the amortised encoder q_phi(z|u_k): it needs "
                "phi = {'q_z_given_x': ...}, not per-datapoint phi"
            )
        q_u = encoder.apply(phi["q_z_given_x"], tree["pseudo_inputs"])  # [K, L]
        return MixtureOfDiagonalGaussians(jnp.zeros((num_pseudo_inputs,)), q_u.loc, q_u.log_scale)

    return Component(init, apply)


PRIORS = ("standard_normal", "learned_gaussian", "mixture_of_gaussians", "vampprior")
LIKELIHOODS = ("bernoulli", "gaussian")


def make_vae(
    data_dim: int = 784,
    latent_dim: int = 20,
    hidden_sizes: tuple[int, ...] = (500,),
    activation: str = "tanh",
    likelihood: str = "bernoulli",
    prior: str = "standard_normal",
    decoder_hidden_sizes: tuple[int, ...] | None = None,
    prior_components: int = 10,
    tie_weights: str = "none",
    encoder_trunk: str = "shared",
    log_scale_shift: bool = False,
) -> LatentVariableModel:
    """The appendix-C VAE: Gaussian MLP encoder (C.2) and a Bernoulli (C.1) or
    Gaussian (C.2) MLP decoder.

    Args:
      data_dim: D, size of a flattened example.
      latent_dim: L.
      hidden_sizes: encoder hidden widths; the decoder mirrors them in reverse
        unless ``decoder_hidden_sizes`` is given.
      activation: hidden non-linearity, ``"tanh"`` in the paper.
      likelihood: ``"bernoulli"`` for binary data, ``"gaussian"`` for real data.
      prior: one of ``PRIORS``.
      prior_components: K, mixture components or VampPrior pseudo-inputs.
      tie_weights: one of ``TIES``: share a kernel between encoder and decoder
        (see :class:`Tying`).
      encoder_trunk: ``"shared"`` (appendix C: mu and log sigma read one hidden
        layer) or ``"separate"`` (each from its own MLP of the same widths).
      log_scale_shift: build the encoder with the leaf re-alignment moves
        (``vae_jax.networks.LOG_SCALE_SHIFT``).
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {list(LIKELIHOODS)}")
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; choose one of {sorted(PRIORS)}")
    if decoder_hidden_sizes is None:
        decoder_hidden_sizes = tuple(reversed(tuple(hidden_sizes)))
    if prior in ("mixture_of_gaussians", "vampprior") and int(prior_components) < 1:
        raise ValueError(f"prior_components must be >= 1, got {prior_components}")
    make_decoder = make_bernoulli_mlp if likelihood == "bernoulli" else make_gaussian_mlp
    encoder = make_gaussian_mlp(
        data_dim, latent_dim, hidden_sizes, activation, encoder_trunk, log_scale_shift
    )
    tying = make_tying(tie_weights, tuple(hidden_sizes), tuple(decoder_hidden_sizes), likelihood)
    if tying is not None and encoder_trunk != "shared":
        raise ValueError("tie_weights needs encoder_trunk='shared' (one encoder kernel to tie)")
    p_z = {
        "standard_normal": lambda: make_standard_normal_prior(latent_dim),
        "learned_gaussian": lambda: make_learned_gaussian_prior(latent_dim),
        "mixture_of_gaussians": lambda: make_mixture_prior(latent_dim, int(prior_components)),
        "vampprior": lambda: make_vampprior(encoder, data_dim, int(prior_components)),
    }[prior]()
    return LatentVariableModel(
        p_z=p_z,
        p_x_given_z=make_decoder(latent_dim, data_dim, decoder_hidden_sizes, activation),
        q_z_given_x=encoder,
        data_dim=data_dim,
        latent_dim=latent_dim,
        tying=tying,
    )


class ChainModel(NamedTuple):
    """k stochastic layers, z_k -> ... -> z_1 -> x, with trees that read as the factorisation:

        p_theta(x, z) = p(z_k) prod_i p_theta(z_i | z_{i+1}) p_theta(x | z_1)
        q_phi(z | x)  = q_phi(z_1 | x) prod_i q_phi(z_{i+1} | z_i)

        theta = {"p_z2": {}, "p_z1_given_z2": {...}, "p_x_given_z1": {...}}     (k = 2)
        phi   = {"q_z1_given_x": {...}, "q_z2_given_z1": {...}}

    The same interface as :class:`LatentVariableModel` (``prior``, ``likelihood``,
    ``posterior``, ``init``), over z = concat(z_1, ..., z_k): the prior and the
    posterior are :class:`vae_jax.distributions.Chain` distributions, so the per-example
    objectives (ELBO with a sampled KL, IWAE bound, IS log p(x)) are the ones
    the one-layer model uses. The top prior is a fixed N(0, I).
    """

    p_z_given_above: tuple  # Components p(z_i | z_{i+1}), i = 1..k-1
    p_x_given_z1: Component
    q_z1_given_x: Component
    q_z_given_below: tuple  # Components q(z_{i+1} | z_i), i = 1..k-1
    data_dim: int
    latent_sizes: tuple[int, ...]  # (L_1, ..., L_k)

    @property
    def latent_dim(self) -> int:
        return sum(self.latent_sizes)

    def _links(self) -> tuple[list, list]:
        """(name, component) of theta's p(z_i | z_{i+1}) and of phi's q(z_{i+1} | z_i), i < k."""
        pairs = range(1, len(self.latent_sizes))
        p = zip([f"p_z{i}_given_z{i + 1}" for i in pairs], self.p_z_given_above, strict=True)
        q = zip([f"q_z{i + 1}_given_z{i}" for i in pairs], self.q_z_given_below, strict=True)
        return list(p), list(q)

    def init(self, key: jax.Array) -> tuple[Theta, Phi]:
        p_links, q_links = self._links()
        k = len(self.latent_sizes)
        keys = iter(jax.random.split(key, 2 * k))
        theta = {f"p_z{k}": {}}
        theta.update({n: c.init(next(keys)) for n, c in p_links})
        theta["p_x_given_z1"] = self.p_x_given_z1.init(next(keys))
        phi = {"q_z1_given_x": self.q_z1_given_x.init(next(keys))}
        phi.update({n: c.init(next(keys)) for n, c in q_links})
        return theta, phi

    def prior(self, theta: Theta, phi: Phi) -> Chain:
        """p(z_k) p(z_{k-1} | z_k) ... p(z_1 | z_2), sampled from the top."""
        del phi  # no part of this prior is the encoder's
        p_links, _ = self._links()
        links = tuple(functools.partial(c.apply, theta[n]) for n, c in reversed(p_links))
        sizes = self.latent_sizes[::-1]
        return Chain(StandardNormal(sizes[0]), links, sizes, reverse=True)

    def likelihood(self, theta: Theta, z: jax.Array, phi: Phi):
        """p(x | z_1): the decoder reads the first block of z."""
        del phi
        return self.p_x_given_z1.apply(theta["p_x_given_z1"], z[..., : self.latent_sizes[0]])

    def posterior(self, phi: Phi, x: jax.Array) -> Chain:
        """q(z_1 | x) q(z_2 | z_1) ..., for one example ``x`` [D]."""
        if x.shape != (self.data_dim,):
            raise ValueError(
                f"objectives take ONE example of shape ({self.data_dim},), got {x.shape}; "
                "batch with jax.vmap (see vae_jax.objectives.batch_objective)"
            )
        if not is_amortised(phi):
            raise ValueError("a chain of stochastic layers needs an amortised encoder phi")
        _, q_links = self._links()
        root = self.q_z1_given_x.apply(phi["q_z1_given_x"], x)
        links = tuple(functools.partial(c.apply, phi[n]) for n, c in q_links)
        return Chain(root, links, self.latent_sizes)


def make_chain_vae(
    data_dim: int = 784,
    latent_sizes: tuple[int, ...] = (100, 50),
    hidden_sizes: tuple[tuple[int, ...], ...] = ((200, 200), (100, 100)),
    activation: str = "tanh",
) -> ChainModel:
    """The IWAE paper's stochastic layers (Burda et al. 2015, section 5; their released
    code): with the defaults, q is x -> tanh 200-200 -> z1 (100) -> tanh 100-100 -> z2
    (50), and p mirrors it, z2 -> tanh 100-100 -> z1 -> tanh 200-200 -> x (Bernoulli).
    Every latent layer is a Gaussian MLP (appendix C.2); ``hidden_sizes[i]`` are the
    widths between layer i and i + 1 (between x and z_1 for i = 0), both directions.
    """
    latent_sizes = tuple(int(n) for n in latent_sizes)
    hidden_sizes = tuple(tuple(int(h) for h in widths) for widths in hidden_sizes)
    if len(latent_sizes) < 2 or len(hidden_sizes) != len(latent_sizes):
        raise ValueError(
            f"a chain needs >= 2 latent layers and one hidden_sizes tuple per layer; got "
            f"latent_sizes={latent_sizes}, hidden_sizes={hidden_sizes}"
        )
    # (L_i, L_{i+1}, the widths between z_i and z_{i+1}), i = 1..k-1
    between = list(zip(latent_sizes[:-1], latent_sizes[1:], hidden_sizes[1:], strict=True))
    return ChainModel(
        p_z_given_above=tuple(
            make_gaussian_mlp(above, below, widths[::-1], activation)
            for below, above, widths in between
        ),
        p_x_given_z1=make_bernoulli_mlp(
            latent_sizes[0], data_dim, hidden_sizes[0][::-1], activation
        ),
        q_z1_given_x=make_gaussian_mlp(data_dim, latent_sizes[0], hidden_sizes[0], activation),
        q_z_given_below=tuple(
            make_gaussian_mlp(below, above, widths, activation) for below, above, widths in between
        ),
        data_dim=data_dim,
        latent_sizes=latent_sizes,
    )


def num_params(tree: Any) -> int:
    """Number of scalars in a parameter tree."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))

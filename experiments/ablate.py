"""Run a grid of configs over seeds, then write RESULTS.md and plots.

    python -m experiments.ablate --grid priors --seeds 3 --workdir runs/ablate_priors
    python -m experiments.ablate --grid priors:smoke --seeds 2 --workdir /tmp/ablate

The grids are data in ``experiments.grids``: each arm is a base config plus
dotted overrides (the same keys as ``--config.<key>=`` of ``experiments.main``).
Each (arm, seed) trains in ``<workdir>/<arm>/seed<k>`` with
``experiments.train.train_and_evaluate``, so it is resumable and a finished run
(its ``results.json`` exists) is not redone. Runs go one after another: on 2 CPU
cores a second run would only share them. Re-running the command after adding
seeds or arms reuses every finished run. ``experiments.report`` writes the table
and plots; ``--report-only`` rewrites them from the runs already there, and
``--publish experiments/results`` copies them to ``experiments/results/<grid>/``.
"""

from __future__ import annotations

import time
from pathlib import Path

from absl import flags

from experiments import cli, report
from experiments.cli import UserError
from experiments.grids import GRIDS, arm_config, parse_grid, select_arms
from experiments.workdir import config_differences


def run_grid(grid: str, variant: str | None, seeds: int, workdir: Path, arms: list[str]) -> None:
    """Train every (arm, seed) that has no results.json yet, seed-major: every arm
    has a first result before any arm gets a second."""
    from experiments.train import train_and_evaluate  # jax/tfds imports only when training

    for seed in range(seeds):
        for arm in arms:
            run_dir = workdir / arm / f"seed{seed}"
            config = arm_config(grid, arm, seed, variant)
            if (run_dir / "results.json").exists():
                # reused only if it is this arm's run: a :smoke run, or one of an older
                # version of the arm, must not be reported as the grid's
                differing = config_differences(run_dir, config)
                if differing:
                    raise UserError(
                        f"{run_dir} holds a finished run of another config "
                        f"({', '.join(differing)}), not arm {arm!r} of grid {grid!r}"
                        f"{':' + variant if variant else ''}: use another --workdir, or "
                        "delete that run"
                    )
                print(f"{run_dir}: done, reused", flush=True)
                continue
            print(f"{run_dir}: training", flush=True)
            train_and_evaluate(config, run_dir)


def _define(values: flags.FlagValues) -> None:
    cli.flag(values, "grid", None, f"one of {sorted(GRIDS)}, optionally :smoke")
    cli.flag(values, "seeds", 3, "seeds 0..N-1 of every arm", lower_bound=1)
    cli.flag(values, "workdir", None, "holds <arm>/seed<k> and the report")
    cli.flag(values, "arms", None, "comma-separated subset of the grid's arms")
    cli.flag(values, "report-only", False, "rewrite the report from the runs there; train none")
    cli.flag(
        values,
        "publish",
        None,
        "also copy RESULTS.md and the PNGs to PUBLISH/<grid>/ (committed docs)",
    )


def main(argv=None) -> Path:
    args = cli.parse(argv, _define, __doc__, required=["grid", "workdir"])
    grid, variant = parse_grid(args.grid)
    arms = select_arms(grid, args.arms)
    workdir = Path(args.workdir)
    command = (
        f"python -m experiments.ablate --grid {args.grid} --seeds {args.seeds} --workdir {workdir}"
    )
    if args.arms:
        command += f" --arms {args.arms}"
    start = time.time()
    if not args.report_only:
        run_grid(grid, variant, args.seeds, workdir, arms)
    path = report.write_report(grid, variant, args.seeds, workdir, command, arms)
    print(f"{path} written ({time.time() - start:.0f} s)")
    if args.publish:
        print(f"copied to {report.publish(grid, workdir, Path(args.publish))}")
    return path


if __name__ == "__main__":
    cli.run(main)

"""Re-score the checkpoint in a workdir with S importance samples.

    python -m experiments.evaluate --workdir runs/default --num-samples 5000

Uses the run's own config.json, checkpoint and fixed test bits, and the same
evaluation key, so rescoring with the run's S reproduces its results.json.
Writes ``rescore_is<S>.json`` beside it and prints the summary table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax

from experiments import cli
from experiments.factory import PLOT_TEST_IMAGES
from experiments.main import evaluate, restore_run, summary_table, test_bits


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--plots", action="store_true", help="redraw the PNG figures too")
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error(f"--num-samples must be >= 1, got {args.num_samples}")
    start = time.time()
    workdir = Path(args.workdir)
    config, model, state, epochs, splits = restore_run(workdir)
    config.eval.plots = args.plots
    eval_key = jax.random.key(int(config.eval.seed))
    x_test = test_bits(workdir, config, splits)
    if args.plots and x_test.shape[0] < PLOT_TEST_IMAGES:
        parser.error(
            f"--plots shows {PLOT_TEST_IMAGES} test images; this run has {x_test.shape[0]}"
        )
    results = evaluate(config, model, state, x_test, eval_key, workdir, args.num_samples)
    results.update({"epochs": epochs, "seconds_per_epoch": None, "wall_s": time.time() - start})
    out = workdir / f"rescore_is{args.num_samples}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(summary_table(results, workdir).replace("results.json", out.name))
    return results


if __name__ == "__main__":
    cli.run(main)

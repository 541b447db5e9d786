"""Re-score a trained model with S importance samples: a run's checkpoint, or the
parameters of an IWAE-table cell (no training, no optimiser state needed).

    python -m experiments.evaluate --workdir runs/default --num-samples 5000
    python -m experiments.evaluate --params experiments/results/iwae_table/iwae_1l_k5.msgpack

``--workdir``: the run's own config.json, checkpoint and fixed test bits, and the
same evaluation key, so rescoring with the run's S reproduces its results.json.
Writes ``rescore_is<S>.json`` beside it. ``--params FILE.msgpack``: theta and phi
saved by ``experiments.iwae_table``, with the config recorded in FILE.json; the
test bits are drawn as the run drew them (the config's seed), and the result is
written to ``--out`` (default ``runs/rescore/<FILE>_is<S>.json``). Both print the
summary table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import jax
from absl import flags

from experiments import cli, factory, iwae_table
from experiments.factory import PLOT_TEST_IMAGES
from experiments.train import evaluate, restore_run, summary_table
from experiments.workdir import config_from_record, test_bits, write_json
from vae_jax import checkpoint
from vae_jax.data import binarize_once


def _define(values: flags.FlagValues) -> None:
    cli.flag(values, "workdir", None, "the run to re-score")
    cli.flag(values, "params", None, "an IWAE-table cell's theta and phi (.msgpack)")
    cli.flag(values, "num-samples", 5000, "importance samples S per test image", lower_bound=1)
    cli.flag(values, "plots", False, "redraw the PNG figures too")
    cli.flag(values, "out", None, "with --params: the JSON to write (default runs/rescore/...)")
    cli.flag(
        values,
        "intensity",
        "",
        "with --params: score on MNIST at this scale (k255 or k256) instead of the one the "
        "cell trained on; the test bits come from the same key, so the two scores are paired",
    )


def restore_params(path: Path, intensity: str = ""):
    """(config, model, state with theta and phi, passes, splits) of a table cell's file;
    ``intensity``, if given, replaces the MNIST scale the cell was trained on."""
    record_path = path.with_suffix(".json")
    if path.suffix != ".msgpack" or not path.exists() or not record_path.exists():
        raise cli.UserError(
            f"--params {path}: expected a .msgpack with its record {record_path.name} beside "
            "it (written by python -m experiments.iwae_table add)"
        )
    record = json.loads(record_path.read_text())
    named = record.get("params_sha256")
    if named is not None and named != iwae_table.sha256(path):
        raise cli.UserError(
            f"--params {path} is not the file its record {record_path.name} describes (its "
            f"SHA-256 differs from the record's): put the cell's own parameters back"
        )
    config = config_from_record(record["config"])
    if intensity:
        config.data.intensity = intensity
    splits = factory.load_data(config)
    model = factory.build_model(config, splits.test.shape[1])
    theta, phi = model.init(jax.random.key(0))
    try:
        saved = checkpoint.restore(path, {"theta": theta, "phi": phi})
    except ValueError as error:
        raise cli.UserError(str(error)) from error
    state = SimpleNamespace(theta=saved["theta"], phi=saved["phi"], step=record["train_step"])
    return config, model, state, record["passes"], splits


def main(argv=None):
    args = cli.parse(argv, _define, __doc__)
    if (args.workdir is None) == (args.params is None):
        raise cli.UserError("give one of --workdir (a run) or --params (a table cell's file)")
    if args.intensity and args.params is None:
        raise cli.UserError("--intensity re-scores a table cell: use it with --params")
    start = time.time()
    source = {}
    if args.workdir is not None:
        workdir = Path(args.workdir)
        config, model, state, epochs, splits = restore_run(workdir)
        x_test = test_bits(workdir, config, splits)
        out = workdir / f"rescore_is{args.num_samples}.json"
    else:
        params = Path(args.params)
        config, model, state, epochs, splits = restore_params(params, args.intensity)
        source = {"params": str(params), "params_sha256": iwae_table.sha256(params)}
        x_test = splits.test
        if config.data.binarization != "none":  # as workdir.test_bits draws them
            x_test = binarize_once(int(config.data.binarization_seed) + 2, splits.test)
        out = Path(args.out or f"runs/rescore/{params.stem}_is{args.num_samples}.json")
        workdir = out.parent
    config.eval.plots = args.plots
    if args.plots and x_test.shape[0] < PLOT_TEST_IMAGES:
        raise cli.UserError(
            f"--plots shows {PLOT_TEST_IMAGES} test images; this run has {x_test.shape[0]}"
        )
    eval_key = jax.random.key(int(config.eval.seed))
    results = evaluate(config, model, state, x_test, eval_key, workdir, args.num_samples)
    results.update(
        data=factory.data_protocol(config),
        intensity=config.data.intensity,
        **source,
        epochs=epochs,
        seconds_per_epoch=None,
        wall_s=time.time() - start,
    )
    write_json(out, results)
    print(summary_table(results, workdir).replace(f"{workdir}/results.json", str(out)))
    return results


if __name__ == "__main__":
    cli.run(main)

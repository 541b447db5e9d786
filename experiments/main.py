"""Train and evaluate one config; resumable.

    python -m experiments.main --config experiments/configs/default.py --workdir runs/default
    python -m experiments.main --config experiments/configs/default.py:smoke --workdir /tmp/s
    python -m experiments.main --config experiments/configs/iwae_1layer.py \
        --config.train.epochs=121 --workdir runs/iwae

The workdir holds ``config.json``, ``metrics.jsonl`` (one line per epoch),
``checkpoint.msgpack`` (written atomically after every epoch), the fixed
binarised test bits ``test_bits.npy``, ``results.json`` and PNG plots.
Re-running the same command resumes from the last completed epoch and gives
the same final state as an uninterrupted run.
"""

from __future__ import annotations

import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from experiments import cli, factory
from experiments.cli import UserError
from experiments.train import train_and_evaluate


def check_overrides(argv: list[str]) -> None:
    """Fail with a clear message on ``--config.<key>=`` naming no config field.

    ml_collections would raise a bare ``AttributeError`` from inside flag
    parsing; this names the key and lists the valid ones beside it. Loading
    the config file here also refuses a missing file or an unknown ``:variant``.
    """
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_arg is None:
        index = argv.index("--config") if "--config" in argv else -1
        config_arg = argv[index + 1] if 0 <= index < len(argv) - 1 else None
    if config_arg is None:
        return
    path, _, arg = config_arg.partition(":")
    config = factory.load_config(path, arg or None)
    for item in argv:
        if not item.startswith("--config."):
            continue
        dotted = item[len("--config.") :].split("=", 1)[0]
        node = config
        for depth, part in enumerate(dotted.split(".")):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                parent = ".".join(dotted.split(".")[:depth]) or "config"
                valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise UserError(
                    f"unknown config key {dotted!r} in {path}; keys under {parent}: {valid}"
                )
            node = node[part]


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    if config is None or workdir is None:
        raise UserError("both --config and --workdir are required (see --help)")
    train_and_evaluate(config, workdir)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:  # e.g. a value of the wrong type for its key
        raise UserError(str(error)) from error


def command_line() -> None:
    """``python -m experiments.main``. The flags are defined here, not on import,
    so that importing ``train_and_evaluate`` registers no command-line flags."""
    check_overrides(sys.argv[1:])
    config_flags.DEFINE_config_file("config", None, "Path to a config file [:smoke].")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
    try:
        app.run(main, flags_parser=_parse_flags)
    except SystemExit as exit_:
        # absl ends --help with status 1; help asked for is a success, as in every
        # other command here (experiments.cli.parse).
        if exit_.code == 1 and {"--help", "-h", "--helpfull"} & set(sys.argv[1:]):
            raise SystemExit(0) from None
        raise


if __name__ == "__main__":
    cli.run(command_line)

"""How the sampled KL(q_agg,N || p) of a trained model moves with N, the images in the mixture.

    python -m experiments.aggregate_kl --workdir runs/default [--num-images 1000,10000,50000]

For each N, the aggregate posterior is q_agg,N(z) = (1/N) sum_n q(z | x_n)
over the first N training images (binarised once with a fixed key), and on
the same draws z ~ q_agg,N (:func:`vae_jax.evaluate.make_aggregate_kl`)

    average KL(q(z|x) || p) = I_N(x; z) + KL(q_agg,N || p),   I_N <= log N.

An encoder whose N posteriors barely overlap has I_N near log N, so
KL(q_agg,N || p) is about the average KL minus log N: the figure says as much
about N as about the match between the aggregate posterior and the prior.
Prints one row per N and writes ``aggregate_kl.json`` in the workdir.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import flags

from experiments import cli
from experiments.train import restore_run
from experiments.workdir import write_json
from vae_jax.data import binarize
from vae_jax.evaluate import (
    Stream,
    aggregate_kl_record,
    make_aggregate_kl,
    stream_key,
)
from vae_jax.schema import phi_axis


class _Counts(flags.ArgumentParser):
    """``--num-images 1000,10000``: comma-separated counts, each >= 1."""

    syntactic_help = "comma-separated integers"

    def parse(self, argument: str) -> list[int]:
        try:
            counts = [int(part) for part in argument.split(",")]
        except ValueError:
            raise ValueError(f"expected comma-separated integers, got {argument!r}") from None
        if any(n < 1 for n in counts):
            raise ValueError(f"every N must be >= 1, got {argument!r}")
        return counts


def _define(values: flags.FlagValues) -> None:
    cli.flag(values, "workdir", None, "the trained run")
    flags.DEFINE(
        _Counts(),
        "num-images",
        "1000,10000,50000",
        "the values of N, each one KL(q_agg,N || p)",
        flag_values=values,
    )
    cli.flag(values, "num-z", 2000, "Monte Carlo draws per N")


def main(argv=None) -> list[dict]:
    args = cli.parse(argv, _define, __doc__, required=["workdir"])
    if args.num_z < 2:
        raise cli.UserError(
            f"--num-z must be >= 2 (a standard error needs two draws), got {args.num_z}"
        )
    start = time.time()
    workdir = Path(args.workdir)
    config, model, state, epochs, splits = restore_run(workdir)
    if phi_axis(state.phi) is not None:
        raise cli.UserError(
            f"{workdir} holds a model without an encoder: q(z|x) of new images is undefined"
        )
    largest = max(args.num_images)
    if largest > splits.train.shape[0]:
        raise cli.UserError(
            f"--num-images asks for {largest} images; the run has {splits.train.shape[0]}"
        )
    eval_key = jax.random.key(int(config.eval.seed))
    x = jnp.asarray(splits.train[:largest])
    if config.data.binarization != "none":
        x = binarize(stream_key(eval_key, Stream.TRAIN_BITS), x)
    kl_fn = jax.jit(make_aggregate_kl(model, args.num_z))
    rows = []
    for n in args.num_images:
        key = jax.random.fold_in(stream_key(eval_key, Stream.AGGREGATE_KL_BY_N), n)
        estimates = kl_fn(key, state.theta, state.phi, x[:n])
        rows.append(aggregate_kl_record(estimates, n, args.num_z, "first training images"))
    record = {
        "workdir": str(workdir),
        "epochs": epochs,
        "rows": rows,
        "wall_s": time.time() - start,
    }
    write_json(workdir / "aggregate_kl.json", record)
    print(
        f"{workdir}, {epochs} epochs: KL(q_agg,N || p) over the first N training images, "
        f"nats, ± standard error over {args.num_z} draws"
    )
    print("| N | average KL(q(z|x)‖p) | I_N(x; z) | log N | KL(q_agg,N‖p) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['num_images']:,} | {row['average_kl']:.2f} ± "
            f"{row['average_kl_standard_error']:.2f} | {row['mutual_information']:.2f} ± "
            f"{row['mutual_information_standard_error']:.2f} | {math.log(row['num_images']):.2f} "
            f"| {row['value']:.2f} ± {row['standard_error']:.2f} |"
        )
    return rows


if __name__ == "__main__":
    cli.run(main)

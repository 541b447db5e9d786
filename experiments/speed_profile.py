"""What bounds vae_jax's speed on this machine: two measurements behind README's
performance notes.

    python -m experiments.speed_profile is-working-set  # IS-5000 time vs samples in flight
    python -m experiments.speed_profile epoch-parts     # epoch time with parts swapped out

``is-working-set`` times IS-5000 on 200 binarised test images (default model,
784-200-20) for several (images per call, samples per chunk) and scales to 10k
images. ``epoch-parts`` times an epoch of the IWAE architecture (784-200-200-50)
at batch 100 and at the full schedule's batch 20, with Adam, with SGD, and with
Adam but no dynamic binarisation: medians of 3 interleaved rounds (one epoch of
each case per round, after compilation). Untrained weights: timing does not
depend on them.
"""

from __future__ import annotations

import time

import jax
import optax
from absl import flags

from experiments import cli
from experiments.bench import interleaved, mlp_epoch
from vae_jax.data import binarize_once, load_mnist
from vae_jax.evaluate import make_log_p_x
from vae_jax.host import map_dataset
from vae_jax.models import make_vae


def is_working_set():
    model = make_vae(784, 20, (200,))
    theta, phi = model.init(jax.random.key(0))
    x = binarize_once(0, load_mnist().test[:200])
    for images, chunk in [(100, 500), (100, 50), (20, 100), (4, 625), (1, 2500), (1, 5000)]:
        fn = jax.jit(make_log_p_x(model, 5000, chunk))
        map_dataset(fn, jax.random.key(0), theta, phi, x[:images], images)  # compile
        start = time.perf_counter()
        map_dataset(fn, jax.random.key(0), theta, phi, x, images)
        seconds = (time.perf_counter() - start) * 10_000 / x.shape[0]
        print(
            f"images/call {images:4d} x chunk {chunk:5d} = {images * chunk:6d} samples in "
            f"flight: IS-5000 {seconds:6.0f} s per 10k images",
            flush=True,
        )


def epoch_parts():
    x = load_mnist().train
    adam, sgd = optax.adam(1e-3), optax.sgd(1e-3)
    parts = [("Adam", adam, True), ("SGD", sgd, True), ("Adam, no binarisation", adam, False)]
    epochs = {
        f"batch {batch}, {name}": mlp_epoch(
            x, (200, 200), 50, "tanh", batch, dynamic, optimizer=opt
        )
        for batch in (100, 20)
        for name, opt, dynamic in parts
    }
    seconds = interleaved(epochs, EPOCH_PARTS_ROUNDS, "epoch parts")
    for name, value in seconds.items():
        adam_epoch = seconds[name.split(",")[0] + ", Adam"]
        print(f"{name}: {value:.2f} s per epoch, {value / adam_epoch:.2f} of Adam's", flush=True)


EPOCH_PARTS_ROUNDS = 3
COMMANDS = {"is-working-set": is_working_set, "epoch-parts": epoch_parts}


def _define(values: flags.FlagValues) -> None:
    """No flags: the one argument is the command."""


def main(argv: list[str] | None = None) -> None:
    command = cli.parse(argv, _define, __doc__, positional=["command"]).command
    if command not in COMMANDS:
        raise cli.UserError(f"unknown command {command!r}: choose one of {sorted(COMMANDS)}")
    COMMANDS[command]()


if __name__ == "__main__":
    cli.run(main)

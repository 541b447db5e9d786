"""What bounds vae_jax's speed on this machine: two measurements behind README's
performance notes.

    python -m experiments.speed_profile is-working-set  # IS-5000 time vs samples in flight
    python -m experiments.speed_profile epoch-parts     # epoch time with parts swapped out
    python -m experiments.speed_profile torch-loop-parts  # PyTorch's loops, one change at a time

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
from experiments.bench import (
    CELL_IMAGES,
    TORCH_CHANGES,
    TORCH_MODELS,
    TORCH_VENV,
    TorchEpoch,
    interleaved,
    mlp_epoch,
    torch_python,
)
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


def torch_loop_parts():
    """Each difference between PyTorch's examples loop and the fast one, alone: the
    examples loop with one change, the fast loop without it, then threads and
    torch.compile. Every variant is a served process (as in make bench), one epoch of
    each per round, interleaved; 10k training images, medians of 5 rounds after a
    warm-up epoch, scaled to the 50k epoch."""
    python = torch_python(TORCH_VENV)
    x = load_mnist().train[:CELL_IMAGES]
    scale = 50_000 / x.shape[0]
    variants = [("examples", ("--loop", "examples"))]
    variants += [(f"examples + {c}", ("--loop", "examples", "--change", c)) for c in TORCH_CHANGES]
    variants += [("fast", ("--loop", "fast"))]
    variants += [(f"fast - {c}", ("--loop", "fast", "--change", c)) for c in TORCH_CHANGES]
    variants += [
        ("examples, 1 thread", ("--loop", "examples", "--threads", "1")),
        ("fast, 1 thread", ("--loop", "fast", "--threads", "1")),
        ("fast, compiled", ("--loop", "fast", "--compile")),
        ("fast, compiled, 1 thread", ("--loop", "fast", "--compile", "--threads", "1")),
    ]
    for model in ("vae400", "iwae_k1", "iwae_k5"):
        model_options = TORCH_MODELS[model][0]
        arms = {}
        try:
            for name, options in variants:
                if model == "iwae_k5" and (" + " in name or " - " in name):
                    continue  # k = 5: the loops, threads and compile only
                arms[name] = TorchEpoch(python, x, *model_options, *options)
            seconds = interleaved(arms, 5, model)
        finally:
            for arm in arms.values():
                arm.close()
        for name, value in seconds.items():
            print(f"{model:8s} {name:28s} {value * scale:6.2f} s per 50k epoch", flush=True)


COMMANDS = {
    "is-working-set": is_working_set,
    "epoch-parts": epoch_parts,
    "torch-loop-parts": torch_loop_parts,
}


def _define(values: flags.FlagValues) -> None:
    """No flags: the one argument is the command."""


def main(argv: list[str] | None = None) -> None:
    command = cli.parse(argv, _define, __doc__, positional=["command"]).command
    if command not in COMMANDS:
        raise cli.UserError(f"unknown command {command!r}: choose one of {sorted(COMMANDS)}")
    COMMANDS[command]()


if __name__ == "__main__":
    cli.run(main)

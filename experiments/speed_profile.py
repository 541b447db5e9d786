"""What bounds vae_jax's speed on this machine: two measurements behind README's
performance notes.

    python -m experiments.speed_profile is-working-set  # IS-5000 time vs samples in flight
    python -m experiments.speed_profile epoch-parts     # epoch time with parts swapped out

``is-working-set`` times IS-5000 on 200 binarised test images (default model,
784-200-20) for several (images per call, samples per chunk) and scales to 10k
images. ``epoch-parts`` times an epoch of the IWAE architecture at batch 100
with Adam, with SGD, and with Adam but no dynamic binarisation (medians of 3
epochs after compilation). Untrained weights: timing does not depend on them.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from experiments import cli
from vae_jax.data import binarize_once, load_mnist
from vae_jax.evaluate import make_log_p_x
from vae_jax.host import map_dataset
from vae_jax.models import make_vae
from vae_jax.objectives import make_elbo
from vae_jax.train import init_train_state, make_amortised_step, make_train_epoch


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
    x = jnp.asarray(load_mnist().train)
    model = make_vae(784, 50, (200, 200))

    def median_epoch(optimizer, dynamic):
        state = init_train_state(jax.random.key(0), model, optimizer)
        epoch_fn = jax.jit(
            make_train_epoch(
                make_amortised_step(make_elbo(model), optimizer),
                100,
                x.shape[0],
                dynamic_binarization=dynamic,
            ),
            donate_argnums=0,
        )
        times = []
        for epoch in range(4):
            start = time.perf_counter()
            state, metrics = epoch_fn(state, jax.random.key(1), jnp.asarray(epoch, jnp.int32), x)
            float(metrics["loss"])
            times.append(time.perf_counter() - start)
        return float(np.median(times[1:]))  # epoch 0 includes compilation

    for name, optimizer, dynamic in [
        ("Adam, dynamic binarisation", optax.adam(1e-3), True),
        ("SGD, dynamic binarisation", optax.sgd(1e-3), True),
        ("Adam, no binarisation", optax.adam(1e-3), False),
    ]:
        print(
            f"IWAE architecture, batch 100, {name}: {median_epoch(optimizer, dynamic):.2f} s "
            "per epoch",
            flush=True,
        )


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

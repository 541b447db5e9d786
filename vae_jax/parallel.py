"""Data parallelism with jax.sharding: one code path for 1 or many devices.

A 1-D mesh named ``"data"`` spans the devices; theta, phi and the optimiser
state are replicated, and each batch is split along its first axis. Inside the
jitted step a sharding constraint on the batch is all XLA needs (GSPMD): it
partitions the per-example work and inserts the all-reduce of the gradients
(the batch mean in ``batch_objective``). On one device the constraint is a
no-op. Random draws do not depend on the sharding (``jax_threefry_partitionable``,
the default), so a run on 4 devices matches the 1-device run up to the order of
floating-point sums.

Multi-host: start every host with ``jax.distributed.initialize(...)`` before
building the mesh; ``jax.devices()`` then lists all hosts' devices and the same
code runs unchanged (see README, "Scaling past one device").
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all of them)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis across the mesh; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every array of ``tree`` whole on every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def check_divisible(batch_size: int, num_devices: int, what: str) -> None:
    if batch_size % num_devices:
        raise ValueError(
            f"{what} {batch_size} is not divisible by the {num_devices} devices of the mesh"
        )


def constrain_batch(x: jax.Array, sharding: NamedSharding | None) -> jax.Array:
    """Inside jit: ask XLA to split ``x`` along its first axis (no-op if None)."""
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)

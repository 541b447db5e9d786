"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=4 by test_parallel.py.

Trains a small VAE for two epochs on a 4-device mesh and on a 1-device mesh with
the same code, scores both with the sharded IS evaluator, and prints JSON.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax import parallel
from vae_jax.evaluate import make_log_p_x
from vae_jax.host import map_dataset
from vae_jax.models import make_vae
from vae_jax.objectives import make_elbo
from vae_jax.train import init_train_state, make_amortised_step, make_train_epoch


def run(devices):
    mesh = parallel.data_mesh(devices)
    model = make_vae(64, 4, (32,))
    optimizer = optax.adam(3e-3)
    x = jax.random.uniform(jax.random.key(1), (256, 64))
    state = parallel.replicate(init_train_state(jax.random.key(0), model, optimizer), mesh)
    epoch_fn = jax.jit(
        make_train_epoch(
            make_amortised_step(make_elbo(model), optimizer),
            32,
            256,
            batch_sharding=parallel.batch_sharding(mesh),
        ),
        donate_argnums=0,
    )
    losses = []
    x_device = parallel.replicate(x, mesh)
    for epoch in range(2):
        state, metrics = epoch_fn(state, jax.random.key(2), jnp.asarray(epoch, jnp.int32), x_device)
        losses.append(float(metrics["loss"]))
    log_p_x_fn = jax.jit(make_log_p_x(model, 200, 50, parallel.batch_sharding(mesh)))
    bits = np.asarray(jax.random.bernoulli(jax.random.key(3), x[:40]).astype(jnp.float32))
    log_p_x = map_dataset(log_p_x_fn, jax.random.key(4), state.theta, state.phi, bits, 8)
    leaves = jax.tree_util.tree_leaves((state.theta, state.phi))
    return {
        "num_devices": len(devices),
        "losses": losses,
        "params": [np.asarray(v).ravel().tolist() for v in leaves],
        "log_p_x": log_p_x.tolist(),
        "batch_shard_devices": len(
            epoch_fn.lower(state, jax.random.key(2), jnp.asarray(0, jnp.int32), x_device)
            .compile()
            .input_shardings[0][0]
            .theta["p_x_given_z"]["hidden_0"]["kernel"]
            .device_set
        ),
    }


if __name__ == "__main__":
    print(json.dumps({"many": run(jax.devices()), "one": run(jax.devices()[:1])}))

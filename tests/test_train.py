"""Training: one trace per run, resumption equal to an uninterrupted run, refusals."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import factory
from experiments.configs import default
from experiments.main import train_and_evaluate
from vae_jax import checkpoint
from vae_jax.models import make_vae
from vae_jax.objectives import make_elbo
from vae_jax.train import init_train_state, make_train_epoch

ROOT = Path(__file__).resolve().parents[1]


def _tiny_epoch():
    model = make_vae(16, 2, (8,))
    optimizer = optax.adam(1e-2)
    state = init_train_state(jax.random.key(0), model, optimizer)
    epoch_fn = make_train_epoch(lambda beta: make_elbo(model, beta=beta), optimizer, 10, 40)
    return state, epoch_fn, jax.random.uniform(jax.random.key(1), (40, 16))


def test_train_epoch_compiles_once_and_a_retrace_is_caught():
    state, epoch_fn, x = _tiny_epoch()
    chex.clear_trace_counter()
    epoch_fn = jax.jit(chex.assert_max_traces(epoch_fn, n=1), donate_argnums=0)
    losses = []
    for epoch in range(3):
        state, metrics = epoch_fn(state, jax.random.key(2), jnp.asarray(epoch, jnp.int32), x)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 12
    assert losses[-1] < losses[0]
    with pytest.raises(AssertionError, match="traced"):  # a float epoch forces a new trace
        epoch_fn(state, jax.random.key(2), jnp.asarray(3.0, jnp.float32), x)


def test_checkpoint_round_trip_and_shape_check(tmp_path):
    state, _, _ = _tiny_epoch()
    path = tmp_path / "ckpt.msgpack"
    checkpoint.save(path, {"epoch": 3, "state": state})
    restored = checkpoint.restore(path, {"epoch": 0, "state": state})
    assert restored["epoch"] == 3
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored["state"], state)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.msgpack"]  # no temp file left
    other = init_train_state(jax.random.key(0), make_vae(16, 3, (8,)), optax.adam(1e-2))
    with pytest.raises(ValueError, match="different model"):
        checkpoint.restore(path, {"epoch": 0, "state": other})


def _smoke_config(**overrides):
    config = default.get_config("smoke")
    config.eval.plots = False
    config.train.epochs = 3
    for dotted, value in overrides.items():
        section, name = dotted.split("__")
        config[section][name] = value
    return config


def _assert_same_run(dir_a: Path, dir_b: Path):
    assert (dir_a / "checkpoint.msgpack").read_bytes() == (
        dir_b / "checkpoint.msgpack"
    ).read_bytes()
    drop = ("seconds",)
    lines_a, lines_b = (
        [
            {k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (d / "metrics.jsonl").read_text().splitlines()
        ]
        for d in (dir_a, dir_b)
    )
    assert lines_a == lines_b and len(lines_a) == 3


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    config = _smoke_config()
    straight = train_and_evaluate(config, tmp_path / "straight")
    assert train_and_evaluate(config, tmp_path / "resumed", stop_after_epoch=1) is None
    resumed = train_and_evaluate(config, tmp_path / "resumed")
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    assert resumed["test_nll"] == straight["test_nll"]


@pytest.mark.slow
def test_kill_dash_nine_mid_run_then_resume(tmp_path):
    """SIGKILL the real command while it trains; rerunning it finishes identically."""
    args = [
        sys.executable,
        "-m",
        "experiments.main",
        "--config",
        "experiments/configs/default.py:smoke",
        "--config.train.epochs=8",
        "--config.data.max_train_examples=2000",
        "--config.eval.plots=False",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        args + [f"--workdir={tmp_path / 'straight'}"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        args + [f"--workdir={killed}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        metrics = killed / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len((killed / "metrics.jsonl").read_text().splitlines())
    assert done < 8
    subprocess.run(
        args + [f"--workdir={killed}"], cwd=ROOT, env=env, check=True, capture_output=True
    )
    straight_lines = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    killed_lines = (killed / "metrics.jsonl").read_text().splitlines()
    assert len(straight_lines) == len(killed_lines) == 8
    assert (tmp_path / "straight" / "checkpoint.msgpack").read_bytes() == (
        killed / "checkpoint.msgpack"
    ).read_bytes()


def test_workdir_of_a_different_config_is_refused(tmp_path):
    train_and_evaluate(_smoke_config(), tmp_path, stop_after_epoch=1)
    with pytest.raises(ValueError, match="model.latent_dim: 20 -> 5"):
        train_and_evaluate(_smoke_config(model__latent_dim=5), tmp_path)
    # extending the number of epochs is a resumption, not a different run
    assert train_and_evaluate(_smoke_config(train__epochs=4), tmp_path, stop_after_epoch=2) is None


def test_unknown_options_are_refused_by_name():
    model = factory.build_model(_smoke_config(), 784)
    with pytest.raises(ValueError, match="unknown objective 'vimco'"):
        factory.build_objective_at_beta(_smoke_config(objective__name="vimco"), model)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        factory.build_optimizer(_smoke_config(optimizer__name="sgd"), 10)
    with pytest.raises(ValueError, match="unknown binarization"):
        factory.load_data(_smoke_config(data__binarization="otsu"))
    with pytest.raises(ValueError, match="needs binary data"):
        factory.load_data(_smoke_config(data__binarization="none"))


def test_unknown_config_key_on_the_command_line():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.main",
            "--config",
            "experiments/configs/default.py:smoke",
            "--config.model.widht=3",
            "--workdir=/tmp/unused",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "unknown config key 'model.widht'" in result.stderr
    assert "hidden_sizes" in result.stderr  # lists what would have been valid

"""Training: one trace per run, resumption equal to an uninterrupted run, refusals."""

import importlib
import json
import os
import re
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
from experiments.cli import UserError
from experiments.configs import default
from experiments.train import train_and_evaluate
from vae_jax import checkpoint, data
from vae_jax import train as train_module
from vae_jax.models import make_vae
from vae_jax.objectives import make_elbo
from vae_jax.schema import decoder_name
from vae_jax.train import (
    init_train_state,
    iwae_learning_rate_schedule,
    iwae_schedule_epochs,
    make_amortised_step,
    make_train_epoch,
)

ROOT = Path(__file__).resolve().parents[1]


def _tiny_epoch():
    model = make_vae(16, 2, (8,))
    optimizer = optax.adam(1e-2)
    state = init_train_state(jax.random.key(0), model, optimizer)
    epoch_fn = make_train_epoch(make_amortised_step(make_elbo(model), optimizer), 10, 40)
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


# What each training step sees: one 3-epoch run of 16 examples in batches of 4,
# shared by the tests below. Example n's first ID_PIXELS pixels spell n in 0/1
# intensities, which any binarisation keeps; the rest are 0.5, a fair coin per draw.
# The objective reports the step, example, bits and key of every example it scores;
# a wrapper of the module's binarize reports each step's binarisation key.
ID_PIXELS, COIN_PIXELS = 4, 48
NUM_EXAMPLES, BATCH_SIZE, EPOCHS = 16, 4, 3
STEPS_PER_EPOCH = NUM_EXAMPLES // BATCH_SIZE


def _host_key(key_data) -> tuple[int, ...]:
    return tuple(np.asarray(key_data).tolist())


# Every training generator the configs offer (experiments.factory.train_key) must
# keep these properties.
@pytest.fixture(scope="module", params=["threefry2x32", "rbg", "unsafe_rbg"])
def steps_seen(request):
    model = make_vae(ID_PIXELS + COIN_PIXELS, 1, (2,))
    elbo = make_elbo(model)
    seen, binarize_keys, step_of_bits = [], [], {}

    def record(x, key_data):
        bits = np.asarray(x).copy()
        seen.append(
            {
                "example": int(bits[:ID_PIXELS] @ (2 ** np.arange(ID_PIXELS))),
                "bits": bits,
                "key": _host_key(key_data),
            }
        )

    def objective(key, theta, phi, x):
        jax.debug.callback(record, x, jax.random.key_data(key))
        return elbo(key, theta, phi, x)

    def record_step(step, x_BxD):  # 48 fair coins per row: a row's bits name its step
        for row in np.asarray(x_BxD):
            step_of_bits[row.tobytes()] = int(step)

    optimizer = optax.sgd(1e-3)
    amortised = make_amortised_step(objective, optimizer)

    def step_fn(key, state, x_BxD, index_B):
        jax.debug.callback(record_step, state.step, x_BxD)
        return amortised(key, state, x_BxD, index_B)

    def recording_binarize(key, x):
        jax.debug.callback(lambda k: binarize_keys.append(_host_key(k)), jax.random.key_data(key))
        return data.binarize(key, x)

    code_NxI = (np.arange(NUM_EXAMPLES)[:, None] >> np.arange(ID_PIXELS)[None, :]) & 1
    coins_NxC = np.full((NUM_EXAMPLES, COIN_PIXELS), 0.5)
    x = jnp.asarray(np.concatenate([code_NxI, coins_NxC], axis=1), jnp.float32)
    state = init_train_state(jax.random.key(0), model, optimizer)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "binarize", recording_binarize)
        epoch_fn = jax.jit(make_train_epoch(step_fn, BATCH_SIZE, NUM_EXAMPLES))
        for epoch in range(EPOCHS):
            train_key = jax.random.key(2, impl=request.param)
            state, _ = epoch_fn(state, train_key, jnp.asarray(epoch, jnp.int32), x)
        jax.effects_barrier()
    assert len(seen) == EPOCHS * NUM_EXAMPLES  # each example scored once per epoch
    assert len(step_of_bits) == EPOCHS * NUM_EXAMPLES  # no two rows drew the same bits
    for r in seen:
        r["step"] = step_of_bits[r["bits"].tobytes()]
    return seen, binarize_keys, request.param


def test_every_epoch_has_its_own_shuffle_order(steps_seen):
    seen, _, _ = steps_seen
    batches = {}  # step -> the examples in that step's batch
    for r in seen:
        batches.setdefault(r["step"], set()).add(r["example"])
    epochs = [
        [frozenset(batches[e * STEPS_PER_EPOCH + s]) for s in range(STEPS_PER_EPOCH)]
        for e in range(EPOCHS)
    ]
    for batches_of_epoch in epochs:  # each epoch is a permutation of the training set
        assert set().union(*batches_of_epoch) == set(range(NUM_EXAMPLES))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]


def test_binarisation_is_redrawn_at_every_step(steps_seen):
    """Dynamic binarisation: an example's coin pixels differ every time it is seen."""
    seen, _, _ = steps_seen
    draws = {}
    for r in seen:
        assert set(np.unique(r["bits"])) <= {0.0, 1.0}  # the objective sees bits
        draws.setdefault(r["example"], []).append(r["bits"][ID_PIXELS:])
    assert sorted(draws) == list(range(NUM_EXAMPLES))
    for example, (first, second, third) in draws.items():
        # two fair draws of 48 coins agree with probability 2^-48
        assert not np.array_equal(first, second), example
        assert not np.array_equal(second, third) and not np.array_equal(first, third), example
    coins = np.concatenate([b for bits in draws.values() for b in bits])
    # Bernoulli(0.5): 5 standard errors at n = 16 * 3 * 48 = 2304 is 0.052
    assert abs(coins.mean() - 0.5) < 0.052


def test_binarisation_and_objective_draw_from_different_keys(steps_seen):
    """No step's binarisation key, nor a key split from it, reaches the objective."""
    seen, binarize_keys, impl = steps_seen
    assert len(binarize_keys) == EPOCHS * STEPS_PER_EPOCH  # one binarisation per step
    objective_keys = {r["key"] for r in seen}
    assert len(objective_keys) == len(seen)  # no key serves twice, across steps or examples
    assert len(set(binarize_keys)) == len(binarize_keys)
    from_binarize = set(binarize_keys)
    for key_data in binarize_keys:
        # batch_objective splits its key into one per example (split(K, n)[j] == fold_in(K, j))
        key = jax.random.wrap_key_data(np.asarray(key_data, np.uint32), impl=impl)
        children = jax.random.split(key, 8)
        from_binarize.update(_host_key(jax.random.key_data(c)) for c in children)
    assert not objective_keys & from_binarize


def test_iwae_learning_rate_schedule_follows_burda_section_5():
    """Stage i = 0..7 lasts 3^i epochs at 1e-3 * 10^(-i/7); 3280 epochs in all."""
    steps_per_epoch = 3
    schedule = iwae_learning_rate_schedule(steps_per_epoch)
    starts = [0, 1, 4, 13, 40, 121, 364, 1093, 3280]  # running sums of 3^i, by hand
    assert iwae_schedule_epochs() == 3280
    for i in range(8):
        expected = 1e-3 * 10 ** (-i / 7)
        first, last = starts[i] * steps_per_epoch, starts[i + 1] * steps_per_epoch - 1
        for step in (first, first + 1, last):
            np.testing.assert_allclose(schedule(step), expected, rtol=1e-6, err_msg=str(step))
    np.testing.assert_allclose(schedule(10**6), 1e-4, rtol=1e-6)  # the last stage stays


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


def _smoke_command(*flags: str) -> list[str]:
    """``python -m experiments.main`` on the smoke config without plots, plus ``flags``."""
    config = ["--config", "experiments/configs/default.py:smoke", "--config.eval.plots=False"]
    return [sys.executable, "-m", "experiments.main", *config, *flags]


@pytest.mark.slow
def test_kill_dash_nine_mid_run_then_resume(tmp_path):
    """SIGKILL the real command while it trains; rerunning it finishes identically.

    The reference trains in-process and stops after its last epoch (the comparison is
    of checkpoints and metrics, so it skips the scoring the rerun does)."""
    epochs, images = 6, 1000  # 20 steps an epoch: the kill lands well before the end
    args = _smoke_command(
        f"--config.train.epochs={epochs}", f"--config.data.max_train_examples={images}"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    straight = _smoke_config(
        train__epochs=epochs, data__max_train_examples=images, eval__plots=False
    )
    assert train_and_evaluate(straight, tmp_path / "straight", stop_after_epoch=epochs) is None
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
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len((killed / "metrics.jsonl").read_text().splitlines())
    assert done < epochs
    subprocess.run(
        args + [f"--workdir={killed}"], cwd=ROOT, env=env, check=True, capture_output=True
    )
    straight_lines = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    killed_lines = (killed / "metrics.jsonl").read_text().splitlines()
    assert len(straight_lines) == len(killed_lines) == epochs
    assert (tmp_path / "straight" / "checkpoint.msgpack").read_bytes() == (
        killed / "checkpoint.msgpack"
    ).read_bytes()
    assert (killed / "results.json").exists()  # the rerun finished and scored the run


def test_workdir_of_a_different_config_is_refused(tmp_path):
    train_and_evaluate(_smoke_config(), tmp_path, stop_after_epoch=1)
    with pytest.raises(ValueError, match="model.latent_dim: 20 -> 5"):
        train_and_evaluate(_smoke_config(model__latent_dim=5), tmp_path)
    # extending the number of epochs is a resumption, not a different run
    assert train_and_evaluate(_smoke_config(train__epochs=4), tmp_path, stop_after_epoch=2) is None


def test_unknown_options_are_refused_by_name():
    # factory.build and load_data check the whole config first, as experiments.main does
    x = np.zeros((8, 784), np.float32)
    with pytest.raises(ValueError, match="objective.name='vimco' is not an option"):
        factory.build(_smoke_config(objective__name="vimco"), x)
    with pytest.raises(ValueError, match="optimizer.name='sgd' is not an option"):
        factory.build(_smoke_config(optimizer__name="sgd"), x)
    with pytest.raises(ValueError, match="data.binarization='otsu' is not an option"):
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


@pytest.mark.parametrize("config_name", ["default", "iwae_2layer"])
def test_output_bias_can_start_at_the_logit_of_the_training_mean(config_name):
    from experiments import configs

    module = importlib.import_module(f"{configs.__name__}.{config_name}")
    config = module.get_config("smoke")
    x = np.random.default_rng(0).random((60, 784)).astype(np.float32)
    x[:, 0], x[:, 1] = 0.0, 1.0  # means outside [0.001, 0.999] are clipped
    config.model.output_bias = "zero"
    zero = factory.build(config, x).state.theta
    config.model.output_bias = "train_mean_logit"
    theta = factory.build(config, x).state.theta
    name = decoder_name(theta)
    mean = np.clip(x.astype(np.float64).mean(axis=0), 0.001, 0.999)
    bias = np.asarray(theta[name]["logits"]["bias"])
    np.testing.assert_allclose(bias, np.log(mean / (1 - mean)), rtol=1e-6, atol=1e-6)
    assert abs(bias[0] - np.log(0.001 / 0.999)) < 1e-5 and abs(bias[1] + bias[0]) < 1e-5
    assert np.all(np.asarray(zero[name]["logits"]["bias"]) == 0.0)  # the default start
    same = jax.tree.map(np.array_equal, {**zero, name: {}}, {**theta, name: {}})
    assert all(jax.tree.leaves(same))  # nothing else moved
    config.model.likelihood = "gaussian"
    with pytest.raises(UserError, match="output_bias='train_mean_logit'.*gaussian"):
        factory.check_config(config)


def test_burda_adam_takes_the_two_steps_of_the_authors_theano_code():
    # yburda/iwae optimizers.py, maximising; here the same minimising a batch-MEAN loss
    # of B = 4 examples, so the authors' summed gradient is 4 g. b1 0.99, b2 0.999, eps 1e-4.
    optimizer = train_module.burda_adam(learning_rate=0.1, batch_size=4)
    w = {"w": jnp.array([1.0, -2.0])}
    state = optimizer.init(w)
    g1, g2 = {"w": jnp.array([0.5, -1.0])}, {"w": jnp.array([0.2, 0.3])}
    # t = 1: the step reads m_0 = 0, v_0 = 1 (Theano's updates use the old values): no move.
    u1, state = optimizer.update(g1, state, w)
    np.testing.assert_array_equal(u1["w"], [0.0, 0.0])
    # m_1 = 0.01 * (4 g1) = (0.02, -0.04); v_1 = 0.999 * 1 + 0.001 * (4 g1)^2 = (1.003, 1.015)
    # t = 2: -0.1 * sqrt(1 - 0.999^2) / (1 - 0.99^2) * m_1 / (sqrt(v_1) + 1e-4)
    u2, state = optimizer.update(g2, state, w)
    alpha = 0.1 * (1 - 0.998001) ** 0.5 / (1 - 0.9801)
    expected = [-alpha * 0.02 / (1.003**0.5 + 1e-4), -alpha * -0.04 / (1.015**0.5 + 1e-4)]
    np.testing.assert_allclose(u2["w"], expected, rtol=1e-5)
    # and the moments now hold g2: m_2 = 0.99 m_1 + 0.01 * 4 g2
    _, burda, _ = state
    np.testing.assert_allclose(
        burda.mu["w"], [0.99 * 0.02 + 0.008, 0.99 * -0.04 + 0.012], rtol=1e-6
    )
    np.testing.assert_allclose(
        burda.nu["w"], [0.999 * 1.003 + 0.001 * 0.64, 0.999 * 1.015 + 0.001 * 1.44], rtol=1e-6
    )


def test_the_rounded_iwae_schedule_is_the_authors_rates():
    schedule = train_module.iwae_learning_rate_schedule(1, 1e-3, rounded=True)
    stage_starts = [0, 1, 4, 13, 40, 121, 364, 1093]  # after 3^0 + ... + 3^(i-1) epochs
    rates = [float(schedule(s)) for s in stage_starts]
    # experiments.py: 1e-4 * round(10 ** (1 - (i - 1) / 7), 1), i = 1..8
    np.testing.assert_allclose(
        rates, [1e-3, 7.2e-4, 5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4, 1e-4], rtol=1e-6
    )
    exact = train_module.iwae_learning_rate_schedule(1, 1e-3)
    assert abs(float(exact(1)) - 1e-3 * 10 ** (-1 / 7)) < 1e-9


def test_the_config_builds_the_authors_optimiser():
    config = default.get_config("smoke")
    config.optimizer.name, config.optimizer.schedule = "burda_adam", "iwae_rounded"
    with pytest.raises(UserError, match=r"burda_adam' is the IWAE authors' Adam"):
        factory.check_config(config)  # plain Adam's b1 = 0.9 is not theirs: refused
    config.optimizer.b1, config.optimizer.eps = 0.99, 1e-4
    factory.check_config(config)
    steps_per_epoch, batch_size = 2, int(config.train.batch_size)
    built = factory.build_optimizer(config, steps_per_epoch)
    schedule = train_module.iwae_learning_rate_schedule(steps_per_epoch, 1e-3, rounded=True)
    reference = train_module.burda_adam(schedule, batch_size, b1=0.99, b2=0.999, eps=1e-4)
    tree = {"w": jnp.ones(3)}
    built_state, reference_state = built.init(tree), reference.init(tree)
    for step in range(4):  # across the first stage boundary (2 steps), where 7.2e-4 starts
        g = {"w": jnp.array([0.3, -0.2, 0.1]) * (step + 1)}
        u, built_state = built.update(g, built_state, tree)
        v, reference_state = reference.update(g, reference_state, tree)
        np.testing.assert_allclose(u["w"], v["w"], rtol=1e-6)
    assert float(schedule(2)) == pytest.approx(7.2e-4)


@pytest.mark.parametrize("bad_epoch", [1, 2])
def test_a_nan_loss_is_one_line_naming_the_epoch_and_the_checkpoint_kept(
    tmp_path, monkeypatch, bad_epoch
):
    from experiments import train as experiments_train

    calls = []

    def nan_at_bad_epoch(tree):
        calls.append(1)
        metrics = train_module.to_host(tree)
        return {**metrics, "loss": float("nan")} if len(calls) == bad_epoch else metrics

    monkeypatch.setattr(experiments_train, "to_host", nan_at_bad_epoch)
    with pytest.raises(UserError) as failed:
        train_and_evaluate(_smoke_config(train__epochs=3), tmp_path)
    message = str(failed.value)
    assert f"training loss became nan in epoch {bad_epoch}" in message and "\n" not in message
    if bad_epoch == 1:
        assert "no checkpoint was written" in message
        assert not (tmp_path / "checkpoint.msgpack").exists()
    else:
        assert "the checkpoint after epoch 1 is kept" in message
        assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_a_second_start_on_a_running_workdir_is_refused_and_ctrl_c_is_one_line(tmp_path):
    args = _smoke_command("--config.train.epochs=100000", f"--workdir={tmp_path}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # stderr to a file: a pipe nobody reads fills with the progress bar and blocks the run
    log = (tmp_path / "stderr.txt").open("w")
    # A shell starts background jobs with SIGINT ignored, and Python keeps an ignored
    # SIGINT ignored: the child resets it to the default, as a terminal's Ctrl-C would
    # find it, then becomes the command (exec; a preexec_fn would fork a JAX process).
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    reset += "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    proc = subprocess.Popen(
        [sys.executable, "-c", reset, *args[1:]],
        cwd=ROOT,
        env=env,
        stderr=log,
        stdout=subprocess.DEVNULL,
    )
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text()):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the test could use it"
    # the same command again, while the first holds the workdir: refused, naming it
    second = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    assert second.returncode == 2, second.stderr
    refusal = second.stderr.strip().splitlines()[-1]
    assert refusal.startswith(f"error: {tmp_path} is in use by another run (process {proc.pid}:")
    assert proc.poll() is None  # the first run was not disturbed
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    log.close()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    # metrics.jsonl is appended just before the checkpoint is saved, so it may hold one
    # line more than the checkpoint the message names (a resume drops that line)
    lines = len(metrics.read_text().splitlines())
    last = stderr.strip().splitlines()[-1]
    match = re.fullmatch(r"interrupted after epoch (\d+); rerun the same command to resume", last)
    assert match and int(match.group(1)) in (lines - 1, lines), (last, lines)


def test_the_optimiser_uses_the_configs_adam_eps():
    # one Adam step from zero moments moves each weight by lr * g_hat / (sqrt(v_hat) + eps)
    # = lr * g / (|g| + eps): for |g| = 1e-5, eps 1e-4 gives lr / 11, eps 1e-8 about lr
    config = default.get_config("smoke")
    g = {"w": jnp.array([1e-5, -1e-5])}
    steps = {}
    for eps in (1e-4, 1e-8):
        config.optimizer.eps = eps
        optimizer = factory.build_optimizer(config, steps_per_epoch=10)
        updates, _ = optimizer.update(g, optimizer.init(g), g)
        steps[eps] = np.asarray(updates["w"])
    lr = config.optimizer.learning_rate
    np.testing.assert_allclose(steps[1e-4], [-lr * 1e-5 / 1.1e-4, lr * 1e-5 / 1.1e-4], rtol=1e-4)
    np.testing.assert_allclose(steps[1e-8], [-lr, lr], rtol=1e-2)


def test_rerunning_a_finished_run_returns_its_score_without_scoring_again(tmp_path, monkeypatch):
    from experiments import train as experiments_train

    config = _smoke_config()
    first = train_and_evaluate(config, tmp_path)
    stamp = (tmp_path / "results.json").stat().st_mtime_ns

    def no_scoring(*args, **kwargs):
        raise AssertionError("a finished, scored run was evaluated again")

    monkeypatch.setattr(experiments_train, "evaluate", no_scoring)
    assert train_and_evaluate(config, tmp_path) == first
    assert (tmp_path / "results.json").stat().st_mtime_ns == stamp
    # results.json of another checkpoint (or none) is scored again
    (tmp_path / "results.json").write_text(json.dumps({**first, "train_step": 1}))
    with pytest.raises(AssertionError, match="evaluated again"):
        train_and_evaluate(config, tmp_path)

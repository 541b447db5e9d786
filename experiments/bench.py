"""`make bench`: speed and memory of vae_jax against references measured in the same run.

    make bench    # installs .venv-torch (torch==2.13.0, CPU) first, then runs:
    python -m experiments.bench [--rounds 5] [--is-examples 10000] [--no-torch]
                                [--only pytorch] [--smoke]

Reports medians over ``--rounds`` of:
  * this machine's dense float32 matmul peak (2048^3), the yardstick for GFLOP/s;
  * vae_jax against PyTorch (experiments/bench_torch.py, run in .venv-torch, which
    `make install-torch` creates) on two models: the 784-400-20 ReLU MLP VAE of
    PyTorch's examples/vae at batch 128 (50k images), and the IWAE table's step
    (784-200-200-50 tanh, batch 20, dynamic binarisation, Adam eps 1e-4) at k = 1
    (VAE) and k = 5 (IWAE), timed on 10k images and scaled to 50k. PyTorch runs as
    examples/vae writes its loop and as the fastest idiomatic loops measured here
    (fused with-logits loss, one host read per epoch, index batches, fused Adam;
    also torch.compile'd, and on 1 thread), each interleaved with vae_jax's epochs
    (the same load for all) and standalone (epochs back to back, as a user times a
    loop); examples/vae's model's loops are also served with nothing in between.
    Ratios are vae_jax's time / the fastest PyTorch time of any loop, either way;
    ``--only pytorch`` stops after this part;
  * one epoch of the IWAE 1-layer architecture (784-200-200-50) at batch 100,
    as achieved GFLOP/s against the matmul peak;
  * IS-5000 log p(x) over the test images (IWAE architecture): seconds, images/s,
    compiled temporary memory for k = 5,000 and 50,000, and the process peak RSS;
  * compile seconds of the train epoch and of the IS evaluator;
  * the full schedule's epoch (iwae_1layer.py: 784-200-200-50, batch 20, 50k images)
    with each training generator (train.rng_impl: threefry2x32, rbg, unsafe_rbg),
    and with XLA's CPU threading off (a child process started with
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"),
    interleaved, as speed-ups over the default;
  * seconds per epoch of each IWAE-table cell (1 and 2 stochastic layers, k = 1, 5,
    50, reparam and DReG), timed on 10k training images and scaled to 50k, with the
    full 3,280-pass schedule's projected hours;
  * the VampPrior (K = 500) against N(0, I) on make run's model, as a ratio.
The IWAE-table cases train through experiments.factory.build, the code of a real run.
Results are printed and written to runs/bench/bench.json.

``--smoke`` runs the same code at toy size (512 random images, one
round, IS-50, a 256^3 matmul, no PyTorch) and writes runs/bench/smoke.json: it
checks that the benchmark runs, its numbers mean nothing. tests/test_bench.py
runs it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from experiments import cli, factory
from experiments.configs import default, iwae_1layer, iwae_2layer
from experiments.workdir import write_json
from vae_jax.data import binarize_once, load_mnist
from vae_jax.evaluate import make_log_p_x
from vae_jax.host import map_dataset
from vae_jax.models import make_vae
from vae_jax.objectives import make_elbo
from vae_jax.train import init_train_state, make_amortised_step, make_train_epoch

ROOT = Path(__file__).resolve().parents[1]
TORCH_VENV = ROOT / ".venv-torch"  # made by `make install-torch`, which `make bench` runs
TORCH_PIN = "torch==2.13.0"  # the Makefile's TORCH_PIN; tests/test_bench.py checks they agree
TORCH_STAMP = ".installed"  # written into the venv by the Makefile once the install succeeded


class Sizes(NamedTuple):
    """How big each measurement is; ``SMOKE`` runs every code path at toy size."""

    train_images: int | None  # None: all 50k MNIST training images
    matmul_n: int
    is_num_samples: int
    is_chunk_size: int
    is_batch_size: int
    temp_num_samples: tuple[int, int]  # the IS sample counts whose memory is compared
    compiler_options: dict | None = None  # XLA's, for every compile of the benchmark


FULL = Sizes(None, 2048, 5000, 625, 4, (5_000, 50_000))  # IS: experiments/configs/base.py
# Compiling is most of a smoke run; XLA's quick settings make it a few times faster
# (the same programs, less optimised machine code: smoke timings mean nothing anyway).
QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
SMOKE = Sizes(512, 256, 50, 25, 4, (50, 500), QUICK_COMPILE)
SMOKE_TEST_IMAGES = 8


def reference_argv(python: Path, script: Path, *args: str) -> list[str]:
    """The command that starts a reference script in another interpreter.

    ``-I`` (isolated mode) keeps the script's directory, the cwd, PYTHONPATH and
    the user site off sys.path: the reference imports only its own venv's
    packages, never a file of ours (experiments/profile.py once shadowed the
    stdlib's ``profile`` inside torch's process).
    """
    return [str(python), "-I", str(script), *args]


def torch_python(venv: Path) -> Path:
    """The reference venv's interpreter, or a one-line exit saying how to make it."""
    python = venv / "bin" / "python"
    if not (python.exists() and (venv / TORCH_STAMP).exists()):
        raise SystemExit(
            f"error: no PyTorch reference venv at {venv} ({TORCH_PIN}): run `make bench`, "
            "which installs it (`make install-torch`), or pass --no-torch"
        )
    return python


def compile_jit(fn, args, compiler_options: dict | None, **jit_kwargs):
    """``jax.jit(fn)`` compiled ahead of time for ``args``."""
    return jax.jit(fn, **jit_kwargs).lower(*args).compile(compiler_options)


def matmul_peak_gflops(rounds: int, n: int, compiler_options: dict | None = None) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n))
    matmul = compile_jit(lambda a: a @ a, (a,), compiler_options)
    matmul(a).block_until_ready()
    times = []
    for _ in range(rounds * 3):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / np.median(times) / 1e9


class Epoch:
    """One compiled training epoch of ``step_fn`` from ``state``; ``run()`` times one."""

    def __init__(self, step_fn, state, key, x_train, batch_size, dynamic, compiler_options):
        epoch_fn = make_train_epoch(
            step_fn, batch_size, x_train.shape[0], dynamic_binarization=dynamic
        )
        self.state, self.key, self.x, self.epoch = state, key, jnp.asarray(x_train), 0
        start = time.perf_counter()
        args = (self.state, self.key, jnp.asarray(0, jnp.int32), self.x)
        self.fn = compile_jit(epoch_fn, args, compiler_options, donate_argnums=0)
        self.compile_seconds = time.perf_counter() - start

    def run(self) -> float:
        start = time.perf_counter()
        self.state, metrics = self.fn(
            self.state, self.key, jnp.asarray(self.epoch, jnp.int32), self.x
        )
        float(metrics["loss"])  # blocks until the epoch is done
        self.epoch += 1
        return time.perf_counter() - start


def mlp_epoch(
    x_train, hidden, latent, activation, batch_size, dynamic, compiler_options=None, optimizer=None
):
    """The ELBO epoch of a 784-hidden-latent MLP VAE with ``optimizer`` (default
    Adam(1e-3)), as a timed :class:`Epoch`."""
    model = make_vae(784, latent, hidden, activation=activation)
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    # One compiled init, not dozens of eagerly compiled initialiser ops: not timed,
    # but it would be most of a --smoke run.
    key = jax.random.key(0)
    init_fn = compile_jit(
        lambda key: init_train_state(key, model, optimizer), (key,), compiler_options
    )
    step_fn = make_amortised_step(make_elbo(model), optimizer)
    return Epoch(
        step_fn, init_fn(key), jax.random.key(1), x_train, batch_size, dynamic, compiler_options
    )


def config_epoch(config, x_train, compiler_options=None) -> Epoch:
    """One epoch of a config's training (experiments.factory.build, as a real run)."""
    run = factory.build(config, x_train)
    batch_size, key = int(config.train.batch_size), factory.train_key(config)
    return Epoch(run.step_fn, run.state, key, x_train, batch_size, True, compiler_options)


class Served:
    """An epoch timed in another process: a line ``epoch`` on its stdin, one JSON line
    back on its stdout (its first line, ``info``, is sent when it is ready)."""

    name = "the benchmark's child process"

    def __init__(self, argv: list[str], **popen_kwargs):
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **popen_kwargs
        )
        self.info = self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:  # its traceback went to our stderr
            self.close()
            raise SystemExit(
                f"error: {self.name} exited (status {self.proc.returncode}); "
                "its error is printed above"
            )
        return json.loads(line)

    def run(self) -> float:
        with contextlib.suppress(BrokenPipeError):  # it died: _reply says so in one line
            self.proc.stdin.write("epoch\n")
            self.proc.stdin.flush()
        return self._reply()["seconds"]

    def close(self):
        with contextlib.suppress(BrokenPipeError):  # closing it again is a no-op
            self.proc.stdin.close()
        self.proc.wait()
        self.proc.stdout.close()


class TorchEpoch(Served):
    """A PyTorch reference loop (experiments/bench_torch.py) in .venv-torch, served over
    stdin; its first epoch (allocator warm-up, and torch.compile's compile) is run
    before any is timed, as a user discards a loop's first epoch."""

    name = "the PyTorch reference"

    def __init__(self, python: Path, x_train: np.ndarray, *options: str, warm_up: bool = True):
        self.tmp = _saved(x_train)
        try:
            super().__init__(torch_argv(python, self.tmp, *options))
            want = TORCH_PIN.split("==")[1]
            if not self.info["torch"].startswith(want):
                raise SystemExit(
                    f"error: {python} has torch {self.info['torch']}, the benchmark pins "
                    f"{TORCH_PIN}: remove {python.parents[1]} and run `make bench` again"
                )
            if warm_up:
                self.run()
        except BaseException:  # a wrong pin, a failed start or warm-up, Ctrl-C: leave nothing
            if hasattr(self, "proc"):
                self.close()
            else:
                Path(self.tmp).unlink(missing_ok=True)
            raise

    def close(self):
        super().close()
        Path(self.tmp).unlink(missing_ok=True)


def _saved(x: np.ndarray) -> str:
    """``x`` in a temporary .npy file, for a reference process to load."""
    tmp = tempfile.NamedTemporaryFile(suffix=".npy", delete=False)
    tmp.close()
    np.save(tmp.name, x)
    return tmp.name


def torch_argv(python: Path, data: str, *options: str) -> list[str]:
    return reference_argv(python, ROOT / "experiments" / "bench_torch.py", data, *options)


# A standalone reference epoch slower than this is a hung or starved process, not a
# measurement: the slowest seen, PyTorch's examples loop beside a training run, took 233 s.
STANDALONE_EPOCH_TIMEOUT_S = 600


def torch_standalone(python: Path, x_train: np.ndarray, rounds: int, *options: str) -> float:
    """Median seconds of epochs 2 .. rounds + 1 of a reference loop run the way a user
    times one: a single process, epochs back to back, nothing else in between."""
    data = _saved(x_train)
    timeout = STANDALONE_EPOCH_TIMEOUT_S * (rounds + 1)
    try:
        argv = torch_argv(python, data, *options, "--standalone", str(rounds + 1))
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # subprocess.run has killed it
        raise SystemExit(
            f"error: the PyTorch reference ({' '.join(options)}) ran past {timeout} s "
            f"for {rounds + 1} epochs; it needs a machine with nothing else running"
        ) from None
    finally:
        Path(data).unlink(missing_ok=True)
    if result.returncode != 0:
        raise SystemExit(
            f"error: the PyTorch reference exited (status {result.returncode}): "
            + (result.stderr.strip().splitlines() or [""])[-1]
        )
    lines = [json.loads(line) for line in result.stdout.splitlines()[1:]]
    return float(np.median([line["seconds"] for line in lines[1:]]))


# The PyTorch comparison: each model in two loop styles (experiments/bench_torch.py's
# docstring). The IWAE table's step is timed on the first CELL_IMAGES training images and
# scaled to the 50k epoch, like the cells below.
# bench_torch.py's CHANGES (tests/test_bench.py checks they agree): what its fast loop
# changes in the examples loop, each measurable alone (speed_profile torch-loop-parts).
TORCH_CHANGES = ("index_batches", "fused_loss", "one_sync", "fused_adam")
TORCH_LOOPS = {
    "examples": ("--loop", "examples"),
    "fast": ("--loop", "fast"),
    "fast_compiled": ("--loop", "fast", "--compile"),
    "fast_1thread": ("--loop", "fast", "--threads", "1"),
}
TORCH_MODELS = {
    # name: (bench_torch.py options, the vae_jax case timed against them)
    "vae400": (("--model", "vae400"), "vae400"),
    "iwae_k1": (("--model", "iwae", "--k", "1"), "1layer_k1"),
    "iwae_k5": (("--model", "iwae", "--k", "5"), "1layer_iwae_k5"),
}


def vae400_epoch(x_train, options) -> Epoch:
    """examples/vae's model and training in vae_jax (grey values as targets)."""
    return mlp_epoch(x_train, (400,), 20, "relu", 128, False, options)


def bench_pytorch(x_train: np.ndarray, python: Path, rounds: int, sizes: Sizes) -> dict:
    """vae_jax against every loop of TORCH_LOOPS, per model: interleaved epochs (the
    same load for all), and each PyTorch loop also standalone. For examples/vae's
    model each loop is also served with nothing in between (an idle partner), which
    separates the harness from the interleaving. The headline ratio is vae_jax / the
    fastest PyTorch time of any loop, interleaved or standalone; ``pytorch_threads``
    is torch's default thread count (the 1-thread loop sets its own)."""
    options, report = sizes.compiler_options, {}
    for model, (model_options, jax_case) in TORCH_MODELS.items():
        if model == "vae400":
            x, scale, jax_epoch = x_train, 1.0, vae400_epoch(x_train, options)
            report["train_compile_seconds"] = jax_epoch.compile_seconds
        else:
            x = x_train[:CELL_IMAGES]
            scale = x_train.shape[0] / x.shape[0]
            config = case_config({**AB_CASES, **CELL_CASES}[jax_case], "iwae", False)
            jax_epoch = config_epoch(config, x, options)
        arms = {"vae_jax": jax_epoch}
        try:
            for loop, loop_options in TORCH_LOOPS.items():
                arms[f"pytorch_{loop}"] = TorchEpoch(python, x, *model_options, *loop_options)
            seconds = interleaved(arms, rounds, f"{model}: vae_jax vs PyTorch")
            if model == "vae400":
                for loop in TORCH_LOOPS:
                    alone = interleaved({loop: arms[f"pytorch_{loop}"]}, rounds, "served alone")
                    report[f"pytorch_{model}_{loop}_served_alone_epoch_seconds"] = alone[loop]
        finally:
            for name, arm in arms.items():
                if name != "vae_jax":
                    arm.close()
        report[f"vae_jax_{model}_epoch_seconds"] = seconds["vae_jax"] * scale
        pytorch = {}
        for loop, loop_options in TORCH_LOOPS.items():
            pytorch[f"{loop}_interleaved"] = seconds[f"pytorch_{loop}"] * scale
            standalone = torch_standalone(python, x, rounds, *model_options, *loop_options)
            pytorch[f"{loop}_standalone"] = standalone * scale
        for name, value in pytorch.items():
            report[f"pytorch_{model}_{name}_epoch_seconds"] = value
        fastest = min(pytorch, key=pytorch.get)
        report[f"pytorch_{model}_fastest"] = fastest
        report[f"ratio_vae_jax_over_pytorch_fastest_{model}"] = (
            report[f"vae_jax_{model}_epoch_seconds"] / pytorch[fastest]
        )
        report[f"ratio_vae_jax_over_pytorch_examples_{model}"] = (
            seconds["vae_jax"] / seconds["pytorch_examples"]
        )
    report["pytorch_threads"] = arms["pytorch_examples"].info["threads"]
    report["pytorch_version"] = arms["pytorch_examples"].info["torch"]
    return report


def bench_is(x_test_bits, sizes: Sizes) -> dict:
    model = make_vae(784, 50, (200, 200))
    key = jax.random.key(2)
    theta, phi = compile_jit(model.init, (key,), sizes.compiler_options)(jax.random.key(0))
    batch_size = sizes.is_batch_size
    x0, i0 = jnp.asarray(x_test_bits[:batch_size]), jnp.arange(batch_size)

    @functools.cache  # one compile per sample count (IS-S is one of the compared ones)
    def compile_for(k):
        log_p_x_fn = make_log_p_x(model, k, sizes.is_chunk_size)
        return compile_jit(log_p_x_fn, (key, theta, phi, x0, i0), sizes.compiler_options)

    start = time.perf_counter()
    fn = compile_for(sizes.is_num_samples)
    compile_seconds = time.perf_counter() - start
    k_small, k_large = sizes.temp_num_samples
    temp = {k: compile_for(k).memory_analysis().temp_size_in_bytes for k in (k_small, k_large)}
    start = time.perf_counter()
    log_p_x = map_dataset(fn, key, theta, phi, x_test_bits, batch_size)
    seconds = time.perf_counter() - start
    assert np.all(np.isfinite(log_p_x))
    return {
        "is_num_samples": sizes.is_num_samples,
        "is_examples": int(x_test_bits.shape[0]),
        "is_seconds": seconds,
        "is_images_per_second": x_test_bits.shape[0] / seconds,
        "is_seconds_per_10k_images": seconds * 10_000 / x_test_bits.shape[0],
        "is_compile_seconds": compile_seconds,
        f"is_temp_bytes_k{k_small}": temp[k_small],
        f"is_temp_bytes_k{k_large}": temp[k_large],
    }


# 3. The IWAE table's cells, the A/B of the full schedule's epoch, the VampPrior.
# Each case trains with experiments.factory.build, the code `make run` uses.
AB_BASE = "1layer_k1"  # the full schedule's epoch: iwae_1layer.py, batch 20, 50k images
AB_CASES = {
    "1layer_k1": {},
    "1layer_k1_rbg": {"train.rng_impl": "rbg"},
    "1layer_k1_unsafe_rbg": {"train.rng_impl": "unsafe_rbg"},
}
# Per-epoch seconds of each table cell, timed on the first CELL_IMAGES training images
# and scaled to the 50k epoch (an epoch's steps cost alike; compile is not timed).
CELL_IMAGES = 10_000
FULL_SCHEDULE_EPOCHS = 3280
CELL_CASES = {
    "1layer_iwae_k5": {"objective.name": "iwae", "objective.num_samples": 5},
    "1layer_vae_k5": {"objective.num_samples": 5},
    "1layer_iwae_k50": {"objective.name": "iwae", "objective.num_samples": 50},
    "1layer_iwae_k50_dreg": {
        "objective.name": "iwae",
        "objective.num_samples": 50,
        "objective.gradient": "dreg",
    },
    "2layer_k1": {"2layer": True},
    "2layer_iwae_k5": {"2layer": True, "objective.name": "iwae", "objective.num_samples": 5},
    "2layer_iwae_k50": {"2layer": True, "objective.name": "iwae", "objective.num_samples": 50},
}
SMOKE_CELLS = ("1layer_iwae_k50_dreg", "2layer_iwae_k5")
# The VampPrior's epoch against the standard prior's: make run's model, K = 500.
PRIOR_CASES = {
    "standard_prior": {},
    "vampprior_k500": {"model.prior": "vampprior", "model.prior_components": 500},
}


def case_config(overrides: dict, base: str, smoke: bool):
    """A case's config; ``smoke``: toy sizes, every code path in seconds (in this
    process and in a :class:`ChildEpoch` alike)."""
    overrides = dict(overrides)
    two_layers = overrides.pop("2layer", False)
    module = {"default": default, "iwae": iwae_2layer if two_layers else iwae_1layer}[base]
    config = module.get_config()
    config.update_from_flattened_dict(overrides)
    if smoke:
        config.model.hidden_sizes, config.model.latent_dim = (8,), 4
        config.model.top_latent_dim = 3 if config.model.top_latent_dim else 0
        config.model.top_hidden_sizes = (8,)
        config.model.prior_components = min(int(config.model.prior_components), 5)
        config.objective.num_samples = min(int(config.objective.num_samples), 3)
    return config


def bench_cases(x_train: np.ndarray, rounds: int, sizes: Sizes) -> dict:
    """Epoch seconds of every case; speed-ups and the VampPrior's cost as ratios."""
    options = sizes.compiler_options
    smoke = sizes.train_images is not None

    def epochs(cases, base, x):
        return {
            name: config_epoch(case_config(overrides, base, smoke), x, options)
            for name, overrides in cases.items()
        }

    ab_cases, cell_cases = AB_CASES, CELL_CASES
    if smoke:  # one case per code path: compiling is most of a smoke run
        ab_cases = {name: AB_CASES[name] for name in (AB_BASE, "1layer_k1_rbg")}
        cell_cases = {name: CELL_CASES[name] for name in SMOKE_CELLS}
    report = {}
    ab_epochs = epochs(ab_cases, "iwae", x_train)
    ab_epochs[SINGLE_THREAD_CASE] = ChildEpoch(AB_BASE, SINGLE_THREAD_XLA_FLAGS, smoke)
    try:
        ab = interleaved(ab_epochs, rounds, "A/B")
    finally:
        ab_epochs[SINGLE_THREAD_CASE].close()
    for name, seconds in ab.items():
        report[f"epoch_seconds_{name}"] = seconds
        if name != AB_BASE:
            report[f"speedup_{name}_over_{AB_BASE}"] = ab[AB_BASE] / seconds
    cell_x = x_train[:CELL_IMAGES]
    scale = x_train.shape[0] / cell_x.shape[0]
    cells = interleaved(epochs(cell_cases, "iwae", cell_x), rounds, "cells")
    for name, seconds in cells.items():
        report[f"epoch_seconds_{name}"] = seconds * scale
        report[f"full_schedule_hours_{name}"] = seconds * scale * FULL_SCHEDULE_EPOCHS / 3600
    report[f"full_schedule_hours_{AB_BASE}"] = ab[AB_BASE] * FULL_SCHEDULE_EPOCHS / 3600
    priors = interleaved(epochs(PRIOR_CASES, "default", x_train), rounds, "priors")
    report.update({f"epoch_seconds_{name}": seconds for name, seconds in priors.items()})
    report["ratio_vampprior_over_standard"] = priors["vampprior_k500"] / priors["standard_prior"]
    return report


# XLA reads its flags once, when a process starts JAX: the single-threaded case runs
# in a child process (`--serve-case`), interleaved with this process's epochs.
SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
SINGLE_THREAD_CASE = "1layer_k1_single_thread"


class ChildEpoch(Served):
    """An A/B case's epoch in a child process started with other XLA flags."""

    def __init__(self, case: str, xla_flags: str, smoke: bool):
        argv = [sys.executable, "-m", "experiments.bench", "--serve-case", case]
        # The parent's flags and the arm's: only the arm's flags differ between arms.
        flags = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()
        env = {**os.environ, "XLA_FLAGS": flags}
        super().__init__([*argv, *(["--smoke"] if smoke else [])], cwd=ROOT, env=env)


def serve_case(case: str, smoke: bool) -> None:
    """The child of :class:`ChildEpoch`: one compiled epoch of ``AB_CASES[case]``, timed
    on request (a line ``epoch`` on stdin), each answer one JSON line on stdout."""
    sizes = SMOKE if smoke else FULL
    x_train = _train_images(sizes, smoke)
    config = case_config(AB_CASES[case], "iwae", smoke)  # the parent's case, same sizes
    epoch = config_epoch(config, x_train, sizes.compiler_options)
    print(json.dumps({"compile_seconds": epoch.compile_seconds}), flush=True)
    for line in sys.stdin:
        if line.strip() == "epoch":
            print(json.dumps({"seconds": epoch.run()}), flush=True)


def _train_images(sizes: Sizes, smoke: bool) -> np.ndarray:
    if smoke:  # random grey images: the code paths, not MNIST's loading, are the point
        return np.random.default_rng(0).random((sizes.train_images, 784), dtype=np.float32)
    return load_mnist().train


def interleaved(epochs: dict, rounds: int, label: str) -> dict:
    """Median seconds per case, one epoch of each case per round, in turn."""
    times = {name: [] for name in epochs}
    for r in range(rounds):
        for name, epoch in epochs.items():
            times[name].append(epoch.run())
        print(
            f"{label} round {r + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()),
            flush=True,
        )
    return {name: float(np.median(t)) for name, t in times.items()}


def _define(values: flags.FlagValues) -> None:
    cli.flag(values, "rounds", 5, "timed epochs per measurement", lower_bound=1)
    cli.flag(values, "is-examples", 10_000, "test images scored by IS-5000")
    cli.flag(values, "no-torch", False, "skip the PyTorch reference")
    cli.flag(values, "only", None, "run one part: pytorch (the PyTorch comparison alone)")
    cli.flag(values, "smoke", False, "toy sizes, one round, no PyTorch: checks that it runs")
    cli.flag(values, "out", None, "JSON report (default runs/bench/bench.json or smoke.json)")
    cli.flag(values, "torch-venv", str(TORCH_VENV), "the reference venv")
    cli.flag(values, "serve-case", None, "internal: a child's A/B case")


def parse_args(argv: list[str] | None) -> SimpleNamespace:
    args = cli.parse(argv, _define, __doc__, hidden=["torch-venv", "serve-case"])
    if not 1 <= args.is_examples <= 10_000:
        raise cli.UserError(
            f"--is-examples must be in [1, 10000] (the test set), got {args.is_examples}"
        )
    args.torch_venv = Path(args.torch_venv)
    if args.only not in (None, "pytorch"):
        raise cli.UserError(f"unknown --only {args.only!r}; the one part is 'pytorch'")
    if args.smoke:
        args.rounds, args.no_torch = 1, True
    if args.only == "pytorch" and args.no_torch:
        raise cli.UserError("--only pytorch needs the reference: drop --no-torch (or --smoke)")
    if args.out is None:
        args.out = "runs/bench/smoke.json" if args.smoke else "runs/bench/bench.json"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.serve_case:
        return serve_case(args.serve_case, args.smoke)
    sizes = SMOKE if args.smoke else FULL
    python = None if args.no_torch else torch_python(args.torch_venv)  # fail before any work
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    x_train = _train_images(sizes, args.smoke)
    if args.smoke:
        x_test = np.random.default_rng(1).random((SMOKE_TEST_IMAGES, 784), dtype=np.float32)
    else:
        x_test = load_mnist().test[: args.is_examples]
    n_train, options = x_train.shape[0], sizes.compiler_options
    report = {
        "smoke": args.smoke,
        "jax_version": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "rounds": args.rounds,
        "train_images": n_train,
        "matmul_peak_gflops": matmul_peak_gflops(args.rounds, sizes.matmul_n, options),
    }

    # 1. vae_jax vs PyTorch: examples/vae's model (784-400-20) and the IWAE table's
    # step, each against PyTorch's examples loop and its fastest idiomatic loop.
    if python is not None:
        report.update(bench_pytorch(x_train, python, args.rounds, sizes))
        seconds = report["vae_jax_vae400_epoch_seconds"]
    else:
        epoch = vae400_epoch(x_train, options)
        report["train_compile_seconds"] = epoch.compile_seconds
        seconds = interleaved({"vae_jax": epoch}, args.rounds, "vae400")["vae_jax"]
    report["vae_784_400_20_b128_epoch_seconds"] = seconds
    report["vae_784_400_20_b128_images_per_second"] = n_train / seconds
    if args.only == "pytorch":
        return _write(report, out)

    # 2. The IWAE architecture at batch 100: achieved GFLOP/s against the peak.
    iwae_epoch = mlp_epoch(x_train, (200, 200), 50, "tanh", 100, True, options)
    iwae_seconds = interleaved({"iwae_arch": iwae_epoch}, args.rounds, "IWAE arch")["iwae_arch"]
    # Multiply-accumulates of one forward pass (the encoder's two heads: 200 x 100).
    layers = [(784, 200), (200, 200), (200, 100), (50, 200), (200, 200), (200, 784)]
    macs = sum(a * b for a, b in layers)
    flops = 6 * macs * n_train  # forward 2, backward 4 FLOPs per multiply-accumulate
    gflops = flops / iwae_seconds / 1e9
    report["iwae_arch_b100_epoch_seconds"] = iwae_seconds
    report["iwae_arch_b100_gflops"] = gflops
    report["iwae_arch_fraction_of_peak"] = gflops / report["matmul_peak_gflops"]

    # 3. The full schedule's epoch (iwae_1layer.py, batch 20, 50k images): its random
    # generators A/B, interleaved; the table's cells; the VampPrior against N(0, I).
    report.update(bench_cases(x_train, args.rounds, sizes))

    # 4. IS log p(x) over the test set (IS-5000 unless --smoke).
    report.update(bench_is(binarize_once(0, x_test), sizes))
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    return _write(report, out)


def _write(report: dict, out: Path) -> dict:
    write_json(out, report)
    width = max(map(len, report))
    for name, value in report.items():
        text = f"{value:.3f}" if isinstance(value, float) else value
        print(f"{name:<{width}}  {text}")
    print(f"written to {out}")
    return report


if __name__ == "__main__":
    cli.run(main)

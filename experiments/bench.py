"""`make bench`: speed and memory of vae_jax against references measured in the same run.

    python -m experiments.bench [--rounds 5] [--is-examples 10000] [--no-torch]

Reports medians over ``--rounds`` of:
  * this machine's dense float32 matmul peak (2048^3), the yardstick for GFLOP/s;
  * one training epoch (50k images) of the 784-400-20 ReLU MLP VAE at batch 128,
    vae_jax vs PyTorch's examples/vae loop (experiments/bench_torch.py, run in
    .venv-torch with torch==2.13.0), epochs interleaved so both see the same
    machine load; the ratio is vae_jax time / PyTorch time;
  * one epoch of the IWAE 1-layer architecture (784-200-200-50) at batch 100,
    as achieved GFLOP/s against the matmul peak;
  * IS-5000 log p(x) over the test images (IWAE architecture): seconds, images/s,
    compiled temporary memory for k = 5,000 and 50,000, and the process peak RSS;
  * compile seconds of the train epoch and of the IS evaluator.
Results are printed and written to runs/bench/bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax.data import binarize_once, load_mnist
from vae_jax.evaluate import make_log_p_x, map_dataset
from vae_jax.models import make_vae
from vae_jax.objectives import make_elbo
from vae_jax.train import init_train_state, make_train_epoch

ROOT = Path(__file__).resolve().parents[1]
TORCH_VENV = ROOT / ".venv-torch"
TORCH_PIN = "torch==2.13.0"


def matmul_peak_gflops(rounds: int, n: int = 2048) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n))
    matmul = jax.jit(lambda a: a @ a)
    matmul(a).block_until_ready()
    times = []
    for _ in range(rounds * 3):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / np.median(times) / 1e9


def training_macs_per_example(sizes_encoder, sizes_decoder) -> int:
    """Multiply-accumulates of one forward pass (encoder heads counted twice)."""
    macs = 0
    for sizes in (sizes_encoder, sizes_decoder):
        macs += sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))
    return macs


class JaxEpoch:
    """A compiled vae_jax epoch; ``run()`` times one epoch."""

    def __init__(self, x_train, hidden, latent, activation, batch_size, dynamic):
        model = make_vae(784, latent, hidden, activation=activation)
        optimizer = optax.adam(1e-3)
        self.state = init_train_state(jax.random.key(0), model, optimizer)
        epoch_fn = make_train_epoch(
            lambda beta: make_elbo(model, beta=beta),
            optimizer,
            batch_size,
            x_train.shape[0],
            dynamic_binarization=dynamic,
        )
        self.x = jnp.asarray(x_train)
        self.key = jax.random.key(1)
        self.epoch = 0
        start = time.perf_counter()
        args = (self.state, self.key, jnp.asarray(0, jnp.int32), self.x)
        self.fn = jax.jit(epoch_fn, donate_argnums=0).lower(*args).compile()
        self.compile_seconds = time.perf_counter() - start

    def run(self) -> tuple[float, float]:
        start = time.perf_counter()
        self.state, metrics = self.fn(
            self.state, self.key, jnp.asarray(self.epoch, jnp.int32), self.x
        )
        loss = float(metrics["loss"])  # blocks until the epoch is done
        self.epoch += 1
        return time.perf_counter() - start, loss


class TorchEpoch:
    """The PyTorch reference in its own process, one epoch per request."""

    def __init__(self, x_train: np.ndarray):
        python = TORCH_VENV / "bin" / "python"
        if not python.exists():
            print(f"installing {TORCH_PIN} (CPU) into {TORCH_VENV} for the reference ...")
            subprocess.run([sys.executable, "-m", "venv", str(TORCH_VENV)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", TORCH_PIN, "numpy"], check=True
            )
        self.tmp = tempfile.NamedTemporaryFile(suffix=".npy", delete=False)
        np.save(self.tmp.name, x_train)
        self.proc = subprocess.Popen(
            [str(python), str(ROOT / "experiments" / "bench_torch.py"), self.tmp.name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = json.loads(self.proc.stdout.readline())

    def run(self) -> tuple[float, float]:
        self.proc.stdin.write("epoch\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return reply["seconds"], reply["loss"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()
        os.unlink(self.tmp.name)


def bench_is(x_test_bits, num_samples, chunk_size, batch_size) -> dict:
    model = make_vae(784, 50, (200, 200))
    theta, phi = model.init(jax.random.key(0))
    key = jax.random.key(2)
    x0, i0 = jnp.asarray(x_test_bits[:batch_size]), jnp.arange(batch_size)

    def compiled(k):
        return jax.jit(make_log_p_x(model, k, chunk_size)).lower(key, theta, phi, x0, i0).compile()

    start = time.perf_counter()
    fn = compiled(num_samples)
    compile_seconds = time.perf_counter() - start
    temp = {k: compiled(k).memory_analysis().temp_size_in_bytes for k in (5_000, 50_000)}
    start = time.perf_counter()
    log_p_x = map_dataset(fn, key, theta, phi, x_test_bits, batch_size)
    seconds = time.perf_counter() - start
    assert np.all(np.isfinite(log_p_x))
    return {
        "is_num_samples": num_samples,
        "is_examples": int(x_test_bits.shape[0]),
        "is_seconds": seconds,
        "is_images_per_second": x_test_bits.shape[0] / seconds,
        "is_seconds_per_10k_images": seconds * 10_000 / x_test_bits.shape[0],
        "is_compile_seconds": compile_seconds,
        "is_temp_bytes_k5000": temp[5_000],
        "is_temp_bytes_k50000": temp[50_000],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--is-examples", type=int, default=10_000)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", default="runs/bench/bench.json")
    args = parser.parse_args()

    splits = load_mnist()
    report = {
        "jax_version": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "rounds": args.rounds,
    }
    report["matmul_peak_gflops"] = matmul_peak_gflops(args.rounds)

    # 1. vae_jax vs PyTorch, same model, same data (grey values, as examples/vae), interleaved.
    jax_epoch = JaxEpoch(splits.train, (400,), 20, "relu", 128, dynamic=False)
    report["train_compile_seconds"] = jax_epoch.compile_seconds
    torch_epoch = None if args.no_torch else TorchEpoch(splits.train)
    jax_times, torch_times = [], []
    for r in range(args.rounds):
        jax_times.append(jax_epoch.run()[0])
        if torch_epoch:
            torch_times.append(torch_epoch.run()[0])
        print(
            f"round {r + 1}: vae_jax {jax_times[-1]:.2f} s"
            + (f", pytorch {torch_times[-1]:.2f} s" if torch_times else ""),
            flush=True,
        )
    report["vae_784_400_20_b128_epoch_seconds"] = float(np.median(jax_times))
    report["vae_784_400_20_b128_images_per_second"] = 50_000 / float(np.median(jax_times))
    if torch_epoch:
        report["pytorch_threads"] = torch_epoch.info["threads"]
        report["pytorch_version"] = torch_epoch.info["torch"]
        torch_epoch.close()
        report["pytorch_epoch_seconds"] = float(np.median(torch_times))
        report["ratio_vae_jax_over_pytorch"] = (
            report["vae_784_400_20_b128_epoch_seconds"] / report["pytorch_epoch_seconds"]
        )

    # 2. The IWAE architecture at batch 100: achieved GFLOP/s against the peak.
    iwae_epoch = JaxEpoch(splits.train, (200, 200), 50, "tanh", 100, dynamic=True)
    iwae_times = [iwae_epoch.run()[0] for _ in range(args.rounds)]
    macs = training_macs_per_example([784, 200, 200, 100], [50, 200, 200, 784])
    flops = 6 * macs * 50_000  # forward 2, backward 4 FLOPs per multiply-accumulate
    report["iwae_arch_b100_epoch_seconds"] = float(np.median(iwae_times))
    report["iwae_arch_b100_gflops"] = flops / float(np.median(iwae_times)) / 1e9
    report["iwae_arch_fraction_of_peak"] = (
        report["iwae_arch_b100_gflops"] / report["matmul_peak_gflops"]
    )

    # 3. IS-5000 over the test set.
    bits = binarize_once(0, splits.test[: args.is_examples])
    report.update(bench_is(bits, 5000, 625, 4))  # the defaults of experiments/configs/base.py
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    width = max(map(len, report))
    for name, value in report.items():
        print(
            f"{name:<{width}}  {value:.3f}"
            if isinstance(value, float)
            else f"{name:<{width}}  {value}"
        )


if __name__ == "__main__":
    main()

"""Train and evaluate one config; resumable.

    python -m experiments.main --config experiments/configs/default.py --workdir runs/default
    python -m experiments.main --config experiments/configs/default.py:smoke --workdir /tmp/s
    python -m experiments.main --config experiments/configs/iwae_1layer.py \
        --config.train.epochs=121 --workdir runs/iwae

The workdir holds ``config.json``, ``metrics.jsonl`` (one line per epoch),
``checkpoint.msgpack`` (written atomically after every epoch), the fixed
binarised test bits ``test_bits.npy``, ``results.json`` and PNG plots.
Re-running the same command resumes from the last completed epoch and gives
the same final state as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm.auto import tqdm

from experiments import cli, factory
from experiments.cli import UserError
from experiments.configs.base import base_config
from vae_jax import checkpoint, parallel
from vae_jax.data import binarize_once
from vae_jax.evaluate import (
    Stream,
    active_units,
    aggregate_kl_record,
    aggregate_posterior_moments,
    make_aggregate_kl,
    make_elbo_terms,
    make_log_p_x,
    make_posterior_moment_sums,
    map_dataset,
    stream_key,
)
from vae_jax.local import fit_local_in_batches, make_fit_local, prior_phi
from vae_jax.models import num_params
from vae_jax.objectives import phi_axis
from vae_jax.realign import with_log_scale_shift
from vae_jax.train import init_train_state, make_train_epoch, to_host

CHECKPOINT = "checkpoint.msgpack"
CONFIG_RECORD = "config.json"
METRICS = "metrics.jsonl"
# What a run writes before its first epoch ends. A workdir whose run completed no
# epoch takes any config; these files belong to the old one and are replaced.
BEFORE_FIRST_EPOCH = ("train_bits.npy", "valid_bits.npy", "test_bits.npy", METRICS)
# Keys that may differ between the run in a workdir and the command resuming it.
RESUMABLE_CHANGES = ("train.epochs", "eval.plots")


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _write_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (temp file, then an atomic rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def check_workdir_path(workdir: Path) -> None:
    """Refuse a --workdir that cannot hold a run: a file, or under one, or read-only."""
    if workdir.exists() and not workdir.is_dir():
        raise UserError(
            f"--workdir {workdir} is a file, not a directory; pass a directory path "
            "(it is created if it does not exist)"
        )
    existing = workdir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--workdir {workdir} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--workdir {workdir}: {existing} is not writable")


def read_config_record(workdir: Path) -> dict | None:
    """The config.json of the run in ``workdir`` (None if there is none)."""
    path = workdir / CONFIG_RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        record, reason = None, f"{type(error).__name__}: {error}"
    else:
        reason = "it holds no JSON object"
    if not isinstance(record, dict):
        raise UserError(
            f"{path} is damaged ({reason}); it records the config of the run in {workdir}. "
            "Nothing was changed: put back a good copy of it, or use a new --workdir"
        )
    return record


def check_same_run(workdir: Path, stored: dict | None, config: ml_collections.ConfigDict) -> None:
    """Refuse to resume a run of a different config: only RESUMABLE_CHANGES may differ."""
    if stored is None:
        raise UserError(
            f"{workdir / CHECKPOINT} exists but {workdir / CONFIG_RECORD} does not, so the "
            "config that trained it is unknown: put config.json back, or use a new --workdir"
        )
    stored = _flatten(stored)
    flat = _flatten(json.loads(config.to_json()))
    # Keys added to the configs after a run was started did not exist for it;
    # each new key defaults to the behaviour from before it existed.
    added = sorted(set(flat) - set(stored))
    if added:
        print(f"{workdir}: config keys newer than this run, at defaults: {added}", file=sys.stderr)
    differing = sorted(
        k
        for k in set(stored) | set(flat)
        if k not in RESUMABLE_CHANGES and k not in added and stored.get(k) != flat.get(k)
    )
    if differing:
        details = ", ".join(f"{k}: {stored.get(k)!r} -> {flat.get(k)!r}" for k in differing)
        raise UserError(
            f"{workdir} holds a run of a different config ({details}); "
            "use a new --workdir or delete the old run"
        )


def record_config(workdir: Path, config: ml_collections.ConfigDict, completed: int) -> None:
    """Write config.json: the first write of a command, after every check has passed."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not completed:
        # Another config may have started here and stopped before its first epoch:
        # its fixed bits could be of another seed.
        for name in BEFORE_FIRST_EPOCH:
            (workdir / name).unlink(missing_ok=True)
    _write_text(workdir / CONFIG_RECORD, json.dumps(json.loads(config.to_json()), indent=2) + "\n")


def _fixed_bits(workdir: Path, name: str, x: np.ndarray, seed: int) -> np.ndarray:
    """Binarise once with a fixed key and keep the bits in the workdir."""
    path = workdir / f"{name}_bits.npy"
    if path.exists():
        try:
            bits = np.load(path)
        except (ValueError, OSError, EOFError):
            bits = None  # damaged: the bits are a function of the seed, so redraw them
        if bits is not None and bits.shape == x.shape:
            return bits
    bits = binarize_once(seed, x)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, bits)
    tmp.replace(path)
    return bits


def test_bits(workdir: Path, config: ml_collections.ConfigDict, splits) -> np.ndarray:
    """The test set every model of this config is scored on (binarised once)."""
    if config.data.binarization == "none":
        return splits.test
    return _fixed_bits(workdir, "test", splits.test, int(config.data.binarization_seed) + 2)


def _read_metrics(path: Path, completed_epochs: int) -> list[dict]:
    """Lines of epochs the checkpoint covers; later ones came from a killed run."""
    if not completed_epochs or not path.exists():
        return []
    advice = (
        "Nothing was changed, and the checkpoint is intact: delete that line (or the whole "
        "file, losing the per-epoch history) and rerun to resume"
    )
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not text ({error}). {advice}") from error
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            epoch = record["epoch"] if isinstance(record, dict) else None
        except json.JSONDecodeError as error:
            raise UserError(f"{path} line {number} is not JSON ({error}). {advice}") from error
        if not isinstance(epoch, int):
            raise UserError(f"{path} line {number} is not an epoch's record. {advice}")
        if epoch <= completed_epochs:
            records.append(record)
    return records


def _write_lines(path: Path, records: list[dict]) -> None:
    _write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def _elbo_summary(terms: dict) -> dict:
    return {k: float(np.mean(terms[k])) for k in ("elbo", "reconstruction", "kl")}


def build_run(config: ml_collections.ConfigDict, num_train_examples: int, data_dim: int):
    """Model, objective, optimiser and a fresh state for ``config`` (one place)."""
    batch_size = int(config.train.batch_size)
    steps_per_epoch = num_train_examples // batch_size
    if steps_per_epoch < 1:
        raise UserError(f"train.batch_size={batch_size} exceeds {num_train_examples} examples")
    try:
        model = factory.build_model(config, data_dim)
        objective_at_beta = factory.build_objective_at_beta(config, model)
        optimizer = factory.build_optimizer(config, steps_per_epoch)
        local_optimizer = factory.build_local_optimizer(config)
        adjustment = factory.build_adjustment(config, model)
    except UserError:
        raise
    except ValueError as error:  # a combination of options the library refuses
        raise UserError(str(error)) from error
    init_key = jax.random.split(jax.random.key(int(config.seed)))[0]
    state = init_train_state(init_key, model, optimizer, local_optimizer, num_train_examples)
    if int(config.train.realign_every):
        # The shift leaf realign writes must exist from step 0: jit fixes the tree.
        phi = with_log_scale_shift(state.phi)
        state = state._replace(phi=phi, opt_state=optimizer.init((state.theta, phi)))
    return (
        model,
        objective_at_beta,
        (optimizer, local_optimizer, adjustment),
        state,
        steps_per_epoch,
    )


def _restore_checkpoint(workdir: Path, state):
    """(completed epochs, state) from the checkpoint in ``workdir``; (0, state) if none."""
    path = workdir / CHECKPOINT
    if not path.exists():
        return 0, state
    try:
        saved = checkpoint.restore(path, {"epoch": 0, "state": state})
    except ValueError as error:
        raise UserError(
            f"{error}. Nothing was changed: put back a good copy of {path.name}, or delete it "
            f"(and {METRICS}) to train this run again from epoch 0, or use a new --workdir"
        ) from error
    return int(saved["epoch"]), saved["state"]


def _merge(config: ml_collections.ConfigDict, stored: dict) -> None:
    for key, value in stored.items():
        if isinstance(value, dict) and key in config:
            _merge(config[key], value)
        else:
            config[key] = tuple(value) if isinstance(value, list) else value


def restore_run(workdir: str | Path):
    """(config, model, state, completed_epochs, splits) of the run saved in ``workdir``."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir {workdir} is a file, not the directory of a run")
    for name in (CONFIG_RECORD, CHECKPOINT):
        if not (workdir / name).exists():
            raise UserError(
                f"{workdir} holds no run: {workdir / name} is missing "
                "(experiments.main trains one there)"
            )
    config = base_config()  # keys newer than the run keep their defaults
    _merge(config, read_config_record(workdir))
    splits = factory.load_data(config)
    model, _, _, state, _ = build_run(config, splits.train.shape[0], splits.train.shape[1])
    completed, state = _restore_checkpoint(workdir, state)
    return config, model, state, completed, splits


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path, stop_after_epoch: int | None = None
) -> dict | None:
    """Train ``config`` in ``workdir`` (resuming if a checkpoint is there), then score it.

    Every check (the whole config, the workdir, the data, the checkpoint and
    metrics of a run being resumed) comes before the first write, so a command
    refused at its start leaves the workdir as it was, and the corrected command
    is accepted. A workdir whose run completed no epoch takes any config.

    Args:
      stop_after_epoch: end the process's work after this epoch, as an
        interruption would (used by the resume test); returns None then.

    Returns:
      The results dict written to ``results.json``.

    Raises:
      UserError: naming the key, file or path at fault, before anything is written.
    """
    start_time = time.time()
    workdir = Path(workdir)
    factory.check_config(config)
    check_workdir_path(workdir)
    if (workdir / CHECKPOINT).exists():
        check_same_run(workdir, read_config_record(workdir), config)
    splits = factory.load_data(config)
    factory.check_splits(config, splits)
    model, objective_at_beta, optimizers, state, steps_per_epoch = build_run(
        config, splits.train.shape[0], splits.train.shape[1]
    )
    optimizer, local_optimizer, (adjust_fn, adjust_every) = optimizers
    batch_size = int(config.train.batch_size)
    # Data parallelism over every device (one device: the same code, a no-op).
    mesh = parallel.data_mesh()
    try:
        parallel.check_divisible(batch_size, mesh.size, "train.batch_size")
        parallel.check_divisible(int(config.eval.batch_size), mesh.size, "eval.batch_size")
        parallel.check_divisible(int(config.eval.is_batch_size), mesh.size, "eval.is_batch_size")
    except ValueError as error:
        raise UserError(str(error)) from error
    completed, state = _restore_checkpoint(workdir, state)
    epochs = int(config.train.epochs)
    if completed > epochs:
        raise UserError(
            f"train.epochs={epochs} is out of range for {workdir}: its checkpoint has completed "
            f"{completed} epochs, and results.json must describe the checkpoint it scores; "
            f"use train.epochs >= {completed}, or a new --workdir for a shorter run "
            f"(experiments.evaluate re-scores this one)"
        )
    metrics_path = workdir / METRICS
    history = _read_metrics(metrics_path, completed)

    # Every check has passed: from here on the workdir is written.
    record_config(workdir, config, completed)
    if completed:
        print(f"resuming {workdir} after epoch {completed}", file=sys.stderr)
    train_key = jax.random.split(jax.random.key(int(config.seed)))[1]
    eval_key = jax.random.key(int(config.eval.seed))
    bits_seed = int(config.data.binarization_seed)
    dynamic = config.data.binarization == "dynamic"
    if config.data.binarization == "static":
        x_train = _fixed_bits(workdir, "train", splits.train, bits_seed)
    else:
        x_train = splits.train
    if config.data.binarization == "none":
        x_valid, x_test = splits.valid, splits.test
    else:
        x_valid = _fixed_bits(workdir, "valid", splits.valid, bits_seed + 1)
        x_test = test_bits(workdir, config, splits)
    state = parallel.replicate(state, mesh)
    _write_lines(metrics_path, history)
    ckpt_path = workdir / CHECKPOINT

    train_epoch = jax.jit(
        make_train_epoch(
            objective_at_beta,
            optimizer,
            batch_size,
            x_train.shape[0],
            dynamic_binarization=dynamic,
            warmup_steps=int(config.objective.warmup_epochs) * steps_per_epoch,
            batch_sharding=parallel.batch_sharding(mesh),
            local_optimizer=local_optimizer,
            adjust_fn=adjust_fn,
            adjust_every=adjust_every,
            adjust_examples=int(config.train.moment_examples),
        ),
        donate_argnums=0,
    )
    elbo_terms = jax.jit(make_elbo_terms(model))
    eval_batch = int(config.eval.batch_size)
    x_train_device = parallel.replicate(jnp.asarray(x_train), mesh)
    epochs = int(config.train.epochs)

    bar = tqdm(
        range(completed, epochs), desc="train", unit="epoch", initial=completed, total=epochs
    )
    for epoch in bar:
        t0 = time.perf_counter()
        state, train_metrics = train_epoch(
            state, train_key, jnp.asarray(epoch, jnp.int32), x_train_device
        )
        train_metrics = to_host(train_metrics)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "step": int(state.step), "seconds": seconds}
        record.update({f"train_{k}": v for k, v in train_metrics.items()})
        every = max(1, int(config.eval.valid_every_epochs))
        # A per-datapoint model has no encoder for validation images: its q's
        # must be fitted, which is done once, for the test set, at the end.
        amortised = local_optimizer is None
        if amortised and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
            valid = map_dataset(elbo_terms, eval_key, state.theta, state.phi, x_valid, eval_batch)
            record.update({f"valid_{k}": v for k, v in _elbo_summary(valid).items()})
        if not np.isfinite(record["train_loss"]):
            raise FloatingPointError(
                f"training loss became {record['train_loss']} in epoch {epoch + 1}; "
                "the last good checkpoint is kept"
            )
        history.append(record)
        _write_lines(metrics_path, history)
        checkpoint.save(ckpt_path, {"epoch": epoch + 1, "state": state})
        bar.set_postfix(loss=f"{record['train_loss']:.2f}", valid_elbo=record.get("valid_elbo"))
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            return None
    bar.close()

    results = evaluate(config, model, state, x_test, eval_key, workdir)
    train_seconds = [m["seconds"] for m in history]
    results.update(
        {
            "epochs": epochs,
            # the first epoch includes compilation; the median is the steady state
            "seconds_per_epoch": float(np.median(train_seconds)) if train_seconds else None,
            "first_epoch_seconds": train_seconds[0] if train_seconds else None,
            "wall_s": time.time() - start_time,
            "valid_elbo": history[-1].get("valid_elbo") if history else None,
        }
    )
    (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(summary_table(results, workdir))
    return results


def evaluate(config, model, state, x_test, eval_key, workdir: Path, num_samples=None) -> dict:
    """Test ELBO terms, IS log p(x) over the whole test set, active units, plots."""
    theta, phi = state.theta, state.phi
    eval_batch = int(config.eval.batch_size)
    t0 = time.perf_counter()
    if phi_axis(phi) == 0:
        # No encoder: fit each test image's Gaussian q (theta fixed), from the prior.
        fit = jax.jit(
            make_fit_local(
                model, int(config.eval.local_fit_steps), config.eval.local_learning_rate, 8
            )
        )
        start = prior_phi(model, theta, x_test.shape[0])
        phi, _ = fit_local_in_batches(
            fit,
            stream_key(eval_key, Stream.FIT_LOCAL),
            theta,
            start,
            x_test,
            eval_batch,
            "fit q(z) on test",
        )
    terms = map_dataset(jax.jit(make_elbo_terms(model)), eval_key, theta, phi, x_test, eval_batch)
    num_samples = int(num_samples or config.eval.num_importance_samples)
    sharding = parallel.batch_sharding(parallel.data_mesh())
    log_p_x_fn = jax.jit(
        make_log_p_x(model, num_samples, int(config.eval.chunk_size), batch_sharding=sharding)
    )
    is_start = time.perf_counter()
    log_p_x = map_dataset(
        log_p_x_fn,
        eval_key,
        theta,
        phi,
        x_test,
        int(config.eval.is_batch_size),
        description=f"IS-{num_samples}",
    )
    is_seconds = time.perf_counter() - is_start
    kl_per_dim = np.mean(terms["kl_per_dim"], axis=0)
    aggregate = aggregate_posterior_moments(
        jax.jit(make_posterior_moment_sums(model)), phi, x_test, eval_batch
    )
    aggregate_kl = None
    if phi_axis(phi) is None:
        num_z = 1000
        estimates = jax.jit(make_aggregate_kl(model, num_z))(
            eval_key, theta, phi, jnp.asarray(x_test)
        )
        aggregate_kl = aggregate_kl_record(estimates, x_test.shape[0], num_z, "test images")
    results = {
        "test_nll": float(-np.mean(log_p_x)),
        "num_importance_samples": num_samples,
        "test_examples": int(x_test.shape[0]),
        "test_elbo": float(np.mean(terms["elbo"])),
        "test_kl": float(np.mean(terms["kl"])),
        "test_reconstruction": float(np.mean(terms["reconstruction"])),
        "active_units": active_units(terms["posterior_mean"]),
        "kl_per_dim": [float(v) for v in kl_per_dim],
        # <q(z|x)>_test: per-dim mean and variance (law of total variance), and the
        # KL from the moment-matched Gaussian to N(0, I) (0 = moments match the prior)
        "aggregate_posterior_mean": [float(v) for v in aggregate["mean"]],
        "aggregate_posterior_variance": [float(v) for v in aggregate["variance"]],
        "aggregate_posterior_kl_to_standard_normal": aggregate[
            "kl_moment_matched_to_standard_normal"
        ],
        # KL(q_agg,N || p_theta(z)), q_agg,N the mixture over the N test images, and
        # its decomposition: average KL = I_N(x; z) + KL(q_agg,N || p), I_N <= log N
        "aggregate_posterior_kl_to_prior_sampled": aggregate_kl,
        "num_params_theta": num_params(theta),
        "num_params_phi": num_params(state.phi),  # the trained phi, not test fits
        "is_seconds": is_seconds,
        "eval_seconds": time.perf_counter() - t0,
        "jax_version": jax.__version__,
        "device": str(jax.devices()[0].device_kind),
        "train_step": int(state.step),
    }
    if config.eval.plots:
        from experiments import plots  # matplotlib only when plotting

        plot_key = stream_key(eval_key, Stream.PLOTS)
        plots.write_all(workdir, model, theta, phi, x_test, plot_key)
        plots.aggregate_posterior(workdir, aggregate, model.prior(theta, state.phi), kl_per_dim)
    return results


def summary_table(results: dict, workdir: Path) -> str:
    rows = [
        (f"test NLL (IS-{results['num_importance_samples']}), nats", results["test_nll"]),
        ("test ELBO, nats", results["test_elbo"]),
        ("test reconstruction E_q log p(x|z)", results["test_reconstruction"]),
        ("test KL(q(z|x) || p(z))", results["test_kl"]),
        ("active units", results["active_units"]),
        (
            "KL(aggregate posterior moments || N(0,I))",
            results["aggregate_posterior_kl_to_standard_normal"],
        ),
        ("seconds per epoch (median)", results["seconds_per_epoch"]),
        ("IS evaluation seconds", results["is_seconds"]),
        ("epochs", results["epochs"]),
        ("test examples", results["test_examples"]),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"results in {workdir}/results.json"]
    for name, value in rows:
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        lines.append(f"  {name:<{width}}  {text:>10}")
    return "\n".join(lines)


def check_overrides(argv: list[str]) -> None:
    """Fail with a clear message on ``--config.<key>=`` naming no config field.

    ml_collections would raise a bare ``AttributeError`` from inside flag
    parsing; this names the key and lists the valid ones beside it. Loading
    the config file here also refuses a missing file or an unknown ``:variant``.
    """
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_arg is None:
        index = argv.index("--config") if "--config" in argv else -1
        config_arg = argv[index + 1] if 0 <= index < len(argv) - 1 else None
    if config_arg is None:
        return
    path, _, arg = config_arg.partition(":")
    config = factory.load_config(path, arg or None)
    for item in argv:
        if not item.startswith("--config."):
            continue
        dotted = item[len("--config.") :].split("=", 1)[0]
        node = config
        for depth, part in enumerate(dotted.split(".")):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                parent = ".".join(dotted.split(".")[:depth]) or "config"
                valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise UserError(
                    f"unknown config key {dotted!r} in {path}; keys under {parent}: {valid}"
                )
            node = node[part]


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    if config is None or workdir is None:
        raise UserError("both --config and --workdir are required (see --help)")
    train_and_evaluate(config, workdir)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:  # e.g. a value of the wrong type for its key
        raise UserError(str(error)) from error


def command_line() -> None:
    """``python -m experiments.main``. The flags are defined here, not on import,
    so that importing ``train_and_evaluate`` registers no command-line flags."""
    check_overrides(sys.argv[1:])
    config_flags.DEFINE_config_file("config", None, "Path to a config file [:smoke].")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    cli.run(command_line)

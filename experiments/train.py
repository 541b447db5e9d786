"""Train one config in a workdir, resumably, then score it (``train_and_evaluate``).

The data's path: ``factory.load_data`` -> ``workdir.eval_splits`` (fixed bits for
valid and test) -> ``factory.build`` (model, step function, fresh state) ->
``vae_jax.train.make_train_epoch`` (one jitted ``lax.scan`` per epoch) -> the
checkpoint after every epoch -> ``vae_jax.evaluate.evaluate`` on the test bits ->
results.json and plots. ``experiments.main`` is its command line.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from experiments import factory
from experiments import workdir as wd
from experiments.cli import Interrupted, UserError
from vae_jax import evaluate as vae_evaluate
from vae_jax import parallel
from vae_jax.evaluate import Stream, make_elbo_terms, stream_key
from vae_jax.host import map_dataset
from vae_jax.schema import is_amortised
from vae_jax.train import make_train_epoch, to_host


def progress_bar(description: str):
    """A ``progress`` wrapper for the library's host loops (vae_jax.host)."""
    return functools.partial(tqdm, desc=description, unit="batch", leave=False)


def restore_run(workdir: str | Path):
    """(config, model, state, completed_epochs, splits) of the run saved in ``workdir``."""
    workdir = Path(workdir)
    config = wd.stored_config(workdir)
    splits = factory.load_data(config)
    run = factory.build(config, splits.train)
    completed, state = wd.restore_checkpoint(workdir, run.state)
    return config, run.model, state, completed, splits


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
    wd.check_path(workdir)
    # The workdir is this process's alone while it runs (a second run on it is refused):
    # an existing one from before the checks read it, so what they read is what this
    # run continues; a new one from its creation, when the checks have passed.
    with contextlib.ExitStack() as held:
        if workdir.exists():
            held.enter_context(wd.hold(workdir))
        try:
            return _train_and_evaluate(config, workdir, stop_after_epoch, start_time, held)
        except KeyboardInterrupt:  # before the first epoch's loop (loading, building)
            raise Interrupted(
                "interrupted before training began; rerun the same command to start"
            ) from None


def _train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: Path,
    stop_after_epoch: int | None,
    start_time: float,
    held: contextlib.ExitStack,
) -> dict | None:
    """:func:`train_and_evaluate` once an existing workdir is held (a new one is
    created and held in ``held`` after the checks)."""
    if (workdir / wd.CHECKPOINT).exists():
        wd.check_same_run(workdir, config)
    splits = factory.load_data(config)
    factory.check_splits(config, splits)
    x_train = wd.train_set(config, splits)
    run = factory.build(config, x_train)
    # Data parallelism over every device (one device: the same code, a no-op).
    mesh = parallel.data_mesh()
    factory.check_batches(config, mesh.size)
    completed, state = wd.restore_checkpoint(workdir, run.state)
    epochs = int(config.train.epochs)
    if completed > epochs:
        raise UserError(
            f"train.epochs={epochs} is out of range for {workdir}: its checkpoint has completed "
            f"{completed} epochs, and results.json must describe the checkpoint it scores; "
            f"use train.epochs >= {completed}, or a new --workdir for a shorter run "
            f"(experiments.evaluate re-scores this one)"
        )
    history = wd.read_metrics(workdir, completed)
    scored = wd.read_results(workdir)
    plots_missing = config.eval.plots and not (workdir / "samples.png").exists()
    if (
        completed == epochs
        and not plots_missing
        and scored
        and scored.get("train_step") == int(state.step)
    ):
        # The same config (checked above) and this very checkpoint: IS would repeat
        # the same draws for the same number. Delete results.json to score it again.
        print(f"{workdir}: trained and scored already (step {int(state.step)})", file=sys.stderr)
        print(summary_table(scored, workdir))
        return scored

    # Every check has passed: from here on the workdir is written.
    if not workdir.exists():
        held.enter_context(wd.hold(workdir))
    wd.record_config(workdir, config, completed)
    if completed:
        print(f"resuming {workdir} after epoch {completed}", file=sys.stderr)
    eval_key = jax.random.key(int(config.eval.seed))
    x_valid, x_test = wd.eval_splits(workdir, config, splits)
    state = parallel.replicate(state, mesh)
    wd.start_metrics(workdir, history)

    train_epoch = jax.jit(
        make_train_epoch(
            run.step_fn,
            int(config.train.batch_size),
            x_train.shape[0],
            dynamic_binarization=config.data.binarization == "dynamic",
            batch_sharding=parallel.batch_sharding(mesh),
        ),
        donate_argnums=0,
    )
    elbo_terms = jax.jit(make_elbo_terms(run.model))
    x_train_device = parallel.replicate(jnp.asarray(x_train), mesh)
    every = max(1, int(config.eval.valid_every_epochs))
    # A per-datapoint model has no encoder for validation images: its q's
    # must be fitted, which is done once, for the test set, at the end.
    amortised = is_amortised(state.phi)
    train_key = factory.train_key(config)

    bar = tqdm(
        range(completed, epochs), desc="train", unit="epoch", initial=completed, total=epochs
    )
    saved = completed  # epochs the checkpoint on disk holds
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            state, train_metrics = train_epoch(
                state, train_key, jnp.asarray(epoch, jnp.int32), x_train_device
            )
            train_metrics = to_host(train_metrics)
            record = {
                "epoch": epoch + 1,
                "step": int(state.step),
                "seconds": time.perf_counter() - t0,
            }
            record.update({f"train_{k}": v for k, v in train_metrics.items()})
            if amortised and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
                valid = map_dataset(
                    elbo_terms,
                    eval_key,
                    state.theta,
                    state.phi,
                    x_valid,
                    int(config.eval.batch_size),
                )
                terms = ("elbo", "reconstruction", "kl")
                record.update({f"valid_{k}": float(np.mean(valid[k])) for k in terms})
            if not np.isfinite(record["train_loss"]):
                kept = (
                    f"the checkpoint after epoch {saved} is kept"
                    if saved
                    else "no checkpoint was written (the run completed no epoch)"
                )
                loss = record["train_loss"]
                raise UserError(
                    f"training loss became {loss} in epoch {epoch + 1}; {kept}, and "
                    "nothing after it was recorded"
                )
            history.append(record)
            wd.append_metrics(workdir, record)
            wd.save_checkpoint(workdir, epoch + 1, state)
            saved = epoch + 1
            bar.set_postfix(loss=f"{record['train_loss']:.2f}", valid_elbo=record.get("valid_elbo"))
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
                return None
        bar.close()

        results = evaluate(config, run.model, state, x_test, eval_key, workdir)
    except KeyboardInterrupt:
        if saved < epochs:
            where = f"after epoch {saved}" if saved else "before the first epoch ended"
        else:
            where = f"during the evaluation, after all {epochs} epochs were saved"
        raise Interrupted(f"interrupted {where}; rerun the same command to resume") from None
    train_seconds = [m["seconds"] for m in history]
    results.update(
        data=factory.data_protocol(config),
        epochs=epochs,
        # the first epoch includes compilation; the median is the steady state
        seconds_per_epoch=float(np.median(train_seconds)) if train_seconds else None,
        first_epoch_seconds=train_seconds[0] if train_seconds else None,
        wall_s=time.time() - start_time,
        valid_elbo=history[-1].get("valid_elbo") if history else None,
    )
    wd.write_json(workdir / wd.RESULTS, results)
    print(summary_table(results, workdir))
    return results


def evaluate(config, model, state, x_test, eval_key, workdir: Path, num_samples=None) -> dict:
    """``vae_jax.evaluate.evaluate`` with the config's settings, then the plots."""
    e = config.eval
    scores, phi_scored, moments = vae_evaluate.evaluate(
        eval_key,
        model,
        state.theta,
        state.phi,
        x_test,
        num_importance_samples=int(num_samples or e.num_importance_samples),
        chunk_size=int(e.chunk_size),
        batch_size=int(e.batch_size),
        is_batch_size=int(e.is_batch_size),
        local_fit_steps=int(e.local_fit_steps),
        local_learning_rate=e.local_learning_rate,
        batch_sharding=parallel.batch_sharding(parallel.data_mesh()),
        progress=progress_bar,
    )
    scores["train_step"] = int(state.step)
    if e.plots:
        from experiments import plots  # matplotlib only when plotting

        plot_key = stream_key(eval_key, Stream.PLOTS)
        plots.write_all(workdir, model, state.theta, phi_scored, x_test, plot_key)
        kl_per_dim = np.asarray(scores["kl_per_dim"])
        plots.aggregate_posterior(workdir, moments, model.prior(state.theta, state.phi), kl_per_dim)
    return scores


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
    if "data" in results:
        rows.append(("data", results["data"]))
    width = max(len(name) for name, _ in rows)
    lines = [f"results in {workdir}/results.json"]
    for name, value in rows:
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        lines.append(f"  {name:<{width}}  {text:>10}")
    return "\n".join(lines)

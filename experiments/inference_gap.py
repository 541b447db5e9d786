"""The inference gap of a trained model (Cremer, Li & Duvenaud 2018).

    python -m experiments.inference_gap --workdir runs/default [--num-examples 1000]

On the first ``--num-examples`` fixed test images of the run:
  * ELBO(q_phi): the amortised encoder's bound;
  * ELBO(q_semi): the encoder's output refined by ``--semi-steps`` gradient steps
    (semi-amortised inference, Kim et al. 2018);
  * ELBO(q*): the best per-datapoint Gaussian, from ``fit_local`` run for
    ``--fit-steps`` steps starting at the encoder's output;
  * log p(x): IS with ``--num-samples`` draws from the equal mixture
    0.5 q_phi + 0.5 q* (:func:`vae_jax.evaluate.make_mixture_log_p_x`), one
    estimator whose mean is p(x), so a stochastic lower bound on log p(x).
  approximation gap = log p(x) - ELBO(q*); amortisation gap = ELBO(q*) - ELBO(q_phi).

How to read them: the fitted q* is at most the best Gaussian, so the
amortisation gap is a lower bound on the true one. The approximation gap is
neither bound: the IS estimate of log p(x) sits below log p(x) (by less as S
grows), which shrinks it, and an unconverged q* enlarges it. Their sum,
log p(x) - ELBO(q_phi), is a stochastic lower bound on the total gap.

ELBOs use 100 samples per image (analytic KL) with the same noise for the
three q's, so their Monte-Carlo error is small next to the gaps. Writes
``inference_gap.json`` in the workdir.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from absl import flags

from experiments import cli
from experiments.train import progress_bar, restore_run
from experiments.workdir import test_bits, write_json
from vae_jax.evaluate import (
    Stream,
    make_elbo_terms,
    make_mixture_log_p_x,
    stream_key,
)
from vae_jax.host import fit_local_in_batches, map_dataset
from vae_jax.local import make_fit_local
from vae_jax.schema import encoder_outputs, is_amortised


def measure(
    model,
    theta,
    phi,
    x: np.ndarray,
    eval_key: jax.Array,
    *,
    fit_steps: int = 500,
    semi_steps: int = 10,
    learning_rate: float = 1e-2,
    num_samples: int = 5000,
    chunk_size: int = 500,
    is_batch_size: int = 100,
    batch_size: int = 100,
) -> dict:
    """The gap decomposition for a model with an amortised encoder ``phi`` on images ``x``.

    Returns per-image arrays (nats): ``log_p_x`` and ``elbo_q_phi``,
    ``elbo_q_semi``, ``elbo_q_star``, and the fit's ELBO trace ``trace_TxN``.
    """
    amortised = jax.tree_util.tree_map(np.asarray, encoder_outputs(model, phi, x))

    def fit(steps: int, stream: Stream, description: str):
        """fit_local for ``steps`` steps from the encoder's outputs, on its own key stream."""
        fit_fn = jax.jit(make_fit_local(model, steps, learning_rate, num_samples=8))
        return fit_local_in_batches(
            fit_fn,
            stream_key(eval_key, stream),
            theta,
            amortised,
            x,
            batch_size,
            progress_bar(description),
        )

    semi, _ = fit(semi_steps, Stream.FIT_SEMI_AMORTISED, f"semi-amortised ({semi_steps} steps)")
    star, trace = fit(fit_steps, Stream.FIT_OPTIMAL, f"q* ({fit_steps} steps)")
    elbo_terms = jax.jit(make_elbo_terms(model, num_samples=100))
    # The same key for the three q's on purpose: their differences carry less noise.
    elbo = {
        f"elbo_{name}": map_dataset(elbo_terms, eval_key, theta, p, x, batch_size)["elbo"]
        for name, p in (("q_phi", phi), ("q_semi", semi), ("q_star", star))
    }
    log_p_x = estimate_log_p_x(
        model, theta, phi, star, x, eval_key, num_samples, chunk_size, is_batch_size
    )
    return {"log_p_x": log_p_x, **elbo, "trace_TxN": trace}


def estimate_log_p_x(
    model, theta, phi, star, x, eval_key, num_samples, chunk_size, batch_size
) -> np.ndarray:
    """log p(x) [N] by IS with the mixture 0.5 q_phi + 0.5 q*: a stochastic lower bound.

    ``star`` holds per-datapoint rows (q* of each image). One estimator whose
    mean is p(x), unlike the per-image larger of two IS estimates, which sits
    above log p(x) on average.
    """
    mixture = jax.jit(make_mixture_log_p_x(model, num_samples, chunk_size))
    return map_dataset(
        lambda key, theta, star_rows, x_BxD, index_B: mixture(
            key, theta, phi, star_rows, x_BxD, index_B
        ),
        eval_key,
        theta,
        star,
        x,
        batch_size,
        progress_bar(f"IS-{num_samples}, 0.5 q_phi + 0.5 q*"),
    )


def summarise(gap: dict) -> dict:
    """Means over images of :func:`measure`'s arrays, and the two gaps."""
    log_p_x, q_phi = gap["log_p_x"], gap["elbo_q_phi"]
    q_semi, q_star, trace = gap["elbo_q_semi"], gap["elbo_q_star"], gap["trace_TxN"]
    return {
        "log_p_x": float(log_p_x.mean()),
        "elbo_q_phi": float(q_phi.mean()),
        "elbo_q_semi": float(q_semi.mean()),
        "elbo_q_star": float(q_star.mean()),
        "approximation_gap": float((log_p_x - q_star).mean()),
        "amortisation_gap": float((q_star - q_phi).mean()),
        "semi_amortised_closes": float(
            (q_semi - q_phi).mean() / max((q_star - q_phi).mean(), 1e-9)
        ),
        "fit_elbo_last_10_steps_change": float(trace[-1].mean() - trace[-10].mean()),
    }


def _define(values: flags.FlagValues) -> None:
    cli.flag(values, "workdir", None, "the trained run")
    cli.flag(values, "num-examples", 1000, "first N fixed test images", lower_bound=1)
    # The report compares the fit's last 10 steps.
    cli.flag(values, "fit-steps", 500, "gradient steps of q*", lower_bound=10)
    cli.flag(values, "semi-steps", 10, "gradient steps of the semi-amortised q", lower_bound=1)
    cli.flag(values, "learning-rate", 1e-2, "of both fits")
    cli.flag(values, "num-samples", 5000, "IS draws for log p(x)", lower_bound=1)


def main(argv=None):
    args = cli.parse(argv, _define, __doc__, required=["workdir"])
    if not args.learning_rate > 0:
        raise cli.UserError(f"--learning-rate must be > 0, got {args.learning_rate}")
    start_time = time.time()
    workdir = Path(args.workdir)
    config, model, state, epochs, splits = restore_run(workdir)
    if not is_amortised(state.phi):
        raise cli.UserError(
            f"{workdir} trained model.inference={config.model.inference!r}: phi is one q per "
            "training image and there is no encoder, so there is no amortisation gap to measure"
        )
    x = np.asarray(test_bits(workdir, config, splits)[: args.num_examples])
    gap = measure(
        model,
        state.theta,
        state.phi,
        x,
        jax.random.key(int(config.eval.seed)),
        fit_steps=args.fit_steps,
        semi_steps=args.semi_steps,
        learning_rate=args.learning_rate,
        num_samples=args.num_samples,
        chunk_size=int(config.eval.chunk_size),
        is_batch_size=int(config.eval.is_batch_size),
    )
    results = {
        "workdir": str(workdir),
        "epochs": epochs,
        "num_examples": int(x.shape[0]),
        "num_importance_samples": args.num_samples,
        "log_p_x_method": "IS with the mixture proposal 0.5 q_phi + 0.5 q* (a lower bound)",
        "fit_steps": args.fit_steps,
        "semi_steps": args.semi_steps,
        "learning_rate": args.learning_rate,
        **summarise(gap),
        "wall_s": time.time() - start_time,
    }
    write_json(workdir / "inference_gap.json", results)
    rows = [
        (f"log p(x) (IS-{args.num_samples}, 0.5 q_phi + 0.5 q*)", results["log_p_x"]),
        ("ELBO, optimal Gaussian q*", results["elbo_q_star"]),
        (f"ELBO, semi-amortised ({args.semi_steps} steps)", results["elbo_q_semi"]),
        ("ELBO, amortised encoder q_phi", results["elbo_q_phi"]),
        ("approximation gap  log p(x) - ELBO(q*)", results["approximation_gap"]),
        ("amortisation gap   ELBO(q*) - ELBO(q_phi)", results["amortisation_gap"]),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"inference gap of {workdir} on {x.shape[0]} test images (nats per image)")
    for name, value in rows:
        print(f"  {name:<{width}}  {value:9.3f}")
    return results


if __name__ == "__main__":
    cli.run(main)

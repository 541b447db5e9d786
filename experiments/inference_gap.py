"""The inference gap of a trained model (Cremer, Li & Duvenaud 2018).

    python -m experiments.inference_gap --workdir runs/default [--num-examples 1000]

On the first ``--num-examples`` fixed test images of the run:
  * ELBO(q_phi): the amortised encoder's bound;
  * ELBO(q_semi): the encoder's output refined by ``--semi-steps`` gradient steps
    (semi-amortised inference, Kim et al. 2018);
  * ELBO(q*): the best per-datapoint Gaussian, from ``fit_local`` run for
    ``--fit-steps`` steps starting at the encoder's output;
  * log p(x): IS-5000 with q_phi and with q* as proposals; the reported value
    takes, per image, the larger of the two (both are stochastic lower bounds).
  approximation gap = log p(x) - ELBO(q*); amortisation gap = ELBO(q*) - ELBO(q_phi).

ELBOs use 100 samples per image (analytic KL), so their Monte-Carlo error is
small next to the gaps. Writes ``inference_gap.json`` in the workdir.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from experiments import cli
from experiments.main import restore_run, test_bits
from vae_jax.evaluate import make_elbo_terms, make_log_p_x, map_dataset
from vae_jax.local import encoder_outputs, fit_local_in_batches, make_fit_local


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num-examples", type=int, default=1000)
    parser.add_argument("--fit-steps", type=int, default=500)
    parser.add_argument("--semi-steps", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--num-samples", type=int, default=5000)
    args = parser.parse_args(argv)
    for flag, value, low in (
        ("--num-examples", args.num_examples, 1),
        ("--fit-steps", args.fit_steps, 10),  # the report compares the last 10 steps
        ("--semi-steps", args.semi_steps, 1),
        ("--num-samples", args.num_samples, 1),
    ):
        if value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    if not args.learning_rate > 0:
        parser.error(f"--learning-rate must be > 0, got {args.learning_rate}")
    start_time = time.time()
    workdir = Path(args.workdir)
    config, model, state, epochs, splits = restore_run(workdir)
    theta, phi = state.theta, state.phi
    x = np.asarray(test_bits(workdir, config, splits)[: args.num_examples])
    key = jax.random.key(int(config.eval.seed))
    batch = 100

    amortised = jax.tree_util.tree_map(np.asarray, encoder_outputs(model, phi, x))
    fit_semi = jax.jit(make_fit_local(model, args.semi_steps, args.learning_rate, num_samples=8))
    fit_star = jax.jit(make_fit_local(model, args.fit_steps, args.learning_rate, num_samples=8))
    semi, _ = fit_local_in_batches(
        fit_semi,
        jax.random.fold_in(key, 1),
        theta,
        amortised,
        x,
        batch,
        f"semi-amortised ({args.semi_steps} steps)",
    )
    star, trace = fit_local_in_batches(
        fit_star,
        jax.random.fold_in(key, 2),
        theta,
        amortised,
        x,
        batch,
        f"q* ({args.fit_steps} steps)",
    )

    elbo_terms = jax.jit(make_elbo_terms(model, num_samples=100))
    elbo = {
        name: map_dataset(elbo_terms, key, theta, p, x, batch)["elbo"]
        for name, p in (("q_phi", phi), ("q_semi", semi), ("q_star", star))
    }
    log_p_x_fn = jax.jit(make_log_p_x(model, args.num_samples, int(config.eval.chunk_size)))
    is_batch = int(config.eval.is_batch_size)
    is_phi = map_dataset(log_p_x_fn, key, theta, phi, x, is_batch, f"IS-{args.num_samples} q_phi")
    is_star = map_dataset(log_p_x_fn, key, theta, star, x, is_batch, f"IS-{args.num_samples} q*")
    log_p_x = np.maximum(is_phi, is_star)

    results = {
        "workdir": str(workdir),
        "epochs": epochs,
        "num_examples": int(x.shape[0]),
        "num_importance_samples": args.num_samples,
        "fit_steps": args.fit_steps,
        "semi_steps": args.semi_steps,
        "learning_rate": args.learning_rate,
        "log_p_x": float(log_p_x.mean()),
        "log_p_x_is_q_phi": float(is_phi.mean()),
        "log_p_x_is_q_star": float(is_star.mean()),
        "elbo_q_phi": float(elbo["q_phi"].mean()),
        "elbo_q_semi": float(elbo["q_semi"].mean()),
        "elbo_q_star": float(elbo["q_star"].mean()),
        "approximation_gap": float((log_p_x - elbo["q_star"]).mean()),
        "amortisation_gap": float((elbo["q_star"] - elbo["q_phi"]).mean()),
        "semi_amortised_closes": float(
            (elbo["q_semi"] - elbo["q_phi"]).mean()
            / max((elbo["q_star"] - elbo["q_phi"]).mean(), 1e-9)
        ),
        "fit_elbo_last_10_steps_change": float(trace[-1].mean() - trace[-10].mean()),
        "wall_s": time.time() - start_time,
    }
    (workdir / "inference_gap.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [
        (f"log p(x) (IS-{args.num_samples}, best proposal)", results["log_p_x"]),
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

"""Host-side loops over a dataset: fixed-shape batches fed to jitted functions.

Everything else in vae_jax is a pure function of arrays; this module is the
Python ``for`` loop around them. A progress bar is the caller's business:
``progress`` wraps the iterable of batches (e.g. ``functools.partial(tqdm,
desc="IS-5000")``), so the library imports no UI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.schema import Phi, Theta, phi_axis

Progress = Callable[[Iterable], Iterable]


class Batch(NamedTuple):
    """One fixed-size batch of a dataset of N examples."""

    start: int
    index: np.ndarray  # [B] example indices; the last batch may run past N
    rows: np.ndarray  # [B] indices clipped to N - 1: the last batch repeats its last row
    valid: int  # how many of the B are real examples


def padded_batches(n: int, batch_size: int, progress: Progress | None = None):
    """Batches of one shape (so jitted evaluators compile once), the last padded."""
    starts = range(0, n, batch_size)
    for start in progress(starts) if progress else starts:
        index = np.arange(start, start + batch_size)
        yield Batch(start, index, np.minimum(index, n - 1), min(batch_size, n - start))


def take_rows(phi: Phi, rows: np.ndarray) -> Phi:
    """phi for a batch: amortised phi whole, per-datapoint phi's rows."""
    if phi_axis(phi) is None:
        return phi
    return jax.tree_util.tree_map(lambda a: a[rows], phi)


def map_dataset(
    fn: Callable,
    key: jax.Array,
    theta: Theta,
    phi: Phi,
    x_NxD: np.ndarray,
    batch_size: int,
    progress: Progress | None = None,
):
    """Apply a jitted batched evaluator to a whole dataset; returns host arrays [N, ...].

    Every call sees the same batch shape, so ``fn`` compiles once. Per-datapoint
    phi (``[N, L]`` rows) is sliced to the batch alongside x.
    """
    n = x_NxD.shape[0]
    outputs = []
    for b in padded_batches(n, min(batch_size, n), progress):
        out = fn(
            key, theta, take_rows(phi, b.rows), jnp.asarray(x_NxD[b.rows]), jnp.asarray(b.index)
        )
        outputs.append(jax.tree_util.tree_map(lambda v, k=b.valid: np.asarray(v)[:k], out))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *outputs)


def fit_local_in_batches(fit_fn, key, theta, start_phi, x, batch_size, progress=None):
    """Run a jitted ``fit_local`` over a dataset in fixed-size batches (one compile).

    Batch b uses ``fold_in(key, first index of b)``; the last batch is padded.
    Returns host arrays: per-datapoint phi [N, L] and the ELBO trace [T, N].
    """
    fitted_rows, traces = [], []
    for b in padded_batches(x.shape[0], batch_size, progress):
        fitted, trace_TxB = fit_fn(
            jax.random.fold_in(key, b.start), theta, take_rows(start_phi, b.rows), x[b.rows]
        )
        fitted_rows.append(jax.tree_util.tree_map(lambda a, v=b.valid: np.asarray(a)[:v], fitted))
        traces.append(np.asarray(trace_TxB)[:, : b.valid])
    phi = jax.tree_util.tree_map(lambda *a: np.concatenate(a), *fitted_rows)
    return phi, np.concatenate(traces, axis=1)

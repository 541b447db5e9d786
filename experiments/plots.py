"""PNG figures of a trained model: samples, reconstructions, 2-D manifold."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from vae_jax.objectives import phi_axis

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _grid(images_NxD: np.ndarray, rows: int, cols: int, side: int) -> np.ndarray:
    tiles = images_NxD[: rows * cols].reshape(rows, cols, side, side)
    return tiles.transpose(0, 2, 1, 3).reshape(rows * side, cols * side)


def _save(path: Path, image: np.ndarray, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 6 * image.shape[0] / image.shape[1] + 0.4))
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_title(title)
    ax.axis("off")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def write_all(workdir: Path, model, theta, phi, x_test: np.ndarray, key: jax.Array) -> list[Path]:
    """samples.png, reconstructions.png and, for L = 2, manifold.png."""
    side = int(round(np.sqrt(model.data_dim)))
    if side * side != model.data_dim:
        return []  # not square images: nothing sensible to draw
    prior_key, posterior_key = jax.random.split(key)
    written = []

    z_64xL = model.prior(theta, phi).sample(prior_key, (64,))
    samples = np.asarray(model.likelihood(theta, z_64xL).mean)
    _save(
        workdir / "samples.png", _grid(samples, 8, 8, side), "64 samples from p(z), decoded (means)"
    )
    written.append(workdir / "samples.png")

    x = jnp.asarray(x_test[:32])
    if phi_axis(phi) == 0:  # per-datapoint q's: the rows of these 32 images
        phi = jax.tree_util.tree_map(lambda a: a[:32], phi)
    q_z = jax.vmap(model.posterior, in_axes=(phi_axis(phi), 0))(phi, x)
    z = q_z.sample(posterior_key)
    recon = np.asarray(model.likelihood(theta, z).mean)
    pairs = np.stack([np.asarray(x), recon], axis=1).reshape(64, -1)  # image, reconstruction
    _save(
        workdir / "reconstructions.png",
        _grid(pairs, 8, 8, side),
        "test image | reconstruction (one z ~ q(z|x))",
    )
    written.append(workdir / "reconstructions.png")

    if model.latent_dim == 2:
        # Kingma & Welling, figure 4: a grid pushed through the inverse Gaussian CDF.
        n = 20
        u = np.linspace(0.5 / n, 1 - 0.5 / n, n)
        z_1d = jax.scipy.stats.norm.ppf(u)
        z_grid = jnp.stack(jnp.meshgrid(z_1d, z_1d[::-1]), axis=-1).reshape(-1, 2)
        means = np.asarray(model.likelihood(theta, z_grid).mean)
        _save(workdir / "manifold.png", _grid(means, n, n, side), "learned 2-D manifold")
        written.append(workdir / "manifold.png")
    return written

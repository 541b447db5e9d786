"""PNG figures of a trained model: samples, reconstructions, 2-D manifold."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from vae_jax.schema import phi_axis

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _grid(images_NxD: np.ndarray, rows: int, cols: int, side: int) -> np.ndarray:
    tiles = images_NxD[: rows * cols].reshape(rows, cols, side, side)
    return tiles.transpose(0, 2, 1, 3).reshape(rows * side, cols * side)


def _save(path: Path, image: np.ndarray, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 6 * image.shape[0] / image.shape[1] + 0.4))
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_title(title)
    ax.axis("off")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def write_all(workdir: Path, model, theta, phi, x_test: np.ndarray, key: jax.Array) -> list[Path]:
    """samples.png, reconstructions.png and, for L = 2, manifold.png."""
    side = int(round(np.sqrt(model.data_dim)))
    if side * side != model.data_dim:
        return []  # not square images: nothing sensible to draw
    prior_key, posterior_key = jax.random.split(key)

    z_64xL = model.prior(theta, phi).sample(prior_key, (64,))
    samples = np.asarray(model.likelihood(theta, z_64xL, phi).mean)
    title = "64 samples from p(z), decoded (means)"
    written = [_save(workdir / "samples.png", _grid(samples, 8, 8, side), title)]

    x = jnp.asarray(x_test[:32])
    if phi_axis(phi) == 0:  # per-datapoint q's: the rows of these 32 images
        phi = jax.tree_util.tree_map(lambda a: a[:32], phi)
    q_z = jax.vmap(model.posterior, in_axes=(phi_axis(phi), 0))(phi, x)
    z = q_z.sample(posterior_key)
    recon = np.asarray(model.likelihood(theta, z, phi).mean)
    pairs = np.stack([np.asarray(x), recon], axis=1).reshape(64, -1)  # image, reconstruction
    title = "test image | reconstruction (one z ~ q(z|x))"
    written.append(_save(workdir / "reconstructions.png", _grid(pairs, 8, 8, side), title))

    if model.latent_dim == 2:
        # Kingma & Welling, figure 4: a grid pushed through the inverse Gaussian CDF.
        n = 20
        u = np.linspace(0.5 / n, 1 - 0.5 / n, n)
        z_1d = jax.scipy.stats.norm.ppf(u)
        z_grid = jnp.stack(jnp.meshgrid(z_1d, z_1d[::-1]), axis=-1).reshape(-1, 2)
        means = np.asarray(model.likelihood(theta, z_grid, phi).mean)
        manifold = _grid(means, n, n, side)
        written.append(_save(workdir / "manifold.png", manifold, "learned 2-D manifold"))
    return written


def aggregate_posterior(workdir: Path, moments: dict, prior, kl_per_dim) -> Path:
    """aggregate_posterior.png: per latent dim, <q(z|x)>'s mean and variance beside
    the prior's (where the prior has per-dim moments), and the KL per dim."""
    mean, variance = np.asarray(moments["mean"]), np.asarray(moments["variance"])
    dims = np.arange(mean.shape[0])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    axes[0].bar(dims, mean, color="tab:blue", label="aggregate posterior")
    axes[1].bar(dims, variance, color="tab:blue", label="aggregate posterior")
    if hasattr(prior, "log_scale") and np.ndim(prior.log_scale) == 1:
        prior_moments = (np.asarray(prior.loc), np.exp(2 * np.asarray(prior.log_scale)))
        for ax, value in zip(axes[:2], prior_moments, strict=True):
            ax.plot(dims, np.broadcast_to(value, mean.shape), "k_", ms=14, label="prior")
    axes[0].set_title("mean E_x[mu(x)]")
    axes[1].set_title("variance E_x[sigma^2] + Var_x[mu]")
    axes[2].bar(dims, np.asarray(kl_per_dim), color="tab:orange")
    axes[2].axhline(0.01, color="gray", lw=0.8)
    axes[2].set_title("KL(q(z_d|x) || p(z_d)) per dim")
    for ax in axes:
        ax.set_xlabel("latent dim")
    axes[0].legend(fontsize=8)
    path = workdir / "aggregate_posterior.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

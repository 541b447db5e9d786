"""The aggregate posterior <q(z|x)>_x against exact answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import linear_gaussian as lg
from vae_jax.evaluate import aggregate_posterior_moments, make_posterior_moment_sums
from vae_jax.schema import encoder_outputs

D, L, N = 10, 3, 40_000


def _ppca_data():
    model = lg.make_linear_gaussian(D, L)
    theta = lg.init_orthogonal_theta(jax.random.key(0), D, L, noise_scale=0.6)
    z_key, noise_key = jax.random.split(jax.random.key(1))
    z = jax.random.normal(z_key, (N, L))
    x = model.likelihood(theta, z, {}).sample(noise_key)  # x ~ p(x), through the model
    return model, theta, np.asarray(x)


def test_exact_posterior_averaged_over_the_model_data_is_the_prior():
    """E_{p(x)}[p(z|x)] = p(z): the aggregate posterior matches N(0, I) when q is exact."""
    model, theta, x = _ppca_data()
    phi = lg.exact_posterior_phi(theta)
    moments = aggregate_posterior_moments(jax.jit(make_posterior_moment_sums(model)), phi, x, 777)
    # 5 standard errors at N = 4e4: mean 0.025, variance about 0.035
    np.testing.assert_allclose(moments["mean"], 0.0, atol=0.025)
    np.testing.assert_allclose(moments["variance"], 1.0, atol=0.035)
    assert moments["kl_moment_matched_to_standard_normal"] < 2e-3


def test_a_mis_scaled_encoder_shows_up_as_a_mismatch():
    model, theta, x = _ppca_data()
    phi = lg.exact_posterior_phi(theta)
    tree = phi["q_z_given_x"]
    # mean shifted by 0.5, every sigma doubled: the aggregate is N(0.5, > 1)
    shifted = {
        "q_z_given_x": {
            "loc": {"kernel": tree["loc"]["kernel"], "bias": tree["loc"]["bias"] + 0.5},
            "log_scale": tree["log_scale"] + jnp.log(2.0),
        }
    }
    moments = aggregate_posterior_moments(jax.jit(make_posterior_moment_sums(model)), shifted, x)
    np.testing.assert_allclose(moments["mean"], 0.5, atol=0.05)
    # total variance: 4 sigma^2 + Var[mu] = 1 + 3 sigma^2, since sigma^2 + Var[mu] = 1
    expected = 1.0 + 3.0 * np.exp(2.0 * np.asarray(tree["log_scale"]))
    np.testing.assert_allclose(moments["variance"], expected, atol=0.04)
    assert moments["kl_moment_matched_to_standard_normal"] > 0.5


def test_law_of_total_variance_matches_sampling_and_both_phi_forms_agree():
    model, theta, x = _ppca_data()
    phi = lg.exact_posterior_phi(theta)
    sums = jax.jit(make_posterior_moment_sums(model))
    amortised = aggregate_posterior_moments(sums, phi, x[:5000])
    local = aggregate_posterior_moments(
        sums, encoder_outputs(model, phi, jnp.asarray(x[:5000])), x[:5000]
    )
    np.testing.assert_allclose(amortised["variance"], local["variance"], rtol=1e-6)
    q = jax.vmap(lambda xi: model.posterior(phi, xi))(jnp.asarray(x[:5000]))
    z = np.asarray(q.sample(jax.random.key(3)))  # one draw from each q(z | x_n)
    np.testing.assert_allclose(z.var(0), amortised["variance"], rtol=0.06)
    np.testing.assert_allclose(z.mean(0), amortised["mean"], atol=0.05)


def test_aggregate_kl_of_identical_data_is_the_analytic_kl():
    """All x equal: q_agg is the single Gaussian q(z|x), so the estimate is KL(q || p)."""
    from vae_jax.distributions import StandardNormal, kl_divergence
    from vae_jax.evaluate import make_aggregate_kl

    model, theta, x = _ppca_data()
    phi = lg.exact_posterior_phi(theta)
    same = np.repeat(x[:1], 700, axis=0)  # 700: not a multiple of the chunk (masking)
    out = jax.jit(make_aggregate_kl(model, num_z=4000, chunk_size=256))(
        jax.random.key(0), theta, phi, jnp.asarray(same)
    )
    exact = kl_divergence(model.posterior(phi, jnp.asarray(x[0])), StandardNormal(L))
    assert abs(float(out["kl"] - exact)) < 5 * float(out["kl_standard_error"]) + 1e-4
    # 700 copies of one posterior carry no information about which copy: I_N = 0
    assert abs(float(out["mutual_information"])) < 1e-4


def test_aggregate_kl_is_small_when_the_posterior_is_exact_and_grows_when_shifted():
    from vae_jax.evaluate import make_aggregate_kl

    model, theta, x = _ppca_data()
    phi = lg.exact_posterior_phi(theta)
    kl_fn = jax.jit(make_aggregate_kl(model, num_z=2000, chunk_size=1000))
    kl_exact = kl_fn(jax.random.key(0), theta, phi, jnp.asarray(x[:8000]))["kl"]
    tree = phi["q_z_given_x"]
    shifted = {
        "q_z_given_x": {
            "loc": {"kernel": tree["loc"]["kernel"], "bias": tree["loc"]["bias"] + 0.5},
            "log_scale": tree["log_scale"],
        }
    }
    kl_shifted = kl_fn(jax.random.key(0), theta, shifted, jnp.asarray(x[:8000]))["kl"]
    assert float(kl_exact) < 0.05
    # a mean shift of 0.5 per dim costs at least L * 0.5^2 / 2 = 0.375 nats
    assert float(kl_shifted) > 0.3


def test_separated_posteriors_carry_log_n_nats_and_the_terms_add_up():
    """N posteriors that do not overlap: I_N = log N exactly, so KL(q_agg,N || p) = avg KL - log N.

    This is why the sampled aggregate KL of a trained encoder depends on N: its
    N posteriors barely overlap, and the mixture's KL is the average KL minus
    about log N.
    """
    from vae_jax.distributions import StandardNormal, kl_divergence
    from vae_jax.evaluate import make_aggregate_kl

    model = lg.make_linear_gaussian(D, L)
    theta = lg.init_orthogonal_theta(jax.random.key(0), D, L)
    # an encoder that copies x's first L coordinates as the mean, with sigma = e^-6
    kernel = jnp.zeros((D, L)).at[jnp.arange(L), jnp.arange(L)].set(1.0)
    phi = {
        "q_z_given_x": {
            "loc": {"kernel": kernel, "bias": jnp.zeros(L)},
            "log_scale": jnp.full(L, -6.0),
        }
    }
    for n in (10, 300):
        # distinct means on a grid of spacing 0.1 (40 sigmas apart), scaled into N(0, 1)'s bulk
        grid = np.stack(np.unravel_index(np.arange(n), (7, 7, 7)), axis=1) * 0.1 - 0.3
        x = jnp.zeros((n, D)).at[:, :L].set(jnp.asarray(grid, jnp.float32))
        out = jax.jit(make_aggregate_kl(model, num_z=3000, chunk_size=128))(
            jax.random.key(1), theta, phi, x
        )
        np.testing.assert_allclose(out["mutual_information"], np.log(n), atol=1e-3)
        np.testing.assert_allclose(
            out["average_kl"], out["mutual_information"] + out["kl"], rtol=1e-5
        )
        exact_average = jnp.mean(
            jax.vmap(lambda xi: kl_divergence(model.posterior(phi, xi), StandardNormal(L)))(x)
        )
        assert (
            abs(float(out["average_kl"]) - exact_average)
            < 5 * float(out["average_kl_standard_error"]) + 1e-3
        )


def test_the_grid_table_shows_the_decomposition_with_n(tmp_path):
    """The grid RESULTS.md table: the I_N column beside the sampled KL and the KL column."""
    import json

    from experiments import report

    run = tmp_path / "standard_normal" / "seed0"
    run.mkdir(parents=True)
    sampled = {"value": 16.70, "mutual_information": 9.13, "num_images": 10000}
    results = {"test_kl": 25.84, "test_examples": 10000}
    results["aggregate_posterior_kl_to_prior_sampled"] = sampled
    (run / "results.json").write_text(json.dumps(results))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "step": 5, "seconds": 1.0}) + "\n")
    collected = report.collect(run)
    table = report.results_table({"standard_normal": [collected]})
    header, _, row = table.splitlines()
    titles = [cell.strip() for cell in header.split("|")]
    cells = [cell.strip() for cell in row.split("|")]
    assert cells[titles.index("I_N(x;z), sampled")] == "9.13"
    assert cells[titles.index("KL(q_agg,N‖p), sampled")] == "16.70"
    assert cells[titles.index("KL(q‖p)")] == "25.84"


def test_the_aggregate_kl_script_reports_each_n_and_refuses_bad_ones(tmp_path):
    """experiments.aggregate_kl on a saved (untrained) run: one row per N, a JSON file."""
    import json
    import math

    import pytest

    from experiments import aggregate_kl
    from experiments.cli import UserError
    from experiments.configs import default
    from experiments.factory import build
    from experiments.workdir import CHECKPOINT
    from vae_jax import checkpoint

    config = default.get_config("smoke")  # 500 training images
    (tmp_path / "config.json").write_text(config.to_json())
    state = build(config, np.zeros((500, 784), np.float32)).state
    checkpoint.save(tmp_path / CHECKPOINT, {"epoch": 0, "state": state})
    argv = ["--workdir", str(tmp_path), "--num-z", "200"]
    rows = aggregate_kl.main([*argv, "--num-images", "10,400"])
    assert [row["num_images"] for row in rows] == [10, 400]
    for row in rows:
        assert 0 < row["mutual_information"] <= math.log(row["num_images"])
        assert row["log_num_images"] == math.log(row["num_images"])
    assert json.loads((tmp_path / "aggregate_kl.json").read_text())["rows"] == rows
    for bad, message in (("0,10", "every N must be >= 1"), ("ten", "comma-separated integers")):
        with pytest.raises(UserError, match=message):
            aggregate_kl.main([*argv, "--num-images", bad])


def test_no_images_is_refused_by_name():
    model = lg.make_linear_gaussian(D, L)
    phi = lg.exact_posterior_phi(lg.init_orthogonal_theta(jax.random.key(0), D, L, 0.6))
    sums = make_posterior_moment_sums(model)
    with pytest.raises(ValueError, match=r"at least one image; x has shape \(0, 10\)"):
        aggregate_posterior_moments(sums, phi, np.zeros((0, D), np.float32))

"""A whole run on tiny data: results, their signs, and the figures."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from experiments import evaluate as rescore
from experiments import inference_gap
from experiments.configs import default, iwae_1layer, kingma_welling
from experiments.main import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {
    "test_nll",
    "num_importance_samples",
    "test_elbo",
    "test_kl",
    "test_reconstruction",
    "active_units",
    "kl_per_dim",
    "num_params_theta",
    "num_params_phi",
    "epochs",
    "seconds_per_epoch",
    "wall_s",
    "jax_version",
    "device",
}


def test_smoke_run_writes_results_and_figures(tmp_path):
    config = default.get_config("smoke")
    config.model.latent_dim = 2
    results = train_and_evaluate(config, tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert REQUIRED <= set(on_disk) and on_disk == json.loads(json.dumps(results))
    assert results["test_nll"] > 0 and results["test_elbo"] < 0  # NLL positive, ELBO a log density
    assert results["test_nll"] < -results["test_elbo"]  # IS-50 is tighter than the ELBO
    assert math.isclose(
        results["test_elbo"], results["test_reconstruction"] - results["test_kl"], rel_tol=1e-5
    )
    assert len(results["kl_per_dim"]) == 2 and 0 <= results["active_units"] <= 2
    assert len(results["aggregate_posterior_variance"]) == 2
    assert results["aggregate_posterior_kl_to_standard_normal"] >= 0
    assert results["num_importance_samples"] == 50 and results["test_examples"] == 200
    sampled = results["aggregate_posterior_kl_to_prior_sampled"]
    assert sampled["value"] > 0 and "Monte Carlo" in sampled["method"]
    for name in ("samples.png", "reconstructions.png", "manifold.png", "aggregate_posterior.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    # re-scoring the checkpoint with the run's S reproduces its number exactly
    rescored = rescore.main(["--workdir", str(tmp_path), "--num-samples", "50"])
    assert rescored["test_nll"] == results["test_nll"]
    more = rescore.main(["--workdir", str(tmp_path), "--num-samples", "200"])
    # more samples: a tighter bound, up to noise
    assert more["test_nll"] <= results["test_nll"] + 0.5
    # the inference-gap decomposition on the same checkpoint
    gap = inference_gap.main(
        [
            "--workdir",
            str(tmp_path),
            "--num-examples",
            "100",
            "--fit-steps",
            "30",
            "--semi-steps",
            "5",
            "--num-samples",
            "50",
        ]
    )
    # the script runs end to end on a real checkpoint; that each gap is right is
    # checked against PPCA's exact answers in tests/test_inference_gap.py
    assert gap["elbo_q_phi"] < gap["elbo_q_semi"] < gap["elbo_q_star"] < gap["log_p_x"]
    assert json.loads((tmp_path / "inference_gap.json").read_text())["log_p_x"] == gap["log_p_x"]


def test_every_shipped_config_has_a_smoke_variant_that_builds():
    for module in (default, kingma_welling, iwae_1layer):
        full, smoke = module.get_config(), module.get_config("smoke")
        assert smoke.train.epochs < full.train.epochs
        assert full.eval.num_importance_samples == 5000


def test_readme_example_runs_as_written():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- example -->\n```python\n(.*?)```", text, re.S)
    assert block, "README example block not found"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 15
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert "['theta']['p_x_given_z']['hidden_0']['kernel'] (20, 500)" in result.stdout
    assert "['phi']['q_z_given_x']['log_scale']['kernel'] (500, 20)" in result.stdout
    assert "ELBO" in result.stdout and "IS-5000" in result.stdout


def _smoke(tmp_path, **overrides):
    config = default.get_config("smoke")
    config.eval.plots = False
    for dotted, value in overrides.items():
        section, name = dotted.split("__")
        config[section][name] = value
    return train_and_evaluate(config, tmp_path), [
        json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]


def test_iwae_objective_trains(tmp_path):
    results, lines = _smoke(tmp_path, objective__name="iwae", objective__num_samples=5)
    assert "train_iwae_bound" in lines[0]
    assert lines[-1]["train_iwae_bound"] > lines[0]["train_iwae_bound"]
    assert lines[-1]["train_iwae_bound"] >= lines[-1]["train_elbo"]  # the tighter bound
    assert math.isfinite(results["test_nll"])


def test_kl_warmup_ramps_beta_linearly(tmp_path):
    _, lines = _smoke(tmp_path, objective__warmup_epochs=4, train__epochs=2)
    # 10 steps per epoch, 40 warm-up steps: epoch means of beta_t = t / 40
    assert math.isclose(lines[0]["train_beta"], np.mean(np.arange(10) / 40), rel_tol=1e-6)
    assert math.isclose(lines[1]["train_beta"], np.mean(np.arange(10, 20) / 40), rel_tol=1e-6)
    # the loss is the beta-weighted bound, the logged ELBO is not
    first = lines[0]
    assert math.isclose(
        first["train_loss"],
        -(first["train_reconstruction"] - first["train_beta"] * first["train_kl"]),
        rel_tol=1e-2,
    )


def test_static_binarisation_trains_on_fixed_saved_bits(tmp_path):
    _, _ = _smoke(tmp_path, data__binarization="static")
    bits = np.load(tmp_path / "train_bits.npy")
    assert bits.shape == (500, 784) and set(np.unique(bits)) == {0.0, 1.0}


def test_a_tfds_dataset_runs_end_to_end(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=120):
        results, lines = _smoke(
            tmp_path,
            data__source="tfds",
            data__tfds_name="fashion_mnist",
            data__tfds_splits=("train", "train", "test"),
            data__max_train_examples=100,
        )
    assert results["test_examples"] == 120 and len(lines) == 2

"""The IWAE table's records (issue 13): a run becomes a cell with its params, and every
committed cell's params load into the model its record names."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import factory, iwae_table
from experiments.configs import default
from experiments.train import train_and_evaluate
from experiments.workdir import config_from_record
from vae_jax import checkpoint
from vae_jax.models import num_params

COMMITTED = sorted(iwae_table.TABLE.glob("*.msgpack"))


def test_add_records_the_run_and_exports_theta_and_phi_only(tmp_path):
    config = default.get_config("smoke")
    config.eval.plots = False
    run = tmp_path / "run"
    results = train_and_evaluate(config, run)
    table = tmp_path / "table"
    record = iwae_table.add("vae_1l_k1", run, "python -m experiments.main ...", table=table)
    assert record["passes"] == 2 and record["of_passes"] == 3280 and record["seeds"] == [0]
    assert record["test_nll"] == results["test_nll"]
    assert (record["objective"], record["stochastic_layers"], record["k"]) == ("vae", 1, 1)
    assert record["paper_nll"] == 86.76
    saved = checkpoint.restore(table / "vae_1l_k1.msgpack", _template(record))
    assert set(saved) == {"theta", "phi"}  # no optimiser state, no step
    model = factory.build_model(config, 784)
    assert num_params(saved) == num_params(model.init(jax.random.key(0)))
    rows = iwae_table.render(table).read_text()
    assert "| VAE, 1 layer | 1 | reparam | 2 of 3280 | 1 |" in rows
    # a record without epoch timings renders n/a, not a TypeError
    stored = table / "vae_1l_k1.json"
    stored.write_text(json.dumps({**json.loads(stored.read_text()), "seconds_per_epoch": None}))
    assert "| n/a | n/a |" in iwae_table.render(table).read_text()
    # the exported params alone re-score the run: same bits, key and S, same number
    from experiments import evaluate as rescore

    params, out = str(table / "vae_1l_k1.msgpack"), str(tmp_path / "rescore.json")
    again = rescore.main(["--params", params, "--num-samples", "50", "--out", out])
    assert again["test_nll"] == results["test_nll"] and again["train_step"] == record["train_step"]
    assert again["intensity"] == "k255" and "| k/255, 50k, zero bias, adam |" in rows
    assert "| (trained at k/255) |" in rows  # no re-score column for a cell already there
    # on the other scale: other bits, so another number, attached beside the cell's own
    other = str(tmp_path / "k256.json")
    at_k256 = rescore.main(
        ["--params", params, "--num-samples", "50", "--out", other, "--intensity", "k256"]
    )
    assert at_k256["intensity"] == "k256" and at_k256["test_nll"] != results["test_nll"]
    assert at_k256["data"].startswith("MNIST at k/256")
    attached = iwae_table.attach("vae_1l_k1", Path(other), "python -m ...", table=table)
    assert attached["rescores"]["k256"]["test_nll"] == at_k256["test_nll"]
    assert attached["test_nll"] == results["test_nll"]  # the cell's own score is kept
    with pytest.raises(iwae_table.cli.UserError, match="not cell 'vae_1l_k1''s parameters"):
        Path(other).write_text(json.dumps({**at_k256, "params_sha256": "0" * 64}))
        iwae_table.attach("vae_1l_k1", Path(other), "python -m ...", table=table)
    with pytest.raises(iwae_table.cli.UserError, match="scored MNIST at k256, but the run"):
        iwae_table.add("vae_1l_k1", run, "python -m ...", Path(other), table=table)


def _template(record):
    config = config_from_record(record["config"])
    theta, phi = factory.build_model(config, 784).init(jax.random.key(0))
    return {"theta": theta, "phi": phi}


@pytest.mark.parametrize("path", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_committed_params_load_into_the_model_their_record_names(path: Path):
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["params_sha256"] == iwae_table.sha256(path)  # the record's own file
    template = _template(record)
    saved = checkpoint.restore(path, template)  # refuses any shape that differs
    assert jax.tree_util.tree_structure(saved) == jax.tree_util.tree_structure(template)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(saved))
    layers = record["stochastic_layers"]
    expected = {1: {"p_z", "p_x_given_z"}, 2: {"p_z2", "p_z1_given_z2", "p_x_given_z1"}}[layers]
    assert set(saved["theta"]) == expected


def test_another_cells_parameters_are_refused_by_name(tmp_path):
    from experiments import evaluate as rescore

    cells = {p.stem: p for p in COMMITTED}
    # same shapes, another cell: the record's SHA-256 tells them apart
    swapped = tmp_path / "vae_1l_k1.msgpack"
    swapped.write_bytes(cells["iwae_1l_k5"].read_bytes())
    (tmp_path / "vae_1l_k1.json").write_bytes(cells["vae_1l_k1"].with_suffix(".json").read_bytes())
    with pytest.raises(iwae_table.cli.UserError, match="not the file its record vae_1l_k1.json"):
        rescore.main(["--params", str(swapped), "--num-samples", "2"])
    # another model's tree: named as such, not as a truncated or corrupt file
    record = json.loads(cells["vae_1l_k1"].with_suffix(".json").read_text())
    with pytest.raises(ValueError, match="holds parameters for a different model") as refused:
        checkpoint.restore(cells["vae_2l_k1"], _template(record))
    assert "corrupt" not in str(refused.value)

"""experiments.ablate with experiments.grids and experiments.report: a :smoke grid end
to end, reuse of finished runs, the report, and grids that are well-formed data."""

import json

import pytest

from experiments import ablate, factory, grids
from experiments.cli import UserError
from experiments.report import FIGURES


def test_smoke_grid_runs_reuses_and_reports(tmp_path):
    argv = ["--grid", "priors:smoke", "--seeds", "2", "--workdir", str(tmp_path)]
    argv += ["--arms", "standard_normal,vampprior"]
    ablate.main(argv)
    runs = sorted(p.parent.relative_to(tmp_path) for p in tmp_path.glob("*/seed*/results.json"))
    assert [str(r) for r in runs] == [
        "standard_normal/seed0",
        "standard_normal/seed1",
        "vampprior/seed0",
        "vampprior/seed1",
    ]
    report = (tmp_path / "RESULTS.md").read_text()
    assert "--arms standard_normal,vampprior" in report
    for arm in ("standard_normal", "vampprior"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {arm} |"))
        assert " ± " in row  # two seeds: a spread is reported
        nlls = [
            json.loads((tmp_path / arm / f"seed{s}" / "results.json").read_text())["test_nll"]
            for s in (0, 1)
        ]
        assert f"{sum(nlls) / 2:.2f}" in row  # the table's mean is the runs' mean
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert (tmp_path / "aggregate.png").stat().st_size > 0

    # a second call trains nothing: every results.json is left as it was
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/seed*/results.json")}
    ablate.main(argv)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # --report-only --publish copies the report and exactly the grid's figures
    ablate.main([*argv, "--report-only", "--publish", str(tmp_path / "published")])
    published = sorted(p.name for p in (tmp_path / "published" / "priors").iterdir())
    assert published == ["RESULTS.md", "aggregate.png", "curves.png"]

    # the full grid on this workdir would report the smoke runs as its own: refused
    full = ["--grid", "priors", "--seeds", "2", "--workdir", str(tmp_path)]
    with pytest.raises(UserError, match=r"standard_normal/seed0 holds a finished run of another"):
        ablate.main([*full, "--arms", "standard_normal"])
    with pytest.raises(UserError, match=r"standard_normal/seed0 holds a run of another config"):
        ablate.main([*full, "--arms", "standard_normal", "--report-only"])
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_unknown_grid_arm_or_override_is_a_clear_error(monkeypatch):
    with pytest.raises(UserError, match="unknown grid 'prior'"):
        grids.parse_grid("prior")
    with pytest.raises(UserError, match="no arms \\['vamp'\\]"):
        grids.select_arms("priors", "vamp")
    config = factory.load_config(grids.DEFAULT, "smoke")
    for typo in ("model.priors", "model.prior.kind", "modle.prior"):
        with pytest.raises(UserError, match=typo):
            grids.check_keys(config, {typo: "x"}, "here")

    # update_from_flattened_dict would add the typo as a new field: the grid and arm are named
    bad = grids.Grid(grids.DEFAULT, {}, {"typo": {"model.priors": "x"}}, "?", ())
    monkeypatch.setitem(grids.GRIDS, "bad", bad)
    with pytest.raises(UserError, match="grid 'bad', arm 'typo': override 'model.priors'"):
        grids.arm_config("bad", "typo", 0, "smoke")
    monkeypatch.setitem(grids.GRIDS, "bad", bad._replace(base={"train.epoch": 1}))
    with pytest.raises(UserError, match="grid 'bad', its base: override 'train.epoch'"):
        grids.arm_config("bad", "typo", 0, "smoke")


def test_every_arm_of_every_grid_builds_a_valid_config():
    for grid, spec in grids.GRIDS.items():
        assert set(spec.figures) <= set(FIGURES), grid
        for arm in spec.arms:
            config = grids.arm_config(grid, arm, 0, None)
            factory.build_model(config, 784)  # unknown prior, tying, trunk... fail here
            factory.build_adjustment(config, factory.build_model(config, 784))


def test_overrides_every_arm_shares_are_stated_once_in_the_base():
    for grid, spec in grids.GRIDS.items():
        first, *others = spec.arms.values()
        shared = {k: v for k, v in first.items() if all(k in o and o[k] == v for o in others)}
        assert not shared, f"grid {grid!r}: move {shared} to its base"


def test_each_protocol_arm_is_its_reference_plus_one_named_change():
    spec = grids.GRIDS["protocol"]
    for arm, base in spec.reference.items():
        config, reference = (grids.arm_config("protocol", a, 0, None) for a in (arm, base))
        flat, flat_reference = (json.loads(c.to_json()) for c in (config, reference))
        changed = {
            f"{section}.{key}"
            for section, values in flat.items()
            if isinstance(values, dict)
            for key, value in values.items()
            if flat_reference[section][key] != value
        }
        change = arm.split("_", 1)[1]
        expected = dict(grids.PROTOCOL_CHANGES, warmup={"objective.warmup_epochs": 10})[change]
        assert changed == set(expected), arm
    paper = grids.arm_config("protocol", "1l_paper", 0, None)
    assert (paper.data.intensity, paper.data.split) == ("k255", "burda")
    assert paper.model.output_bias == "train_mean_logit" and paper.optimizer.name == "adam"


def test_paired_differences_give_a_verdict_only_when_every_seed_agrees():
    from experiments.report import paired_differences

    def run(seed, nll, units):
        return {"seed": f"seed{seed}", "test_nll": nll, "active_units_per_layer": units}

    runs = {
        "paper": [run(0, 90.0, [20, 0]), run(1, 91.0, [21, 1])],
        "worse": [run(0, 91.0, [20, 0]), run(1, 92.1, [20, 3])],  # +1.0, +1.1
        "mixed": [run(0, 90.5, [20, 0]), run(1, 90.5, [21, 1])],  # +0.5, -0.5
    }
    table = paired_differences(runs, {"worse": "paper", "mixed": "paper"})
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert "+1.00, +1.10" in rows["worse"] and "worse than `paper` by 1.05 nats" in rows["worse"]
    assert "-0.5 / +1.0" in rows["worse"]  # active units per layer, mean of the paired changes
    assert "no difference resolved" in rows["mixed"]

"""experiments.ablate: a :smoke grid end to end, reuse of finished runs, the report."""

import json

import pytest

from experiments import ablate, factory


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


def test_unknown_grid_arm_or_override_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown grid 'prior'"):
        ablate.parse_grid("prior")
    with pytest.raises(SystemExit, match="no arms \\['vamp'\\]"):
        ablate.select_arms("priors", "vamp")
    config = factory.load_config(ablate.DEFAULT, "smoke")
    with pytest.raises(KeyError, match="model.priors"):
        ablate.apply_overrides(config, {"model.priors": "x"})


def test_every_arm_of_every_grid_builds_a_valid_config():
    for grid, (_, arms, _) in ablate.GRIDS.items():
        for arm in arms:
            config = ablate.arm_config(grid, arm, 0, None)
            factory.build_model(config, 784)  # unknown prior, tying, trunk... fail here
            factory.build_adjustment(config, factory.build_model(config, 784))

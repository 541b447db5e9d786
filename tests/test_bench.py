"""`make bench` must run on a fresh clone: its own code at toy size (--smoke), how it
starts the PyTorch reference, and what it says when the reference venv is missing."""

import ast
import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import bench, cli

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_runs_every_measurement(tmp_path):
    out = tmp_path / "bench" / "smoke.json"
    # No .venv-torch needed: --smoke never starts the reference (make test on a fresh clone).
    report = bench.main(["--smoke", "--torch-venv", str(tmp_path / "no-venv"), "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["smoke"] is True and report["rounds"] == 1
    assert report["train_images"] == bench.SMOKE.train_images
    assert report["is_examples"] == bench.SMOKE_TEST_IMAGES
    assert report["is_num_samples"] == bench.SMOKE.is_num_samples
    for name in (
        "matmul_peak_gflops",
        "vae_784_400_20_b128_epoch_seconds",
        "iwae_arch_b100_gflops",
        "is_seconds",
        "is_compile_seconds",
        "peak_rss_mib",
        "speedup_1layer_k1_rbg_over_1layer_k1",
        "epoch_seconds_2layer_iwae_k5",
        "full_schedule_hours_1layer_iwae_k50_dreg",
        "full_schedule_hours_1layer_k1",
        "ratio_vampprior_over_standard",
    ):
        assert math.isfinite(report[name]) and report[name] > 0, name
    # Chunked IS: its compiled working memory does not grow with the sample count.
    k_small, k_large = bench.SMOKE.temp_num_samples
    assert report[f"is_temp_bytes_k{k_small}"] == report[f"is_temp_bytes_k{k_large}"] > 0
    assert not any(name.startswith("pytorch") for name in report)  # --smoke: no reference


def test_missing_torch_venv_is_one_line_before_any_work(tmp_path):
    out = tmp_path / "not-made" / "bench.json"
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--torch-venv", str(tmp_path / "no-venv"), "--out", str(out)])
    message = str(exit_info.value.code)
    assert message.startswith("error: no PyTorch reference venv at ")
    assert "make bench" in message and "--no-torch" in message and "\n" not in message
    assert not out.parent.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--rounds", "0"],
        ["--is-examples", "10001"],
        ["--only", "cells"],
        ["--only", "pytorch", "--no-torch"],
    ],
)
def test_bad_sizes_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(lambda: bench.parse_args(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and argv[0] in err


def test_the_reference_cannot_import_our_files(tmp_path):
    # A script dir holding a stdlib-named module, the cwd and PYTHONPATH all point at
    # it: as experiments/profile.py once did, it would take over `import cProfile`.
    (tmp_path / "profile.py").write_text("raise ImportError('our profile.py was imported')\n")
    probe = tmp_path / "probe.py"
    probe.write_text("import cProfile\nprint('stdlib profile')\n")
    result = subprocess.run(
        bench.reference_argv(Path(sys.executable), probe),
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stdlib profile"


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch importable")
def test_a_reference_that_dies_is_one_line():
    # The project venv has no torch, so bench_torch.py dies at import, as it would
    # in a broken .venv-torch; bench.py used to answer with a JSONDecodeError.
    with pytest.raises(SystemExit) as exit_info:
        bench.TorchEpoch(Path(sys.executable), np.zeros((2, 784), np.float32))
    assert str(exit_info.value.code).startswith("error: the PyTorch reference exited (status 1)")


def test_make_bench_installs_the_pinned_torch_first():
    makefile = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) :?= *(.*)$", makefile, flags=re.M))
    assert variables["TORCH_PIN"] == bench.TORCH_PIN
    assert ROOT / variables["TORCH_VENV"] == bench.TORCH_VENV
    assert variables["TORCH_STAMP"] == f"$(TORCH_VENV)/{bench.TORCH_STAMP}"
    bench_rule = re.search(r"^bench:(.*)$", makefile, flags=re.M).group(1)
    assert "$(TORCH_STAMP)" in bench_rule.split()


def test_the_fast_loops_changes_are_named_alike_on_both_sides():
    # bench_torch.py cannot be imported here (no torch): read its CHANGES from the source.
    tree = ast.parse((ROOT / "experiments" / "bench_torch.py").read_text())
    (changes,) = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "CHANGES"
    ]
    assert tuple(ast.literal_eval(key) for key in changes.keys) == bench.TORCH_CHANGES

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


# A stand-in for bench_torch.py, speaking its protocol: one info line, then one JSON line
# per epoch (per "epoch" on stdin, or --standalone N back to back). Its epoch takes
# rows x the seconds per row of its loop, so the scaling to 50k images can be checked.
STUB_REFERENCE = """
import json, sys, time
import numpy as np
args = sys.argv[1:]
rows = np.load(args[0]).shape[0]
loop = args[args.index("--loop") + 1]
if "--compile" in args:
    loop += "_compiled"
if "--threads" in args:
    loop += "_1thread"
standalone = "--standalone" in args
per_row = json.loads(PER_ROW)[loop + ("_standalone" if standalone else "_interleaved")]
if per_row is None:
    time.sleep(60)
print(json.dumps({"ready": True, "threads": 2, "torch": "2.13.0+stub"}), flush=True)
reply = lambda: print(json.dumps({"seconds": rows * per_row}), flush=True)
if standalone:
    for _ in range(int(args[args.index("--standalone") + 1])):
        reply()
for line in sys.stdin:
    reply()
"""


class _FakeEpoch:
    def __init__(self, seconds):
        self.seconds, self.compile_seconds = seconds, 0.5

    def run(self):
        return self.seconds


def _stub_reference(tmp_path, monkeypatch, per_row):
    stub = tmp_path / "stub_torch.py"
    stub.write_text(STUB_REFERENCE.replace("PER_ROW", repr(json.dumps(per_row))))
    monkeypatch.setattr(
        bench, "torch_argv", lambda python, data, *options: [str(python), str(stub), data, *options]
    )
    monkeypatch.setattr(bench.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()


def test_bench_pytorch_takes_the_fastest_reference_and_scales_it(tmp_path, monkeypatch):
    # The reference is a stub and vae_jax's epochs are fakes: this checks bench_pytorch's
    # bookkeeping (which time is the fastest, the 10k-image cells scaled to 50k, every
    # process and data file gone), not any speed.
    per_row = {  # seconds per image; fast_compiled is fastest standalone, fast interleaved
        "examples_interleaved": 0.004, "examples_standalone": 0.003,
        "fast_interleaved": 0.002, "fast_standalone": 0.0025,
        "fast_compiled_interleaved": 0.0022, "fast_compiled_standalone": 0.0015,
        "fast_1thread_interleaved": 0.003, "fast_1thread_standalone": 0.003,
    }  # fmt: skip
    _stub_reference(tmp_path, monkeypatch, per_row)
    monkeypatch.setattr(bench, "CELL_IMAGES", 10)  # the cells: 10 of 40 images, x 4
    monkeypatch.setattr(bench, "vae400_epoch", lambda x, options: _FakeEpoch(x.shape[0] * 0.001))
    monkeypatch.setattr(
        bench,
        "config_epoch",
        lambda config, x, options: _FakeEpoch(x.shape[0] * 0.001 * config.objective.num_samples),
    )
    x = np.zeros((40, 784), np.float32)
    report = bench.bench_pytorch(x, Path(sys.executable), 3, bench.SMOKE)

    for model, k in (("vae400", 1), ("iwae_k1", 1), ("iwae_k5", 5)):
        assert report[f"vae_jax_{model}_epoch_seconds"] == pytest.approx(40 * 0.001 * k)
        for name, seconds in per_row.items():
            assert report[f"pytorch_{model}_{name}_epoch_seconds"] == pytest.approx(40 * seconds)
        assert report[f"pytorch_{model}_fastest"] == "fast_compiled_standalone"
        assert report[f"ratio_vae_jax_over_pytorch_fastest_{model}"] == pytest.approx(
            0.001 * k / 0.0015
        )
        assert report[f"ratio_vae_jax_over_pytorch_examples_{model}"] == pytest.approx(
            0.001 * k / 0.004
        )
    for loop in bench.TORCH_LOOPS:  # served alone: the same stub, same per-image time
        seconds = report[f"pytorch_vae400_{loop}_served_alone_epoch_seconds"]
        assert seconds == pytest.approx(40 * per_row[f"{loop}_interleaved"])
    assert report["pytorch_version"] == "2.13.0+stub" and report["pytorch_threads"] == 2
    assert list((tmp_path / "tmp").iterdir()) == []  # no data file left behind


def test_a_hung_standalone_reference_is_one_line(tmp_path, monkeypatch):
    _stub_reference(tmp_path, monkeypatch, {"fast_standalone": None})  # None: it sleeps
    monkeypatch.setattr(bench, "STANDALONE_EPOCH_TIMEOUT_S", 0.5)
    with pytest.raises(SystemExit) as exit_info:
        bench.torch_standalone(
            Path(sys.executable), np.zeros((2, 784), np.float32), 1, "--loop", "fast"
        )
    message = str(exit_info.value.code)
    assert message.startswith("error: the PyTorch reference (--loop fast) ran past 1.0 s")
    assert "\n" not in message
    assert list((tmp_path / "tmp").iterdir()) == []

"""Data-parallel training on 4 (simulated CPU) devices matches 1 device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vae_jax import parallel

ROOT = Path(__file__).resolve().parents[1]


def test_four_devices_match_one_device():
    env = {
        **os.environ,
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4",
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "parallel_check.py")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    many, one = result["many"], result["one"]
    assert many["num_devices"] == 4 and one["num_devices"] == 1
    assert many["batch_shard_devices"] == 4  # the state really lives on all four
    np.testing.assert_allclose(many["losses"], one["losses"], rtol=1e-5)
    for a, b in zip(many["params"], one["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(many["log_p_x"], one["log_p_x"], rtol=1e-5)
    assert many["losses"][1] < many["losses"][0]


def test_batch_must_divide_over_devices():
    parallel.check_divisible(100, 4, "train.batch_size")
    with pytest.raises(ValueError, match="train.batch_size 30 is not divisible by the 4 devices"):
        parallel.check_divisible(30, 4, "train.batch_size")

"""Each use of the evaluation key draws its own noise: no two uses share a key.

``split(key, n)[j] == fold_in(key, j)``, so a use that took ``fold_in(eval_key, 2)``
used to hold test image 2's key, and its split gave that image's IS chunk keys.
These tests record every key each use of the evaluation key derives
(``fold_in``, ``split``) or draws with (``normal``, ``randint``, ...), while the
real evaluation code runs, and check that the uses' key sets are disjoint.
A use is one call site in an evaluation (a line of ``vae_jax.evaluate.evaluate``,
``experiments.train.evaluate`` or ``experiments.inference_gap.measure``).
"""

import functools
import linecache
import sys
from collections import defaultdict

import jax
import numpy as np
import pytest

from experiments import inference_gap
from experiments.configs import default
from experiments.factory import build
from experiments.train import evaluate
from vae_jax import linear_gaussian as lg

DRAWS = ("normal", "bernoulli", "categorical", "randint", "uniform")
DERIVATIONS = ("fold_in", "split")
# (file, function) of the evaluations: the library's, the plots' wrapper, the gap's
SCRIPTS = {("evaluate.py", "evaluate"), ("train.py", "evaluate"), ("inference_gap.py", "measure")}


def _use():
    """(function, line) of the evaluation script's call that led here, if any."""
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if (code.co_filename.rsplit("/", 1)[-1], code.co_name) in SCRIPTS:
            text = linecache.getline(code.co_filename, frame.f_lineno).strip()
            return f"{code.co_name}:{frame.f_lineno} ({text})"
        frame = frame.f_back
    return None


@pytest.fixture
def recorded(monkeypatch):
    """{use: [key data as bytes, ...]} of every key derived or drawn with, per use."""
    keys = defaultdict(list)
    draws = defaultdict(list)

    def record(use, is_draw, data):
        for row in np.asarray(data).reshape(-1, np.asarray(data).shape[-1]):
            keys[use].append(row.tobytes())
            if is_draw:
                draws[use].append(row.tobytes())

    def wrap(name, is_draw):
        real = getattr(jax.random, name)

        @functools.wraps(real)
        def wrapper(key, *args, **kwargs):
            out = real(key, *args, **kwargs)
            use = _use()
            if use is not None:
                seen = key if is_draw else out
                jax.debug.callback(
                    functools.partial(record, use, is_draw), jax.random.key_data(seen)
                )
            return out

        return wrapper

    for name in DRAWS:
        monkeypatch.setattr(jax.random, name, wrap(name, True))
    for name in DERIVATIONS:
        monkeypatch.setattr(jax.random, name, wrap(name, False))

    def result():
        jax.effects_barrier()
        return dict(keys), dict(draws)

    return result


def _assert_uses_disjoint(keys: dict) -> None:
    uses = sorted(keys)
    clashes = [
        f"{a} and {b} share {len(shared)} keys"
        for i, a in enumerate(uses)
        for b in uses[i + 1 :]
        if (shared := set(keys[a]) & set(keys[b]))
    ]
    assert not clashes, "; ".join(clashes)


def _config(**overrides):
    config = default.get_config("smoke")
    config.model.hidden_sizes = (8,)
    config.train.batch_size = 5
    config.model.latent_dim = 2
    config.eval.num_importance_samples = 12
    config.eval.chunk_size = 5  # 3 chunks, the last one masked
    config.eval.is_batch_size = 16
    config.eval.batch_size = 16
    config.eval.local_fit_steps = 3
    for name, value in overrides.items():
        section, field = name.split("__")
        config[section][field] = value
    return config


def _x_test():
    return np.asarray(jax.random.bernoulli(jax.random.key(5), 0.3, (32, 784)), np.float32)


@pytest.mark.parametrize("inference", ["amortised", "per_datapoint"])
def test_every_use_in_evaluate_draws_its_own_keys(tmp_path, recorded, inference):
    config = _config(model__inference=inference)
    run = build(config, np.zeros((10, 784), np.float32))
    model, state = run.model, run.state
    x_test = _x_test()  # before recording: the test's own draws are no use of eval_key
    evaluate(config, model, state, x_test, jax.random.key(int(config.eval.seed)), tmp_path)
    keys, draws = recorded()
    # ELBO terms, IS, the plots, and the aggregate KL (amortised) or the fit of q's
    assert len(draws) == 4, sorted(draws)
    _assert_uses_disjoint(keys)
    every_draw = [k for use in draws.values() for k in use]
    assert len(set(every_draw)) == len(every_draw), "a key was drawn with twice"


def test_every_use_in_the_inference_gap_draws_its_own_keys(recorded):
    model = lg.make_linear_gaussian(12, 3)
    theta = lg.init_orthogonal_theta(jax.random.key(0), 12, 3)
    phi = lg.perturbed_posterior_phi(lg.exact_posterior_phi(theta), jax.random.key(1), 0.5)
    x = np.asarray(jax.random.normal(jax.random.key(2), (6, 12)))
    inference_gap.measure(
        model,
        theta,
        phi,
        x,
        jax.random.key(3),
        fit_steps=4,
        semi_steps=2,
        num_samples=12,
        chunk_size=5,
        is_batch_size=4,
        batch_size=4,
    )
    keys, draws = recorded()
    # the two fits, the ELBOs of the three q's (one use: the same noise on purpose), IS
    assert len(draws) == 4, sorted(draws)
    _assert_uses_disjoint(keys)

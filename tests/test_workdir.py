"""A mistake must not block or corrupt a workdir (issue 11, items 3 to 6).

Every refusal comes before the first write, names the key or file at fault in
one line, and leaves the workdir byte for byte as it was.
"""

import json
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import factory, plots
from experiments import workdir as wd
from experiments.cli import UserError
from experiments.configs import default, iwae_1layer, kingma_welling
from experiments.train import restore_run, train_and_evaluate
from vae_jax.data import Splits, binarize_once, load_mnist
from vae_jax.models import make_vae

CONFIG_FILES = {
    "default": default,
    "iwae_1layer": iwae_1layer,
    "kingma_welling": kingma_welling,
}


def _config(**overrides):
    """A run that trains in about a second: 100 images, a 16-unit layer, 2 latents."""
    config = default.get_config("smoke")
    config.data.max_train_examples = 100
    config.data.max_eval_examples = 40
    config.model.hidden_sizes = (16,)
    config.model.latent_dim = 2
    config.train.epochs = 2
    config.eval.num_importance_samples = 10
    config.eval.chunk_size = 10
    config.eval.plots = False
    for dotted, value in overrides.items():
        *section, name = dotted.split(".")
        (config[section[0]] if section else config)[name] = value
    return config


def _files(workdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(workdir.iterdir())} if workdir.exists() else {}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A workdir whose checkpoint has completed 2 epochs (not yet evaluated)."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    assert train_and_evaluate(_config(), workdir, stop_after_epoch=2) is None
    return workdir


def _copy(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


BAD_VALUES = [
    ("train.epochs", 0, r"train\.epochs=0 is out of range: it must be an integer >= 1"),
    ("train.epochs", -3, r"train\.epochs=-3 is out of range"),
    ("train.batch_size", 0, r"train\.batch_size=0 is out of range: it must be an integer >= 1"),
    ("optimizer.learning_rate", 0.0, r"optimizer\.learning_rate=0\.0 .* a finite number > 0"),
    ("optimizer.learning_rate", -1e-3, r"optimizer\.learning_rate=-0\.001 is out of range"),
    ("optimizer.local_learning_rate", 0.0, r"optimizer\.local_learning_rate=0\.0 is out"),
    ("eval.num_importance_samples", 0, r"eval\.num_importance_samples=0 .* integer >= 1"),
    ("eval.chunk_size", 0, r"eval\.chunk_size=0 is out of range"),
    ("data.max_eval_examples", -1, r"data\.max_eval_examples=-1 is out of range"),
    ("model.prior", "nosuch", r"model\.prior='nosuch' is not an option; choose one of"),
    ("objective.kl", "exact", r"objective\.kl='exact' is not an option"),
]


@pytest.mark.parametrize("key,value,message", BAD_VALUES)
def test_a_value_out_of_range_is_refused_by_key_before_anything_is_written(
    tmp_path, key, value, message
):
    workdir = tmp_path / "run"
    with pytest.raises(UserError, match=message) as refused:
        train_and_evaluate(_config(**{key: value}), workdir)
    assert "\n" not in str(refused.value)
    assert not workdir.exists()  # not even config.json: the corrected command is not blocked


def test_plots_need_32_test_images_and_fewer_are_refused_before_training(tmp_path):
    # What the plots need, found from the plots themselves: 32 test images (their
    # reconstructions fill an 8 x 8 grid of pairs), and 31 make them fail.
    model = make_vae(16, 3, (8,))  # 4 x 4 images; 3 latents: no manifold plot
    theta, phi = model.init(jax.random.key(0))
    x = np.asarray(jax.random.bernoulli(jax.random.key(1), 0.3, (40, 16)), np.float32)
    need = factory.PLOT_TEST_IMAGES
    assert plots.write_all(tmp_path, model, theta, phi, x[:need], jax.random.key(2))
    with pytest.raises(ValueError):
        plots.write_all(tmp_path, model, theta, phi, x[: need - 1], jax.random.key(2))

    workdir = tmp_path / "run"
    with pytest.raises(UserError, match=r"data\.max_eval_examples=31 .* >= 32"):
        train_and_evaluate(_config(**{"data.max_eval_examples": 31, "eval.plots": True}), workdir)
    assert not workdir.exists()
    factory.check_config(_config(**{"data.max_eval_examples": 32, "eval.plots": True}))
    factory.check_config(_config(**{"data.max_eval_examples": 31, "eval.plots": False}))
    # the split itself, when it is smaller than the cap (a small tfds test split)
    small = Splits(x, x, x[:20])
    with pytest.raises(UserError, match="the test split has 20 images"):
        factory.check_splits(_config(**{"eval.plots": True, "train.batch_size": 40}), small)


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_an_unknown_config_variant_is_refused_not_run_as_the_full_job(name):
    module = CONFIG_FILES[name]
    assert module.get_config("smoke").train.epochs < module.get_config().train.epochs
    with pytest.raises(ValueError, match="unknown config variant 'nosmoke'"):
        module.get_config("nosmoke")
    path = f"experiments/configs/{name}.py"
    with pytest.raises(UserError, match=f"{path}: unknown config variant 'nosmoke'"):
        factory.load_config(path, "nosmoke")


def test_a_start_that_failed_leaves_a_workdir_any_config_can_use(tmp_path):
    # Refused at the start (a config error, a dataset that is not there): nothing written.
    workdir = tmp_path / "run"
    empty = tmp_path / "no_tfds_here"
    empty.mkdir()
    tfds = {"data.source": "tfds", "data.tfds_name": "mnist", "data.tfds_data_dir": str(empty)}
    for overrides in ({"model.prior": "nosuch"}, {"train.batch_size": 0}, tfds):
        with pytest.raises(UserError):
            train_and_evaluate(_config(**overrides), workdir)
        assert not workdir.exists(), overrides
    # A workdir where another config started and completed no epoch (an older
    # version wrote config.json first; or the run was killed in epoch 1) takes
    # any config, and none of the old run's files survive.
    workdir.mkdir()
    old = _config(**{"data.binarization_seed": 7, "model.latent_dim": 3})
    (workdir / "config.json").write_text(old.to_json())
    stale = np.zeros((40, 784), np.float32)
    np.save(workdir / "test_bits.npy", stale)
    (workdir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    new = _config(**{"train.epochs": 1})
    assert train_and_evaluate(new, workdir, stop_after_epoch=1) is None
    assert json.loads((workdir / "config.json").read_text()) == json.loads(new.to_json())
    fresh = binarize_once(int(new.data.binarization_seed) + 2, load_mnist().test[:40])
    np.testing.assert_array_equal(np.load(workdir / "test_bits.npy"), fresh)
    assert [
        json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
    ] == [1]


def test_shrinking_the_epochs_of_a_trained_run_is_refused(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    before = _files(workdir)
    with pytest.raises(UserError, match=r"train\.epochs=1 .* completed 2 epochs") as refused:
        train_and_evaluate(_config(**{"train.epochs": 1}), workdir)
    assert "\n" not in str(refused.value)
    assert _files(workdir) == before  # no results.json claiming 1 epoch, config.json kept


def _truncate_checkpoint(workdir: Path) -> Path:
    path = workdir / "checkpoint.msgpack"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _corrupt_metrics(workdir: Path) -> Path:
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2] + "\n")
    return path


def _metrics_line_without_epoch(workdir: Path) -> Path:
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + '{"loss": 1.0}' + "\n")
    return path


def _corrupt_config(workdir: Path) -> Path:
    path = workdir / "config.json"
    path.write_text(path.read_text()[:50])
    return path


@pytest.mark.parametrize(
    "damage,advice",
    [
        (_truncate_checkpoint, "truncated or corrupt.*Nothing was changed.*delete it"),
        (_corrupt_metrics, "line 2 is not JSON.*Nothing was changed.*delete that line"),
        (_metrics_line_without_epoch, "line 2 is not an epoch's record.*delete that line"),
        (_corrupt_config, "is damaged.*Nothing was changed: put back a good copy"),
    ],
)
def test_a_damaged_file_is_named_with_what_to_do_and_kept(trained, tmp_path, damage, advice):
    workdir = _copy(trained, tmp_path)
    path = damage(workdir)
    before = _files(workdir)
    with pytest.raises(UserError, match=advice) as refused:
        train_and_evaluate(_config(**{"train.epochs": 3}), workdir)
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)
    assert _files(workdir) == before
    if damage not in (_corrupt_metrics, _metrics_line_without_epoch):  # re-scoring reads none
        with pytest.raises(UserError, match=str(path)):
            restore_run(workdir)


def test_a_workdir_that_is_a_file_is_refused_by_name(tmp_path):
    a_file = tmp_path / "results.txt"
    a_file.write_text("keep me")
    with pytest.raises(UserError, match=f"--workdir {a_file} is a file, not a directory"):
        train_and_evaluate(_config(), a_file)
    with pytest.raises(UserError, match=f"{a_file} is a file"):
        train_and_evaluate(_config(), a_file / "run")
    with pytest.raises(UserError, match=f"--workdir {a_file} is a file"):
        restore_run(a_file)
    assert a_file.read_text() == "keep me"


def test_a_checkpoint_of_the_tuple_optimiser_layout_resumes(tmp_path):
    """Before the optimiser saw {"theta", "phi"}, Adam's moments of (theta, phi) were
    saved under paths 0 and 1: the same arrays, which resume into today's state."""
    import optax

    from vae_jax import checkpoint
    from vae_jax.models import make_vae
    from vae_jax.train import init_train_state

    model, optimizer = make_vae(16, 3, (8,)), optax.adam(1e-3)
    state = init_train_state(jax.random.key(0), model, optimizer)
    moved = jax.tree_util.tree_map(lambda a: a + 1.0, state.opt_state[0].mu)
    state = state._replace(opt_state=(state.opt_state[0]._replace(mu=moved), *state.opt_state[1:]))
    legacy = state._replace(
        opt_state=(
            state.opt_state[0]._replace(
                mu=(moved["theta"], moved["phi"]),
                nu=(state.opt_state[0].nu["theta"], state.opt_state[0].nu["phi"]),
            ),
            *state.opt_state[1:],
        )
    )
    checkpoint.save(tmp_path / wd.CHECKPOINT, {"epoch": 4, "state": legacy})
    fresh = init_train_state(jax.random.key(1), model, optimizer)
    epoch, restored = wd.restore_checkpoint(tmp_path, fresh)
    assert epoch == 4
    for a, b in zip(
        jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def _drop_key_from_record(workdir: Path, section: str, name: str) -> None:
    """Make config.json look written by code from before ``section.name`` existed."""
    path = workdir / "config.json"
    record = json.loads(path.read_text())
    del record[section][name]
    path.write_text(json.dumps(record))


def test_a_run_recorded_before_the_intensity_key_existed_is_a_k256_run(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    _drop_key_from_record(workdir, "data", "intensity")
    before = _files(workdir)
    config, *_, splits = restore_run(workdir)
    assert config.data.intensity == "k256"  # what the run trained on, not today's default
    assert splits.test.max() == np.float32(255 / 256)
    # Resuming it at today's default (k/255) would change its data: refused, nothing written.
    with pytest.raises(UserError, match=r"data\.intensity: 'k256' -> 'k255'"):
        train_and_evaluate(_config(**{"train.epochs": 3}), workdir)
    assert _files(workdir) == before
    # At the scale it ran on, it resumes.
    resumed = _config(**{"train.epochs": 3, "data.intensity": "k256"})
    assert train_and_evaluate(resumed, workdir, stop_after_epoch=3) is None
    assert json.loads((workdir / "config.json").read_text())["data"]["intensity"] == "k256"


def test_test_bits_are_one_fixed_draw_of_the_k255_intensities(trained):
    config, *_ = restore_run(trained)
    intensities = load_mnist().test[:40]
    k = np.rint(intensities.astype(np.float64) * 255)
    np.testing.assert_array_equal(intensities, (k / 255).astype(np.float32))
    bits = np.load(trained / "test_bits.npy")
    expected = binarize_once(int(config.data.binarization_seed) + 2, intensities)
    np.testing.assert_array_equal(bits, expected)
    # Paired with the k/256 bits of the same key: the same uniforms, so a pixel can
    # only gain ink, and does where u lies in [k/256, k/255).
    k256 = binarize_once(
        int(config.data.binarization_seed) + 2, load_mnist(intensity="k256").test[:40]
    )
    assert np.all(bits >= k256) and 0 < np.sum(bits != k256) < 0.01 * bits.size


def test_a_key_newer_than_the_run_is_held_at_the_value_the_run_had(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    _drop_key_from_record(workdir, "train", "rng_impl")  # recorded before the key existed
    before = _files(workdir)
    with pytest.raises(UserError, match=r"train\.rng_impl: 'threefry2x32' -> 'rbg'"):
        train_and_evaluate(_config(**{"train.epochs": 3, "train.rng_impl": "rbg"}), workdir)
    assert _files(workdir) == before
    assert train_and_evaluate(_config(**{"train.epochs": 3}), workdir, stop_after_epoch=3) is None
    assert json.loads((workdir / "config.json").read_text())["train"]["rng_impl"] == "threefry2x32"


def test_valid_and_test_bits_are_the_fixed_key_draw_whatever_the_runs_seed(tmp_path):
    splits = load_mnist()
    splits = Splits(splits.train[:10], splits.valid[:30], splits.test[:40])
    bits = {}
    for seed in (0, 1):
        config = _config(**{"seed": seed})
        bits[seed] = wd.eval_splits(tmp_path / f"seed{seed}", config, splits)
    for name, x, offset in (("valid", splits.valid, 1), ("test", splits.test, 2)):
        fixed = binarize_once(int(config.data.binarization_seed) + offset, x)
        index = ("valid", "test").index(name)
        np.testing.assert_array_equal(bits[0][index], fixed)
        np.testing.assert_array_equal(bits[1][index], fixed)
    assert not np.array_equal(bits[0][0][:30], binarize_once(0, splits.valid))  # not the seed's


@pytest.mark.parametrize(
    "key,value", [("objective.num_samples", 3), ("model.activation", "relu"), ("seed", 5)]
)
def test_resuming_with_a_change_that_keeps_every_shape_is_refused(trained, tmp_path, key, value):
    workdir = _copy(trained, tmp_path)
    before = _files(workdir)
    with pytest.raises(UserError, match=rf"{re.escape(key)}: .* -> {value!r}"):
        train_and_evaluate(_config(**{"train.epochs": 3, key: value}), workdir)
    assert _files(workdir) == before


def test_a_full_disk_names_the_file_and_the_space_and_keeps_the_last_checkpoint(
    trained, tmp_path, monkeypatch, capsys
):
    import errno
    import os

    from experiments import cli
    from vae_jax import checkpoint

    workdir = _copy(trained, tmp_path)
    before = _files(workdir)

    fsync = os.fsync

    def disk_full_for_checkpoints(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("checkpoint"):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", disk_full_for_checkpoints)

    def resume():
        train_and_evaluate(_config(**{"train.epochs": 3}), workdir)

    with pytest.raises(SystemExit) as ended:
        cli.run(resume)
    assert ended.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(
        f"error: no space left to write {workdir / 'checkpoint.msgpack'}: it needs "
    )
    assert "are free; the previous file is intact" in line
    after = _files(workdir)
    assert after["checkpoint.msgpack"] == before["checkpoint.msgpack"]
    assert not [name for name in os.listdir(workdir) if name.endswith(".tmp")]
